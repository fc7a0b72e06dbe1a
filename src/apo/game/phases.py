"""The game's phases: one small unit each, with a common signature `run(game, r)`.

A phase reads `game.state` and the game's parts (`plan`, `players`, `dm`, `trainers`, `judge`,
`evaluator`, `writer`), does one thing, and updates the state; the loop saves the state after
it. Adding a phase is one `@phase(...)` unit here (or in your own module) and one entry in
`game.round_phases`. Every round plays `game.round_phases` in order; round 0 plays
`START_PHASES` (the warm start, the judge's preparation and the first evaluation).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from apo import warm_cache
from apo.config import plain
from apo.distributed import full_state_dict, gather_objects, is_global_zero
from apo.game import cost, denoising, guided, human_pairs, judge_rms
from apo.game.trainers import timed
from apo.guards import check_finite, check_health, check_limits
from apo.losses.objectives import SFT
from apo.rewards import penalised

if TYPE_CHECKING:
    from apo.game.loop import GameLoop

log = logging.getLogger(__name__)


def _always(game: GameLoop) -> bool:
    return True


@dataclass(frozen=True)
class Phase:
    """A registered phase."""

    name: str
    run: Callable[[GameLoop, int], None]
    #: the players' weights it changes (the state saved after it writes those)
    changes: tuple[str, ...] = ()
    #: the loop times it as `time/<name>_s` (False: the phase times itself)
    timed: bool = True
    #: whether a game plays it (decided from the config, so a resumed game plays the same)
    enabled: Callable[[GameLoop], bool] = _always


PHASES: dict[str, Phase] = {}
#: what round 0 plays, in order
START_PHASES = ("warm_start", "denoise", "cost_model", "judge_rms", "prepare_judge", "evaluate")


def phase(
    name: str,
    changes: tuple[str, ...] = (),
    timed: bool = True,
    enabled: Callable[[GameLoop], bool] | None = None,
) -> Callable[[Callable[[GameLoop, int], None]], Callable[[GameLoop, int], None]]:
    """Register `fn(game, r)` as the phase `name` (a name may be registered once)."""

    def register(fn: Callable[[GameLoop, int], None]) -> Callable[[GameLoop, int], None]:
        if name in PHASES:
            raise ValueError(f"phase {name!r} is already registered")
        PHASES[name] = Phase(name, fn, tuple(changes), timed, enabled or _always)
        return fn

    return register


# ---- round 0 ---------------------------------------------------------------------------------
@phase("warm_start", changes=("policy", "ref", "rm", "rm_base"))
def warm_start(game: GameLoop, r: int) -> None:
    """SFT the policy on (noisy) demonstrations and freeze it as the reference; with
    `data.human_pairs_from: policy`, the annotators label pairs of its own samples; fit the base
    RM on the human pairs (and keep it, with `game.rm_init: base`).

    With `game.warm_start_cache` set, a warm start with the same key is loaded instead of
    fitted (see `apo.warm_cache`), and a fitted one is saved there for the next job."""
    players, state = game.players, game.state
    cache_dir = game.cfg.game.get("warm_start_cache")
    key = warm_cache.warm_start_key(game.cfg)
    cached = warm_cache.load(cache_dir, key) if cache_dir else None
    if cached is not None:
        players.policy.load_state_dict(cached["policy"])
        players.rm.load_state_dict(cached["rm"])
        state.steps = dict(cached["steps"])
        state.human_pairs = cached.get("human_pairs")
        if state.human_pairs is not None:
            human_pairs.apply(game, state.human_pairs)
        log.info("warm start %s loaded from %s", key, cache_dir)
    else:
        sft = players.policy_module(SFT, log_prefix="policy/sft")
        _fit(game, r, "policy", "warmup", sft, game.dm.sft_loader())
        if game.cfg.data.get("human_pairs_from") == "policy":
            state.human_pairs = human_pairs.collect(game)
            human_pairs.apply(game, state.human_pairs)
        base_rm = players.rm_module(game.plan.warm_rm, log_prefix="rm/base")
        _fit(game, r, "rm", "warmup", base_rm, game.dm.rm_loader())
        if cache_dir:
            # gathered on every rank (a collective for sharded players), written by rank 0
            weights = {"policy": full_state_dict(players.policy), "rm": full_state_dict(players.rm)}
            if is_global_zero():
                extra = {"human_pairs": state.human_pairs} if state.human_pairs else {}
                warm_cache.save(cache_dir, key, {**weights, "steps": state.steps, **extra})
    players.snapshot_reference()
    if game.cfg.game.rm_init == "base":
        players.snapshot_rm_base()


@phase("denoise", enabled=denoising.enabled)
def denoise(game: GameLoop, r: int) -> None:
    """Label denoising by preference strength (`rm.denoise`, see `apo.game.denoising`): the
    warm-start RM's verdict on every human training pair flips or drops those it strongly
    contradicts and sets adaptive margins, for every round's RM fit."""
    game.state.denoised = denoising.decide(game)
    denoising.apply(game, game.state.denoised)


