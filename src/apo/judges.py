"""Who judges the policy: the task's oracle, or without one a test RM trained once on preference
pairs kept out of the game. The evaluator asks a judge for scores; metric names come from it."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from apo.checkpoint import isolated_rng
from apo.config import plain
from apo.data.datamodule import GameDataModule
from apo.data.game_data import GameData
from apo.data.sources import has_oracle
from apo.distributed import full_state_dict, is_global_zero
from apo.export import save_player
from apo.losses.rm_objective import RMObjective
from apo.metrics import pairwise_agreement
from apo.modules.backbones import build_sequence_classifier, reading

log = logging.getLogger(__name__)

#: the test RM is a plain Bradley-Terry RM on the held-out pairs
TEST_RM_OBJECTIVE = RMObjective(
    kl_coeff=1.0,
    apo_coeff=0.0,
    apo_loss="ranking",
    samples_per_prompt=1,
    human_loss="bradley_terry",
    margin=0.0,
    centering_coeff=0.0,
    weighting="per_part",
)


@dataclass(frozen=True)
class JudgeKeys:
    """The metric names of a judge (None: the judge has no such metric)."""

    #: mean judge score of the policy's test samples
    reward: str
    #: RM ranking vs the judge's ranking on pairs of the policy's test samples
    onpolicy_acc: str
    #: the same on this round's training samples of the policy split
    samples_acc: str
    samples_reward: str
    #: judge score of the RM's pick among a prompt's K samples, and of the judge's own pick
    rm_best: str
    best: str
    #: judge score of the RM's pick among a test prompt's N samples (best-of-N decoding)
    best_of_n: str
    #: judge score of the RM-guided look-ahead's response to a test prompt (`game.eval_lookahead`)
    lookahead: str
    #: per-sample score column of the round files
    record: str
    #: the summary table's columns
    table: tuple[str, ...]
    exact_match: str | None = None
    #: RM ranking vs the judge's on the held-out human pairs
    val_acc: str | None = None
    #: this round's test samples against last round's, per prompt (ties half)
    win_rate_vs_prev: str | None = None


ORACLE_KEYS = JudgeKeys(
    reward="policy/gold_reward",
    onpolicy_acc="rm/onpolicy/acc",
    samples_acc="rm/samples/acc",
    samples_reward="game/samples_gold_reward",
    rm_best="game/rm_best_gold_reward",
    best="game/oracle_best_gold_reward",
    best_of_n="policy/best_of_n_gold_reward",
    lookahead="policy/lookahead_gold_reward",
    record="oracle_reward",
    table=("rm/val/acc", "rm/onpolicy/acc", "policy/gold_reward", "policy/kl", "policy/length"),
    exact_match="policy/exact_match",
    val_acc="rm/val/oracle_acc",
)
TEST_RM_KEYS = JudgeKeys(
    reward="policy/test_rm_reward",
    onpolicy_acc="rm/onpolicy/test_rm_acc",
    samples_acc="rm/samples/test_rm_acc",
    samples_reward="game/samples_test_rm_reward",
    rm_best="game/rm_best_test_rm_reward",
    best="game/best_test_rm_reward",
    best_of_n="policy/best_of_n_test_rm_reward",
    lookahead="policy/lookahead_test_rm_reward",
    record="test_rm_score",
    table=(
        "rm/val/acc",
        "rm/onpolicy/test_rm_acc",
        "policy/test_rm_reward",
        "policy/win_rate_vs_prev",
        "policy/kl",
        "policy/length",
    ),
    win_rate_vs_prev="policy/win_rate_vs_prev",
)


class Judge(Protocol):
    """Scores the policy's samples. `prepare` runs once before round 0's evaluation (and again,
    to load what it made, when a game resumes after it); `score` takes records with `prompt` and
    `texts` (and `responses`, the token ids) and returns one score per text."""

    name: str
    keys: JudgeKeys
    #: whether `prepare` does anything (the game then schedules a phase for it)
    needs_prepare: bool

    def prepare(self) -> dict[str, float]: ...

    def score(self, records: list[dict[str, Any]]) -> list[list[float]]: ...


class OracleJudge:
    """The task's exact reward."""

    name = "oracle"
    keys = ORACLE_KEYS
    needs_prepare = False

    def __init__(self, task: Any) -> None:
        self.task = task

    def prepare(self) -> dict[str, float]:
        return {}

    def score(self, records: list[dict[str, Any]]) -> list[list[float]]:
        return [[self.task.reward(rec["prompt"], t) for t in rec["texts"]] for rec in records]


