"""The paper's game and its design space: the reference code's loss weighting, the RM restarted
from the base RM every round, human pairs from the warm-started policy, the APO history, a
reference refreshed every round and per-round schedules — each checked in real tiny games."""

from __future__ import annotations

import json
import math

import pytest
import torch

from apo.game import GameLoop
from apo.game.plan import build_plan
from apo.losses.rm_objective import RMObjective
from apo.train import train
from apo.validation import ConfigError
from tests.conftest import ROOT, compose_cfg


def nls(x: float) -> float:
    return math.log1p(math.exp(-x))


def _objective(weighting: str, **kw) -> RMObjective:
    base = dict(
        kl_coeff=1.0,
        apo_coeff=0.4,
        apo_loss="ranking",
        samples_per_prompt=2,
        human_loss="bradley_terry",
        margin=0.0,
        centering_coeff=0.0,
        weighting=weighting,
    )
    return RMObjective(**{**base, **kw})


# a mixed batch: 3 human pairs and 1 APO item of K = 2 samples
R_H = torch.tensor([[1.0, 0.0], [0.5, 1.5], [2.0, 2.5]])
S_H = torch.tensor([[1.0, 0.0]] * 3)
R_A = torch.tensor([[2.0, 1.0, -1.0]])
S_A = torch.tensor([[1.0, 0.0, 0.0]])
ONES = lambda t: torch.ones_like(t, dtype=torch.bool)  # noqa: E731
HUMAN = [nls(1.0), nls(-1.0), nls(-0.5)]
APO = [nls(1.0), nls(3.0)]


def test_reference_weighting_normalises_over_the_pairs_of_the_mixed_batch():
    """L = (c_kl * sum_human + (c_apo / K) * sum_apo) / (human pairs + APO pairs)."""
    obj = _objective("reference", kl_coeff=0.7)
    loss, parts = obj.loss(R_H, S_H, ONES(R_H), R_A, S_A, ONES(R_A))
    want = (0.7 * sum(HUMAN) + 0.4 / 2 * sum(APO)) / (3 + 2)
    assert loss.item() == pytest.approx(want, rel=1e-6)
    assert parts["loss_human"].item() == pytest.approx(sum(HUMAN) / 3, rel=1e-6)
    assert parts["loss_apo"].item() == pytest.approx(sum(APO) / 2, rel=1e-6)


def test_per_part_weighting_averages_each_term_over_its_own_part():
    """L = c_kl * mean_human + (c_apo / K) * mean over items of the item's summed APO pairs."""
    obj = _objective("per_part", kl_coeff=0.7)
    loss, _ = obj.loss(R_H, S_H, ONES(R_H), R_A, S_A, ONES(R_A))
    assert loss.item() == pytest.approx(0.7 * sum(HUMAN) / 3 + 0.4 / 2 * sum(APO), rel=1e-6)


def test_the_weightings_agree_without_apo_items_and_differ_by_the_pair_ratio_with_them():
    ref, per = _objective("reference"), _objective("per_part")
    a, _ = ref.loss(R_H, S_H, ONES(R_H))
    b, _ = per.loss(R_H, S_H, ONES(R_H))
    assert a.item() == pytest.approx(b.item(), rel=1e-6)
    # the APO term's weight relative to the human term's: per_part gives each APO pair
    # (human pairs / APO pairs) = 3/2 times what reference gives it (K = 2 pairs per item)
    g_ref = torch.autograd.functional.jacobian(
        lambda r: ref.loss(R_H, S_H, ONES(R_H), r, S_A, ONES(R_A))[0], R_A
    )
    g_per = torch.autograd.functional.jacobian(
        lambda r: per.loss(R_H, S_H, ONES(R_H), r, S_A, ONES(R_A))[0], R_A
    )
    h_ref = torch.autograd.functional.jacobian(
        lambda r: ref.loss(r, S_H, ONES(R_H), R_A, S_A, ONES(R_A))[0], R_H
    )
    h_per = torch.autograd.functional.jacobian(
        lambda r: per.loss(r, S_H, ONES(R_H), R_A, S_A, ONES(R_A))[0], R_H
    )
    ratio = (g_per.abs().sum() / h_per.abs().sum()) / (g_ref.abs().sum() / h_ref.abs().sum())
    assert ratio.item() == pytest.approx(3 / 2 * 2, rel=1e-5)