@phase("cost_model", changes=("cost",), enabled=cost.enabled)
def cost_model(game: GameLoop, r: int) -> None:
    """A constrained game's cost model, fitted on the safety annotators' labels of the
    warm-started policy's samples (`apo.game.cost`)."""
    game.dm.data.meta.update(cost.fit_cost_model(game))


@phase("judge_rms", changes=("judge_rms",), enabled=judge_rms.enabled)
def fit_judge_rms(game: GameLoop, r: int) -> None:
    """The game's other RMs (`game.judges`), each fitted once on its own pairs
    (`apo.game.judge_rms`)."""
    game.dm.data.meta.update(judge_rms.fit(game))


@phase("prepare_judge", enabled=lambda game: game.judge.needs_prepare)
def prepare_judge(game: GameLoop, r: int) -> None:
    """Whatever the judge needs before it can score (the test RM's one fit)."""
    game.state.judge_info = game.judge.prepare()


@phase("evaluate", timed=False)
def evaluate(game: GameLoop, r: int) -> None:
    """Evaluate both players; the round's metrics go into the summary and the files."""
    t0, state, gathering = time.perf_counter(), game.state, game.players.gathered.seconds
    ev = game.evaluator.evaluate(r, state.samples, state.prev_judge)
    for key in ("rm_scores", "logps", "judge"):
        check_finite(
            (x for rec in ev.test for x in rec[key]),
            f"round {r} evaluation: the test samples' {key}",
        )
    m = ev.metrics
    m.update(cost.evaluate(game, ev.test))
    m.update(judge_rms.evaluate(game, ev.test))
    m.update(guided.evaluate(game, r))
    m.update(state.round_metrics)
    state.round_metrics = {}
    if gathered := game.players.gathered.seconds - gathering:
        m["perf/evaluate/gather_s"] = gathered
    m["time/evaluate_s"] = time.perf_counter() - t0
    m["steps/rm"], m["steps/policy"] = state.steps["rm"], state.steps["policy"]
    state.summary.append(m)
    state.prev_judge = ev.judge_by_prompt
    summary = {"rounds": state.summary, "data": {**game.dm.data.meta, **state.judge_info}}
    # what each rank holds of every player's weights (a sharded player: its shards only), and
    # each rank's peak memory in the round's phases (and what offload kept on the host): the
    # highest rank's (`.../peak_rss_mb`, `.../offloaded_mb`) and, with several ranks, the
    # lowest's (`..._min`)
    peaks = {k: v for k, v in m.items() if k.endswith(("/peak_rss_mb", "/offloaded_mb"))}
    per_rank = gather_objects([(game.players.storage(), peaks)])
    storage = [s for s, _ in per_rank]
    summary["param_storage_bytes"] = {k: [s[k] for s in storage] for k in storage[0]}
    for k in peaks:
        ranks = [p[k] for _, p in per_rank if k in p]
        m[k] = max(ranks)
        if len(ranks) > 1:
            m[k + "_min"] = min(ranks)
    if state.config_changes:
        summary["config_changes"] = state.config_changes
    final = r == int(game.cfg.game.rounds)
    game.writer.write_round(r, ev, state.samples, game.players, final, summary)
    # after the round's files, so the numbers that tripped a guard are there to read
    guard = plain(game.cfg.game.guard)
    check_limits(m, guard, r)
    check_health(m, guard, game.judge.keys, r)


# ---- a round ---------------------------------------------------------------------------------
@phase("new_reference", changes=("ref",), enabled=lambda game: game.cfg.game.reference == "round")
def new_reference(game: GameLoop, r: int) -> None:
    """`game.reference: round`: pi_ref becomes the policy as it starts the round (iterative
    DPO); the round's reference log-probs and KL are against it."""
    game.players.snapshot_reference()


@phase("generate", timed=False)
def generate(game: GameLoop, r: int) -> None:
    """K fresh samples per prompt of the RM and policy splits from the current policy."""
    state = game.state
    state.generation_seed = int(game.cfg.seed) * 10007 + r
    policy = game.players.policy_module(
        sampling=game.plan.round(r).sampling, seed=state.generation_seed
    )
    with timed(state.round_metrics, "time/generate_s"):
        state.samples = game.dm.regenerate(
            game.trainers.make("policy"), policy, game.plan.samples_per_prompt
        )
    state.ref_logps = None
    history = game.cfg.game.apo_history
    if history != "round":
        # this round's RM-split samples join the APO pool; `all` keeps every round, N the last N
        kept = [{"prompt": x["prompt"], "responses": x["responses"]} for x in state.samples["rm"]]
        state.apo_pool.append({"round": r, "records": kept})
        if history != "all":
            state.apo_pool = state.apo_pool[-int(history) :]
    tokens = sum(
        len(ids) + 1 for recs in state.samples.values() for rec in recs for ids in rec["responses"]
    )
    state.round_metrics["perf/generate_tokens_per_s"] = (
        tokens / state.round_metrics["time/generate_s"]
    )