class TestRMJudge:
    """A test RM: loaded from `<run_dir>/test_rm` if this run already trained it, else fitted on
    `data.test_rm_pairs` (the RM backbone with `data.test_rm.backbone` overrides, the RM
    optimizer, Trainer settings from `data.test_rm`) and saved there. Its fit draws from its own
    seed (`seed + 2`), apart from the game's random stream."""

    name = "test_rm"
    keys = TEST_RM_KEYS
    needs_prepare = True

    def __init__(self, cfg: DictConfig, dm: GameDataModule, trainers: Any, run_dir: Path) -> None:
        self.cfg, self.dm, self.trainers, self.run_dir = cfg, dm, trainers, Path(run_dir)
        self.module: Any = None

    def prepare(self) -> dict[str, float]:
        from transformers import AutoModelForSequenceClassification

        from apo.game.players import reward_module

        cfg, dm, data = self.cfg, self.dm, self.dm.data
        tcfg = dict(plain(cfg.data.get("test_rm")) or {})
        backbone = OmegaConf.merge(cfg.rm.backbone, tcfg.pop("backbone", None) or {})
        out = self.run_dir / "test_rm"
        tok = dm.tokenizer
        t0 = time.perf_counter()
        fitted = not (out / "config.json").exists()
        if fitted and not data.test_rm_pairs:
            raise ValueError(
                "no preference pairs are left for the test RM; lower data.sizes so that "
                "the sft/rm/policy/test/test_rm parts hold pairs"
            )
        with isolated_rng(int(cfg.seed) + 2):
            if fitted:
                model = build_sequence_classifier(instantiate(backbone), tok, int(cfg.seed) + 2)
            else:
                with reading("test RM", out, "test RM"):
                    model = AutoModelForSequenceClassification.from_pretrained(str(out))
            pooling, eos = str(cfg.rm.pooling), tok.eos_token_id
            if fitted:
                held_out = GameDataModule(
                    GameData(human_train=data.test_rm_pairs),
                    tok,
                    dm.batch_size,
                    dm.enc.max_prompt_len,
                    dm.enc.max_len,
                    seed=int(cfg.seed),
                )
                fit = reward_module(
                    model,
                    pooling,
                    eos,
                    TEST_RM_OBJECTIVE,
                    instantiate(cfg.rm.optimizer),
                    "test_rm/train",
                )
                self.trainers.make("rm", None, tcfg).fit(
                    fit, train_dataloaders=held_out.rm_loader()
                )
                weights = full_state_dict(model)  # a collective for a sharded test RM
                if is_global_zero():
                    save_player(model, tok, out, state_dict=weights)
            self.module = reward_module(model, pooling, eos)
            val = self.trainers.predict(
                "rm", self.module, dm.listwise_loader(dm.human_items(data.human_val), "score")
            )
        acc = pairwise_agreement([v["rewards"] for v in val], [it.scores for it in data.human_val])
        log.info(
            "test RM %s: accuracy %.3f on the %d held-out human pairs",
            "fitted" if fitted else f"loaded from {out}",
            acc,
            len(data.human_val),
        )
        return {
            "test_rm_pairs": len(data.test_rm_pairs),
            "test_rm_val_acc": acc,
            "test_rm_fit_s" if fitted else "test_rm_load_s": time.perf_counter() - t0,
        }

    def score(self, records: list[dict[str, Any]]) -> list[list[float]]:
        if self.module is None:
            raise RuntimeError("TestRMJudge.score before prepare()")
        items = self.dm.sample_items(records)
        out = self.trainers.predict("rm", self.module, self.dm.listwise_loader(items, "score"))
        return [o["rewards"] for o in out]


def build_judge(
    cfg: DictConfig, task: Any, dm: GameDataModule, trainers: Any, run_dir: Path
) -> Judge:
    """The oracle when the data comes from a task (`data.source: task`), else a test RM."""
    if has_oracle(cfg):
        return OracleJudge(task)
    return TestRMJudge(cfg, dm, trainers, run_dir)