# ---- in real games ---------------------------------------------------------------------------------
def _game(tmp_path, *overrides: str) -> GameLoop:
    cfg = compose_cfg(
        ["experiment=tiny", "game.save_weights=false", *overrides], run_dir=tmp_path / "run"
    )
    return GameLoop(cfg)


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("rm_init", ["base", "continue"])
def test_rm_init_base_restarts_every_round_from_the_warm_start_rm(tmp_path, rm_init):
    """Round 2's RM fit gives the same RM whatever round 1's RM became when it restarts from the
    base RM, and another one when it continues from round 1's."""
    ends = []
    for corrupt in (False, True):
        game = _game(tmp_path / str(corrupt), f"game.rm_init={rm_init}")
        game.play(0, "warm_start")
        for name in ("generate", "rm_fit", "score"):
            game.play(1, name)
        if corrupt:  # after round 1's scores: the policy's round is unchanged
            with torch.no_grad():
                for p in game.players.rm.parameters():
                    p.add_(0.05)
        game.play(1, "policy_fit")
        game.play(2, "generate")
        game.play(2, "rm_fit")
        ends.append(_state(game.players.rm))
    assert _same(*ends) == (rm_init == "base")


def test_human_pairs_are_the_warm_started_policys_samples(tmp_path):
    game = _game(tmp_path, "data.human_pairs_from=policy")
    task_pairs = [list(it.responses) for it in game.dm.data.human_train]
    game.play(0, "warm_start")
    data = game.dm.data
    assert [list(it.responses) for it in data.human_train] != task_pairs
    assert data.meta["human_pairs_from"] == "policy"
    # the same policy, seed and prompts draw the same samples: every pair is two of them,
    # labelled by the task's annotators (scores [1, 0], chosen first)
    from apo.game.human_pairs import DRAWS

    policy = game.players.policy_module(
        sampling=game.plan.eval_sampling, seed=game.cfg.seed * 10007 + 9001
    )
    prompts = [it.prompt for it in data.human_train + data.human_val]
    drawn = game.dm.generate(game.trainers.make("policy"), policy, prompts, DRAWS)
    for it, rec in zip(data.human_train + data.human_val, drawn, strict=True):
        assert it.prompt == rec["prompt"] and it.scores == [1.0, 0.0]
        assert set(it.responses) <= set(rec["texts"])
    assert game.state.human_pairs["human_train"][0]["responses"] == data.human_train[0].responses


@pytest.mark.parametrize(("history", "kept"), [("all", [1, 2, 3]), ("2", [2, 3]), ("round", [])])
def test_apo_history_keeps_the_rounds_it_names(tmp_path, history, kept):
    game = _game(tmp_path, f"game.apo_history={history}", "game.rounds=3")
    game.play(0, "warm_start")
    rm_samples = {}
    for r in (1, 2, 3):
        game.play(r, "generate")
        rm_samples[r] = [
            {"prompt": x["prompt"], "responses": x["responses"]} for x in game.state.samples["rm"]
        ]
    pool = game.state.apo_pool
    assert [e["round"] for e in pool] == kept
    for e in pool:
        assert e["records"] == rm_samples[e["round"]]
    if kept:  # the RM fit's APO items: one per kept record, each against its golden answer
        items = game.dm.apo_items([rec for e in pool for rec in e["records"]])
        assert len(items) == len(kept) * len(game.dm.data.rm_prompts)