@phase("rm_fit", changes=("rm",))
def rm_fit(game: GameLoop, r: int) -> None:
    """The adversarial RM step: human pairs, and golden answers against the policy's samples
    (this round's, or those of `game.apo_history`), from the warm-start RM (`game.rm_init:
    base`) or from last round's RM (`continue`)."""
    objective, state = game.plan.round(r).rm, game.state
    apo = None
    if objective.serves_apo:
        pool = [rec for entry in state.apo_pool for rec in entry["records"]]
        apo = pool if game.cfg.game.apo_history != "round" else state.samples["rm"]
    if game.cfg.game.rm_init == "base":
        game.players.restart_rm()
    module = game.players.rm_module(objective, log_prefix="rm/train")
    _fit(game, r, "rm", "round", module, game.dm.rm_loader(apo))


@phase("score")
def score(game: GameLoop, r: int) -> None:
    """The re-trained RM and the judge score this round's samples of both splits (an RM
    ensemble's mean less `game.uncertainty_penalty` times its std: `apo.rewards`)."""
    rm, trainer = game.players.rm_module(), game.trainers.make("rm")
    dm = game.dm
    for split, recs in game.state.samples.items():
        loader = dm.listwise_loader(dm.sample_items(recs, "rm"), "score")
        kappa = float(game.cfg.game.uncertainty_penalty)
        for rec, s in zip(recs, game.trainers.predict("rm", rm, loader, trainer)):
            rec["rm_scores"] = s["rewards"]
            if "rewards_std" in s:  # an RM ensemble: the reward less its uncertainty
                rec["rm_mean"], rec["rm_std"] = s["rewards"], s["rewards_std"]
                rec["rm_members"] = s.get("member_rewards")
                rec["rm_scores"] = penalised(s["rewards"], s["rewards_std"], kappa)
        check_finite(
            (x for rec in recs for x in rec["rm_scores"]),
            f"round {r}: the RM's scores of the {split} split's samples",
        )
        for rec, j in zip(recs, game.judge.score(recs)):
            rec["judge"] = j
    if judge_rms.enabled(game):  # + sum_j w_j z_j
        game.state.round_metrics.update(judge_rms.shape(game, game.state.samples))
    if cost.enabled(game):  # r - lambda * c, with this round's step of lambda
        game.state.round_metrics.update(cost.constrain(game, game.state.samples))


def _needs_reference(game: GameLoop) -> bool:
    return any(p.policy.needs_reference and not p.policy.online for p in game.plan.rounds)


@phase("reference", enabled=_needs_reference)
def reference(game: GameLoop, r: int) -> None:
    """Reference log-likelihoods of the samples the objective reads, once per round."""
    state, dm = game.state, game.dm
    objective = game.plan.round(r).policy
    if not objective.needs_reference:
        return
    selected = objective.select(state.samples["policy"])
    policy = game.players.policy_module(seed=state.generation_seed)
    recs = game.trainers.predict(
        "policy", policy, dm.listwise_loader(dm.policy_items(selected), "ref_logps")
    )
    state.ref_logps = [rec["ref_logps"] for rec in recs]


@phase("policy_fit", changes=("policy",))
def policy_fit(game: GameLoop, r: int) -> None:
    """Align the policy on its RM-scored samples with the round's objective."""
    plan, state = game.plan.round(r), game.state
    if plan.policy.online:  # RLOO, GRPO, PPO: sample, score and update at every step
        from apo.game.online import online_fit

        module, loader = online_fit(game, r, plan)
        try:
            # manual optimisation clips its own gradients (Lightning refuses to)
            _fit(game, r, "policy", "round", module, loader, {"gradient_clip_val": None})
        finally:
            game.players.rm.requires_grad_(True)
            for frozen in (game.players.cost, game.players.judge_rms):
                if frozen is not None:
                    frozen.requires_grad_(True)
        return
    selected = plan.policy.select(state.samples["policy"])
    module = game.players.policy_module(plan.policy, lr=plan.lr, log_prefix="policy/train")
    _fit(game, r, "policy", "round", module, game.dm.policy_loader(selected, state.ref_logps))


# ---- shared by the fits ----------------------------------------------------------------------
def _fit(
    game: GameLoop,
    r: int,
    player: str,
    stage: str,
    module: Any,
    loader: Any,
    settings: dict[str, Any] | None = None,
) -> None:
    """Fit `player` in round `r` with a fresh `stage` Trainer (and `settings`); its steps and
    last metrics go into the state."""
    state = game.state
    result = game.trainers.fit(player, stage, module, loader, state.steps[player], r, settings)
    state.steps[player] += result.steps
    state.last_fit[player] = result.metrics
