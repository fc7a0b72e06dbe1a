"""The GameLoop: warm start, then rounds of generate -> RM fit -> score -> policy fit -> evaluate.

The game is a list of named phases; the game state is saved after each (`apo.checkpoint`), so
`resume=true` continues a killed game at its first unfinished phase.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from apo import checkpoint, warm_cache
from apo.calibration import calibration_errors, preference_probs, reliability_diagram
from apo.data.datamodule import GameDataModule
from apo.data.game_data import GameData
from apo.data.sources import build_game_data, build_tokenizer, check_lengths, has_oracle
from apo.distributed import full_state_dict, is_global_zero, predict_gathered
from apo.export import save_player
from apo.logger import GameTensorBoardLogger
from apo.metrics import mean, pairwise_agreement, std
from apo.modules.backbones import build_player, build_sequence_classifier
from apo.modules.policy import PolicyModule
from apo.modules.reward import RewardModule
from apo.records import format_table, read_jsonl, round_dir, write_json, write_jsonl

log = logging.getLogger(__name__)

#: the per-round metrics every summary holds, in table order
SUMMARY_KEYS = [
    "rm/val/acc",
    "rm/onpolicy/acc",
    "policy/gold_reward",
    "policy/kl",
    "policy/length",
]
#: the same without an oracle (file data): the test RM judges; win rate against last round
SUMMARY_KEYS_NO_ORACLE = [
    "rm/val/acc",
    "rm/onpolicy/test_rm_acc",
    "policy/test_rm_reward",
    "policy/win_rate_vs_prev",
    "policy/kl",
    "policy/length",
]
#: oracle metric -> its test-RM counterpart (None: dropped) when there is no oracle
NO_ORACLE_KEYS = {
    "policy/gold_reward": "policy/test_rm_reward",
    "policy/exact_match": None,
    "rm/onpolicy/acc": "rm/onpolicy/test_rm_acc",
    "rm/samples/acc": "rm/samples/test_rm_acc",
    "game/samples_gold_reward": "game/samples_test_rm_reward",
    "game/rm_best_gold_reward": "game/rm_best_test_rm_reward",
    "game/oracle_best_gold_reward": "game/best_test_rm_reward",
}


#: what a round does, in order; the game state is saved after each phase
ROUND_PHASES = ("generate", "rm_fit", "score", "reference", "policy_fit", "evaluate")
#: the summary key timing each round phase
PHASE_TIMERS = tuple(f"time/{p}_s" for p in ROUND_PHASES)
#: the weights each phase changes; a saved state keeps the others' latest files
PHASE_WEIGHTS = {
    "warm_start": ("policy", "ref", "rm"),
    "rm_fit": ("rm",),
    "policy_fit": ("policy",),
}
#: the DataModule fields a round builds up (samples, scores, reference log-probs, switches)
DATA_STATE = ("samples", "policy_ref_logps", "use_apo", "policy_select", "phase")


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def _prompt_format(player_cfg: DictConfig) -> dict[str, str | None]:
    return {k: player_cfg.get(k) for k in ("prompt_template", "separator")}


def _max_new_tokens(cfg: DictConfig) -> int:
    return int((cfg.policy.get("generation") or {}).get("max_new_tokens", 32))


class GameLoop:
    """One APO game, built from a composed Hydra config (see `configs/train.yaml`).

    Every rank of a multi-process strategy runs this loop; data and samples are the same on all
    ranks (built from the seed, or gathered after prediction) and only rank 0 writes files.
    """

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.run_dir = Path(cfg.run_dir)
        self.task = instantiate(cfg.task)
        data = build_game_data(cfg, self.task)
        #: the oracle judges the policy when the data comes from a task; else the test RM does
        self.oracle = self.task if has_oracle(cfg) else None
        self.test_rm: RewardModule | None = None
        self._prev_test_judge: dict[str, float] | None = None
        self.tokenizer = build_tokenizer(cfg, self.task, data)
        if self.oracle is None:
            check_lengths(data, self.tokenizer, cfg.data)
        bs = {
            "sft": cfg.policy.sft_batch_size,
            "policy": cfg.policy.batch_size,
            "rm": cfg.rm.batch_size,
            "apo": cfg.rm.apo_batch_size,
            "predict": cfg.data.predict_batch_size,
        }
        # each player: a tiny model from `backbone` with the task's tokenizer, or a checkpoint
        # directory (`model_name_or_path`) with its own tokenizer
        task_tokenizer = self.tokenizer
        positions = max(cfg.data.max_len, cfg.data.max_prompt_len + _max_new_tokens(cfg))
        policy_model, self.tokenizer = build_player(
            "policy", cfg.policy, cfg.seed, task_tokenizer, positions=positions
        )
        same = cfg.rm.get("model_name_or_path") == cfg.policy.get("model_name_or_path")
        rm_model, self.rm_tokenizer = build_player(
            "rm",
            cfg.rm,
            cfg.seed + 1,
            self.tokenizer if same else task_tokenizer,
            own_tokenizer=not same,
            positions=cfg.data.max_len,
        )
        self.dm = GameDataModule(
            data,
            self.tokenizer,
            bs,
            cfg.data.max_prompt_len,
            cfg.data.max_len,
            seed=cfg.seed,
            rm_tokenizer=self.rm_tokenizer,
            prompt_format={p: _prompt_format(cfg[p]) for p in ("policy", "rm")},
        )
        g = cfg.game
        self.policy = PolicyModule(
            model=policy_model,
            optimizer=instantiate(cfg.policy.optimizer),
            objective="sft",
            generation=_plain(cfg.policy.generation),
        )
        self.rm = RewardModule(
            model=rm_model,
            optimizer=instantiate(cfg.rm.optimizer),
            kl_coeff=g.rm_kl_coeff,
            apo_coeff=g.apo_coeff,
            apo_loss=g.apo_loss,
            samples_per_prompt=g.samples_per_prompt,
            pooling=cfg.rm.pooling,
            human_loss=g.rm_loss,
            margin=g.rm_margin,
            centering_coeff=g.rm_centering_coeff,
            eos_token_id=self.rm_tokenizer.eos_token_id,
        )
        self.logger = GameTensorBoardLogger(
            str(self.run_dir), flush_secs=cfg.get("tensorboard_flush_secs", 120)
        )
        self.steps = {"rm": 0, "policy": 0}
        #: the last logged value of every metric of each player's latest fit
        self.last_fit: dict[str, dict[str, float]] = {}
        self.summary: list[dict[str, Any]] = []
        self.timings: dict[str, float] = {}

    # ---- trainers -------------------------------------------------------------------------
    def make_trainer(
        self, player: str, stage: str | None, settings: dict[str, Any] | None = None
    ) -> L.Trainer:
        """A fresh Trainer for `player`; `stage` (`warmup` / `round`) adds that fit's settings,
        None makes a prediction Trainer; `settings` are further Trainer arguments."""
        from apo.strategies import build_strategy

        tcfg = dict(_plain(self.cfg.trainer))
        if stage is not None:
            tcfg.update(_plain(self.cfg[player][stage]))
        tcfg.update(settings or {})
        scfg = self.cfg.get(f"{player}_strategy") or self.cfg.strategy
        strategy, devices = build_strategy(scfg)
        if tcfg.get("devices") is None:
            tcfg["devices"] = devices
        return L.Trainer(
            **tcfg,
            strategy=strategy,
            logger=self.logger if stage is not None else False,
            default_root_dir=str(self.run_dir),
        )

    def fit(self, player: str, stage: str, prefix: str, phase: str | None = None) -> None:
        module = self.rm if player == "rm" else self.policy
        module.log_prefix = prefix
        self.dm.phase = phase or player
        self.logger.step_offset = self.steps[player]
        trainer = self.make_trainer(player, stage)
        trainer.fit(module, datamodule=self.dm)
        self.steps[player] += trainer.global_step
        self.last_fit[player] = {k: float(v) for k, v in trainer.callback_metrics.items()}
        self.last_fit[player]["lr"] = trainer.optimizers[0].param_groups[0]["lr"]

    def _timed(self, name: str, fn, *args, **kwargs):
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        self.timings[name] = time.perf_counter() - t0
        return out

    # ---- the game: named phases, the state saved after each ---------------------------------
    def phases(self) -> list[tuple[int, str]]:
        """`(round, phase)` in playing order: the warm start and round 0's evaluation, then
        `ROUND_PHASES` of every round."""
        rounds = range(1, self.cfg.game.rounds + 1)
        return [(0, "warm_start"), (0, "evaluate")] + [(r, p) for r in rounds for p in ROUND_PHASES]

    def play_round(self, r: int) -> None:
        """Play round `r`'s phases in memory, without saving the game state (for scripts and
        tests that drive the loop themselves; `run` is the resumable game)."""
        for name in ROUND_PHASES:
            getattr(self, f"phase_{name}")(r)

    def run(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        self.store = checkpoint.StateStore(self.run_dir)
        phases = self.phases()
        first = self.resume_index(phases)
        if first == 0 and is_global_zero():
            self.tokenizer.save_pretrained(str(self.run_dir / "tokenizer"))
        saving = 0.0
        for r, name in phases[first:]:
            getattr(self, f"phase_{name}")(r)
            t1 = time.perf_counter()
            self.save_state(r, name, finished=(r, name) == phases[-1])
            saving += time.perf_counter() - t1
        self.logger.close()
        table = format_table(self.summary, self.summary_keys)
        if is_global_zero():
            log.info(
                "APO game %s in %.1f s (%d phases played, game state saved in %.1f s); "
                "run dir %s\n%s",
                "finished" if first < len(phases) else "was already finished",
                time.perf_counter() - t0,
                len(phases) - first,
                saving,
                self.run_dir,
                table,
            )
        return {"rounds": self.summary, "table": table}

    def phase_warm_start(self, r: int) -> None:
        self._timed("time/warm_start_s", self.warm_start)
        self.set_round_objective()

    def phase_evaluate(self, r: int) -> None:
        self.evaluate(r)

    def phase_generate(self, r: int) -> None:
        self.policy.generation_seed = self.cfg.seed * 10007 + r
        self._timed(
            "time/generate_s",
            self.dm.regenerate,
            self.make_trainer("policy", None),
            self.policy,
            self.cfg.game.samples_per_prompt,
        )
        tokens = sum(
            len(ids) + 1
            for recs in self.dm.samples.values()
            for rec in recs
            for ids in rec["responses"]
        )
        self.timings["perf/generate_tokens_per_s"] = tokens / self.timings["time/generate_s"]

    def phase_rm_fit(self, r: int) -> None:
        self.dm.use_apo = self.cfg.game.apo_coeff != 0
        self._timed("time/rm_fit_s", self.fit, "rm", "round", "rm/train")

    def phase_score(self, r: int) -> None:
        self._timed("time/score_s", self.score_samples)

    def phase_reference(self, r: int) -> None:
        self.dm.policy_select = self.policy.objective.selection(self.policy.objective_kwargs)
        if self.policy.objective.needs_reference:
            self._timed("time/reference_s", self.reference_logps)

    def phase_policy_fit(self, r: int) -> None:
        self._timed("time/policy_fit_s", self.fit, "policy", "round", "policy/train")

    def warm_start(self) -> None:
        """SFT the policy on (noisy) demonstrations, freeze it as the reference, fit the base RM.

        With `game.warm_start_cache` set, a warm start with the same key is loaded instead of
        fitted (see `apo.warm_cache`), and a fitted one is saved there for the next job.
        """
        cache_dir = self.cfg.game.get("warm_start_cache")
        key = warm_cache.warm_start_key(self.cfg)
        cached = warm_cache.load(cache_dir, key) if cache_dir else None
        if cached is not None:
            self.policy.model.load_state_dict(cached["policy"])
            self.rm.model.load_state_dict(cached["rm"])
            self.steps = dict(cached["steps"])
            log.info("warm start %s loaded from %s", key, cache_dir)
        else:
            self.policy.set_objective("sft", {})
            self.fit("policy", "warmup", "policy/sft", phase="sft")
            self.dm.use_apo = False
            self.fit("rm", "warmup", "rm/base")
            if cache_dir and is_global_zero():
                warm_cache.save(
                    cache_dir,
                    key,
                    {
                        "policy": full_state_dict(self.policy.model),
                        "rm": full_state_dict(self.rm.model),
                        "steps": self.steps,
                    },
                )
        self.policy.snapshot_reference()

    def set_round_objective(self) -> None:
        """The policy's round objective, after the warm start's SFT."""
        obj = _plain(self.cfg.objective)
        # the mixture weight changes how samples are drawn and `lr` the optimizer, not the loss
        self.policy.generation["mixture"] = float(obj.pop("mixture", 0.0) or 0.0)
        self.policy.round_lr = obj.pop("lr", None)
        self.policy.set_objective(obj.pop("name"), obj)

    # ---- the game state ----------------------------------------------------------------------
    def resume_index(self, phases: list[tuple[int, str]]) -> int:
        """Index of the first phase to play: 0 for a new game, the one after the saved phase when
        resuming (having restored the state).

        Rank 0 resumes with `resume=true` only, and without it refuses a run dir that holds a
        game. Other ranks always start from the saved state: rank 0 launches them (or is launched
        with them) when it has reached that state, so none of them can be ahead of it.
        """
        store = self.store
        if is_global_zero():
            if not store.exists():
                if self.cfg.get("resume"):
                    log.info("resume=true: no game state in %s yet, a new game", store.path)
                return 0
            if not self.cfg.get("resume"):
                raise FileExistsError(
                    f"{store.file}: {self.run_dir} already holds a game; pass resume=true to "
                    "continue it (a finished game only prints its table), or use a new run dir"
                )
        elif not store.exists():
            return 0
        state = store.load()
        added = checkpoint.check_config(state["config"], self.cfg, store.file)
        if added and is_global_zero():
            log.warning("config keys the saved game did not have (defaults used): %s", added)
        done = (int(state["done"][0]), str(state["done"][1]))
        if done not in phases:
            raise ValueError(
                f"{store.file}: saved after round {done[0]} {done[1]}, a phase this game "
                f"(game.rounds={self.cfg.game.rounds}) does not play"
            )
        self.restore_state(state)
        if is_global_zero():
            log.info("resuming %s after round %d %s", self.run_dir, *done)
        return phases.index(done) + 1

    def save_state(self, r: int, phase: str, finished: bool) -> None:
        """Every rank hands in its RNG states; rank 0 writes the state after `phase` of round `r`."""
        rng = checkpoint.gather_rng_states()
        if not is_global_zero():
            return
        state = {
            "done": [r, phase],
            "finished": finished,
            "config": checkpoint.config_record(self.cfg),
            "loop": {
                "steps": dict(self.steps),
                "last_fit": self.last_fit,
                "summary": self.summary,
                "timings": self.timings,
                "generation_seed": self.policy.generation_seed,
            },
            "data": {k: getattr(self.dm, k) for k in DATA_STATE},
            "rng": rng,
            "tensorboard": self.logger.event_file_sizes(),
        }
        models = {"policy": self.policy.model, "ref": self.policy.ref_model, "rm": self.rm.model}
        weights = {n: full_state_dict(models[n]) for n in PHASE_WEIGHTS.get(phase, ())}
        self.store.save(state, weights, tag=f"r{r:02d}-{phase}")

    def restore_state(self, state: dict[str, Any]) -> None:
        loop = state["loop"]
        self.steps = dict(loop["steps"])
        self.last_fit = loop["last_fit"]
        self.summary = list(loop["summary"])
        self.timings = dict(loop["timings"])
        self.policy.generation_seed = loop["generation_seed"]
        for k, v in state["data"].items():
            setattr(self.dm, k, v)
        w = state["weights"]
        self.policy.model.load_state_dict(w["policy"])
        self.rm.model.load_state_dict(w["rm"])
        self.policy.snapshot_reference()
        self.policy.ref_model.load_state_dict(w["ref"])
        self.set_round_objective()
        checkpoint.restore_rng_states(state["rng"])
        if is_global_zero():
            self.logger.rewind(state["tensorboard"])

    def score_samples(self) -> None:
        """The re-trained RM scores this round's samples of both splits."""
        trainer = self.make_trainer("rm", None)
        for recs in self.dm.samples.values():
            items = self.dm.sample_items(recs, "rm")
            scored = predict_gathered(trainer, self.rm, self.dm.listwise_loader(items, "score"))
            for rec, s in zip(recs, scored):
                rec["rm_scores"] = s["rewards"]
            for rec, j in zip(recs, self.judge(recs)):
                rec["oracle"] = j

    def reference_logps(self) -> None:
        """Reference log-likelihoods of the samples the objective uses, once per round."""
        items = self.dm.policy_items()
        recs = predict_gathered(
            self.make_trainer("policy", None),
            self.policy,
            self.dm.listwise_loader(items, "ref_logps"),
        )
        self.dm.policy_ref_logps = [rec["ref_logps"] for rec in recs]

    # ---- the judge: the oracle, or a test RM trained once on pairs kept out of the game ---------
    @property
    def summary_keys(self) -> list[str]:
        return SUMMARY_KEYS if self.oracle is not None else SUMMARY_KEYS_NO_ORACLE

    @property
    def judge_key(self) -> str:
        """The per-sample judge score's name in the round files."""
        return "oracle_reward" if self.oracle is not None else "test_rm_score"

    def judge(self, recs: list[dict[str, Any]]) -> list[list[float]]:
        """Judge scores of sample records (`prompt`, `texts`, `responses`): the oracle reward,
        or without one the test RM's score."""
        if self.oracle is not None:
            return [[self.oracle.reward(rec["prompt"], t) for t in rec["texts"]] for rec in recs]
        test_rm = self.ensure_test_rm()
        items = self.dm.sample_items(recs)
        out = predict_gathered(
            self.make_trainer("rm", None), test_rm, self.dm.listwise_loader(items, "score")
        )
        return [o["rewards"] for o in out]

    def ensure_test_rm(self) -> RewardModule:
        """The test RM: loaded from `<run_dir>/test_rm` if a run already trained it, else fitted
        on `data.test_rm_pairs` (the RM backbone with `data.test_rm.backbone` overrides, the RM
        optimizer, Trainer settings from `data.test_rm`) and saved there."""
        if self.test_rm is not None:
            return self.test_rm
        from transformers import AutoModelForSequenceClassification

        tcfg = dict(_plain(self.cfg.data.get("test_rm")) or {})
        backbone = OmegaConf.merge(self.cfg.rm.backbone, tcfg.pop("backbone", None) or {})
        out = self.run_dir / "test_rm"
        t0 = time.perf_counter()
        if (out / "config.json").exists():
            model = AutoModelForSequenceClassification.from_pretrained(str(out))
            fitted = False
        else:
            model = build_sequence_classifier(
                instantiate(backbone), self.tokenizer, self.cfg.seed + 2
            )
            fitted = True
        self.test_rm = RewardModule(
            model=model,
            optimizer=instantiate(self.cfg.rm.optimizer),
            apo_coeff=0.0,
            pooling=self.cfg.rm.pooling,
            eos_token_id=self.tokenizer.eos_token_id,
        )
        data = self.dm.data
        if fitted:
            if not data.test_rm_pairs:
                raise ValueError(
                    "no preference pairs are left for the test RM; lower data.sizes so that "
                    "the sft/rm/policy/test/test_rm parts hold pairs"
                )
            held_out = GameData([], data.test_rm_pairs, [], [], {}, [], [])
            dm = GameDataModule(
                held_out,
                self.tokenizer,
                self.dm.batch_size,
                self.dm.enc.max_prompt_len,
                self.dm.enc.max_len,
                seed=self.cfg.seed,
            )
            dm.phase = "rm"
            self.test_rm.log_prefix = "test_rm/train"
            self.make_trainer("rm", None, tcfg).fit(self.test_rm, datamodule=dm)
            if is_global_zero():
                save_player(model, self.tokenizer, out, state_dict=full_state_dict(model))
        val = predict_gathered(
            self.make_trainer("rm", None),
            self.test_rm,
            self.dm.listwise_loader(self.dm.human_items(data.human_val), "score"),
        )
        data.meta["test_rm_pairs"] = len(data.test_rm_pairs)
        data.meta["test_rm_val_acc"] = pairwise_agreement(
            [v["rewards"] for v in val], [it.scores for it in data.human_val]
        )
        data.meta["test_rm_fit_s" if fitted else "test_rm_load_s"] = time.perf_counter() - t0
        log.info(
            "test RM %s: accuracy %.3f on the %d held-out human pairs",
            "fitted" if fitted else f"loaded from {out}",
            data.meta["test_rm_val_acc"],
            len(data.human_val),
        )
        return self.test_rm

    def _test_rm_metrics(
        self, r: int, m: dict[str, Any], test: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """Oracle metric names become test-RM ones; add the win rate of this round's test samples
        against last round's (per prompt, mean test-RM score; ties count half)."""
        out = {}
        for k, v in m.items():
            name = NO_ORACLE_KEYS.get(k, k)
            if name is not None:
                out[name] = v
        now = {rec["prompt"]: mean(rec["oracle"]) for rec in test}
        prev = self._prev_test_judge
        if prev is None and r > 0:
            prev = self._judge_from_file(r - 1)
        if prev:
            shared = [p for p in now if p in prev]
            wins = [1.0 if now[p] > prev[p] else 0.5 if now[p] == prev[p] else 0.0 for p in shared]
            out["policy/win_rate_vs_prev"] = mean(wins)
        self._prev_test_judge = now
        return out

    def _judge_from_file(self, r: int) -> dict[str, float] | None:
        """Per prompt mean test-RM score of round `r`'s written test samples (after a resume)."""
        path = round_dir(self.run_dir, r) / "eval_samples.jsonl"
        if not path.exists():
            return None
        scores: dict[str, list[float]] = {}
        for row in read_jsonl(path):
            scores.setdefault(row["prompt"], []).append(float(row[self.judge_key]))
        return {p: mean(v) for p, v in scores.items()}

    # ---- evaluation and records -------------------------------------------------------------
    def evaluate(self, r: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        data, g = self.dm.data, self.cfg.game
        self.policy.generation_seed = self.cfg.seed * 10007 + 5000 + r
        # the policy itself is evaluated, never the sampling mixture
        test = self.dm.generate(
            self.make_trainer("policy", None),
            self.policy,
            data.test_prompts,
            g.eval_samples_per_prompt,
            mixture=0.0,
        )
        items = self.dm.sample_items(test)
        lp = predict_gathered(
            self.make_trainer("policy", None), self.policy, self.dm.listwise_loader(items, "logps")
        )
        rm_trainer = self.make_trainer("rm", None)
        scores = predict_gathered(
            rm_trainer,
            self.rm,
            self.dm.listwise_loader(self.dm.sample_items(test, "rm"), "score"),
        )
        val = predict_gathered(
            rm_trainer,
            self.rm,
            self.dm.listwise_loader(self.dm.human_items(data.human_val, "rm"), "score"),
        )
        for rec, lps, sc, j in zip(test, lp, scores, self.judge(test)):
            rec["rm_scores"], rec["logps"], rec["ref_logps"], rec["oracle"] = (
                sc["rewards"],
                lps["logps"],
                lps["ref_logps"],
                j,
            )
        val_rewards = [v["rewards"] for v in val]
        calib = self._calibration(val_rewards, [it.scores for it in data.human_val])
        flat = lambda key: [x for rec in test for x in rec[key]]  # noqa: E731
        m: dict[str, Any] = {
            "round": r,
            "rm/val/acc": pairwise_agreement(val_rewards, [it.scores for it in data.human_val]),
            **{f"rm/val/{k}": float(calib[k]) for k in ("ece", "ace", "mce")},
            "rm/val/reward_mean": mean([x for r in val_rewards for x in r]),
            "rm/val/reward_std": std([x for r in val_rewards for x in r]),
            "rm/onpolicy/acc": pairwise_agreement(
                [rec["rm_scores"] for rec in test], [rec["oracle"] for rec in test]
            ),
            "policy/gold_reward": mean(flat("oracle")),
            "policy/kl": mean([a - b for a, b in zip(flat("logps"), flat("ref_logps"))]),
            "policy/length": mean([len(ids) for rec in test for ids in rec["responses"]]),
            "policy/rm_reward": mean(flat("rm_scores")),
            "policy/exact_match": mean([float(o == 1.0) for o in flat("oracle")]),
        }
        if r > 0:
            m.update(self._sample_metrics())
        if self.oracle is not None:
            val_oracle = [
                [self.oracle.reward(it.prompt, y) for y in it.responses] for it in data.human_val
            ]
            m["rm/val/oracle_acc"] = pairwise_agreement(val_rewards, val_oracle)
        else:
            m = self._test_rm_metrics(r, m, test)
        m.update(self.timings)
        self.timings = {}
        m["time/evaluate_s"] = time.perf_counter() - t0
        m["steps/rm"], m["steps/policy"] = self.steps["rm"], self.steps["policy"]
        self.summary.append(m)
        if is_global_zero():
            reliability_diagram(
                calib,
                round_dir(self.run_dir, r) / "reliability.png",
                f"RM on held-out human pairs, round {r}",
            )
            write_json(
                round_dir(self.run_dir, r) / "calibration.json",
                {k: v.tolist() if hasattr(v, "tolist") else v for k, v in calib.items()},
            )
            log.info(
                "round %d: %s", r, "  ".join(f"{k}={m[k]:.4f}" for k in self.summary_keys if k in m)
            )
            self._write_round(r, m, test)
        return m

    def _calibration(self, rewards: list[list[float]], scores: list[list[float]]) -> dict:
        """ECE / ACE / MCE of sigmoid(r_i - r_j) on the human pairs (both orientations)."""
        k = max(len(r) for r in rewards)
        pad = lambda rows: torch.tensor([r + [0.0] * (k - len(r)) for r in rows])  # noqa: E731
        mask = torch.tensor([[j < len(r) for j in range(k)] for r in rewards])
        probs, labels = preference_probs(pad(rewards), pad(scores), mask)
        return calibration_errors(probs, labels, n_bins=self.cfg.rm.calibration_bins)

    def _sample_metrics(self) -> dict[str, float]:
        """How well this round's RM picked among the policy's own training samples."""
        recs = self.dm.samples["policy"]
        best = [
            rec["oracle"][max(range(len(rec["oracle"])), key=lambda j: rec["rm_scores"][j])]
            for rec in recs
        ]
        return {
            "game/samples_gold_reward": mean([o for rec in recs for o in rec["oracle"]]),
            "game/rm_best_gold_reward": mean(best),
            "game/oracle_best_gold_reward": mean([max(rec["oracle"]) for rec in recs]),
            "rm/samples/acc": pairwise_agreement(
                [rec["rm_scores"] for rec in recs], [rec["oracle"] for rec in recs]
            ),
        }

    def _write_round(self, r: int, metrics: dict[str, Any], test: list[dict]) -> None:
        d = round_dir(self.run_dir, r)
        rows = lambda recs, split: [  # noqa: E731
            {
                "round": r,
                "split": split,
                "prompt": rec["prompt"],
                "sample": j,
                "response": t,
                "rm_score": rec["rm_scores"][j],
                self.judge_key: rec["oracle"][j],
                **(
                    {"logp": rec["logps"][j], "ref_logp": rec["ref_logps"][j]}
                    if "logps" in rec
                    else {}
                ),
            }
            for rec in recs
            for j, t in enumerate(rec["texts"])
        ]
        if r > 0:
            write_jsonl(
                d / "samples.jsonl",
                [row for split, recs in self.dm.samples.items() for row in rows(recs, split)],
            )
        write_jsonl(d / "eval_samples.jsonl", rows(test, "test"))
        write_json(d / "metrics.json", metrics)
        # plain transformers checkpoints: every round's with `save_weights`, and the final one
        players = {"policy": (self.policy, self.tokenizer), "rm": (self.rm, self.rm_tokenizer)}
        for name, (module, tokenizer) in players.items():
            dirs = [d / name] if self.cfg.game.save_weights else []
            if r == self.cfg.game.rounds:
                dirs.append(self.run_dir / "final" / name)
            for out in dirs:
                save_player(module.model, tokenizer, out, state_dict=full_state_dict(module.model))
        write_json(
            self.run_dir / "summary.json", {"rounds": self.summary, "data": self.dm.data.meta}
        )
        n = self.cfg.game.num_text_samples
        shown = "\n".join(
            f"| `{rec['prompt']}` | `{rec['texts'][0]}` | {rec['oracle'][0]:.2f} | {rec['rm_scores'][0]:.2f} |"
            for rec in test[:n]
        )
        judge = "oracle" if self.oracle is not None else "test RM"
        text = f"| prompt | response | {judge} | RM |\n|---|---|---|---|\n" + shown
        self.logger.log_round(
            {k: v for k, v in metrics.items() if k != "round"}, r, {"policy/samples": text}
        )