def test_reference_round_is_the_policy_at_the_start_of_each_round(tmp_path):
    game = _game(tmp_path, "game.reference=round", "objective=dpo")
    names = [(r, p.name) for r, p in game.schedule()]
    assert (1, "new_reference") in names and (2, "new_reference") in names
    game.play(0, "warm_start")
    game.play_round(1)
    after_round_1 = _state(game.players.policy)
    assert not _same(_state(game.players.ref), after_round_1)  # the round moved the policy
    game.play(2, "new_reference")
    assert _same(_state(game.players.ref), after_round_1)
    fixed = _game(tmp_path / "fixed", "objective=dpo")
    assert "new_reference" not in [p.name for _, p in fixed.schedule()]


def test_per_round_schedules_apply_round_by_round():
    cfg = compose_cfg(
        [
            "experiment=tiny",
            "game.rounds=3",
            "objective=dpo",
            "objective.lr=[5e-4,2e-4,9e-5]",
            "objective.loss.beta=[0.1,0.2,0.3]",
            "game.apo_coeff=[0,0.1,1.0]",
            "policy.generation.max_new_tokens=12",  # a game sizes a null budget from its data
        ]
    )
    plan = build_plan(cfg)
    assert [plan.round(r).lr for r in (1, 2, 3)] == [5e-4, 2e-4, 9e-5]
    assert [plan.round(r).policy.options["beta"] for r in (1, 2, 3)] == [0.1, 0.2, 0.3]
    assert [plan.round(r).rm.apo_coeff for r in (1, 2, 3)] == [0.0, 0.1, 1.0]
    assert [plan.round(r).rm.serves_apo for r in (1, 2, 3)] == [False, True, True]


@pytest.mark.parametrize(
    "override",
    ["objective.lr=[1e-4,1e-4,1e-4]", "game.apo_coeff=[0,1,1,1]", "objective.loss.top_n=[1]"],
)
def test_a_schedule_of_the_wrong_length_is_refused_before_the_game(tmp_path, override):
    run = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"per-round schedule needs one value per round"):
        train(compose_cfg(["experiment=tiny", override], run_dir=run))
    assert not run.exists()


def test_a_scheduled_game_fits_each_round_at_its_rate(tmp_path):
    run = tmp_path / "run"
    train(
        compose_cfg(
            ["experiment=tiny", "game.save_weights=false", "objective.lr=[2e-3,5e-4]"],
            run_dir=run,
        )
    )
    assert len(json.loads((run / "summary.json").read_text())["rounds"]) == 3
    # the optimizer's rate of each round's policy fit, as the kept game states recorded it
    for r, lr in ((1, 2e-3), (2, 5e-4)):
        state = torch.load(run / "state" / "history" / f"r{r:02d}-policy_fit.pt", weights_only=True)
        assert state["game"]["last_fit"]["policy"]["lr"] == pytest.approx(lr)


@pytest.mark.parametrize(
    "name", sorted(p.stem for p in (ROOT / "configs" / "experiment").glob("*.yaml"))
)
def test_every_experiment_composes_and_passes_the_checks(name, tmp_path):
    """Each packaged experiment (with the first value of each swept key, as its first job) is a
    config the up-front checks accept."""
    from omegaconf import OmegaConf

    from apo.validation import validate

    cfg = compose_cfg([f"experiment={name}"], run_dir=tmp_path, hydra_config=True)
    sweep = OmegaConf.select(cfg, "hydra.sweeper.params") or {}
    first = [f"{k}={str(v).split(',')[0]}" for k, v in sweep.items()]
    cfg = compose_cfg([f"experiment={name}", *first], run_dir=tmp_path, hydra_config=True)
    tree = validate(cfg)
    for key, value in (kv.split("=", 1) for kv in first):
        if "." in key or key == "seed":
            got = OmegaConf.select(cfg, key)
            assert got is None if value == "null" else str(got) == value, key
        else:  # a config group: its option is chosen
            assert OmegaConf.select(cfg, f"hydra.runtime.choices.{key}") == value, key
    assert tree["game"]["rounds"] >= 0
