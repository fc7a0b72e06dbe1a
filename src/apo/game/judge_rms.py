"""More RMs the policy is aligned on (`game.judges`: MODPO's weighted objectives, CGPO's mixture
of judges): `name -> {weight, pairs, loss, margin, val_fraction}`. Each is an RM of the game RM's
architecture with its own weights (from its own seed), fitted once after the warm start on its
own preference pairs with its own loss, and fixed afterwards: the game's RM stays the only
adversary. The policy's reward becomes

    r(x, y) + sum_j weight_j * (s_j(x, y) - mu_j) / sigma_j

with mu_j, sigma_j judge j's mean and std over the responses of its own validation pairs, fixed
at its fit: a weight means the same in every round and every game, whatever scale the judge's
loss left its scores at. `pairs: human` learns from the game's own human pairs (another loss or
margin on the same labels); a path learns from a comparisons file (the APO `text`/`scores`
format, relative to `data.root`), split by prompt into `1 - val_fraction` to fit on and
`val_fraction` to measure and standardise on.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightning.pytorch.utilities import CombinedLoader
from omegaconf import DictConfig

from apo.checkpoint import isolated_rng
from apo.data.adapters import load_comparisons, split_prompts
from apo.data.game_data import ListwiseItem
from apo.data.sources import data_root
from apo.game.players import JUDGE_SEED_OFFSET
from apo.judges import TEST_RM_OBJECTIVE
from apo.metrics import mean, pairwise_agreement
from apo.rewards import weighted

if TYPE_CHECKING:
    from apo.game.loop import GameLoop

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


@dataclass(frozen=True)
class JudgeRM:
    """One entry of `game.judges`."""

    name: str
    weight: float
    #: `human` (the game's human pairs) or a comparisons file
    pairs: str
    #: its human-pair loss (an RM_LOSSES name) and margin
    loss: str
    margin: float
    #: the share of a file's prompts kept to measure and standardise it
    val_fraction: float


def specs(cfg: DictConfig) -> list[JudgeRM]:
    """`game.judges` in name order (a dict keyed by name, so a sweep can override one entry),
    checked; an error names the key."""
    from apo.losses.rm import RM_LOSSES
    from apo.validation import ConfigError

    out = []
    for name, j in sorted((cfg.game.get("judges") or {}).items()):
        key = f"game.judges.{name}"
        if not _NAME.fullmatch(str(name)):
            raise ConfigError(f"{key}: a judge's name must be an identifier (letters, digits, _)")
        unknown = sorted(set(j) - {"weight", "pairs", "loss", "margin", "val_fraction"})
        if unknown:
            raise ConfigError(f"{key}: unknown keys {unknown}")
        if j.get("weight") is None or not math.isfinite(float(j.weight)):
            raise ConfigError(f"{key}.weight: a finite number is needed, got {j.get('weight')}")
        loss = str(j.get("loss") or cfg.game.rm_loss)
        if loss not in RM_LOSSES:
            raise ConfigError(f"{key}.loss={loss!r}: must be one of {sorted(RM_LOSSES)}")
        val = float(j.get("val_fraction", 0.1))
        if not 0.0 < val < 1.0:
            raise ConfigError(f"{key}.val_fraction={val}: must be in (0, 1)")
        margin = float(j.get("margin", 0.0))
        if margin < 0:
            raise ConfigError(f"{key}.margin={margin}: must be >= 0")
        out.append(
            JudgeRM(str(name), float(j.weight), str(j.get("pairs") or "human"), loss, margin, val)
        )
    return out


def enabled(game: GameLoop) -> bool:
    return bool(specs(game.cfg))


def pairs_path(cfg: DictConfig, spec: JudgeRM) -> Path:
    path = Path(spec.pairs).expanduser()
    return path if path.is_absolute() else data_root(cfg.data) / path


def check(cfg: DictConfig) -> None:
    """Every judge's settings, and its pairs file read and split (a bad record names file,
    record and field) before any work is done."""
    for spec in specs(cfg):
        if spec.pairs != "human":
            load_pairs(cfg, spec, ([], []))


def load_pairs(
    cfg: DictConfig, spec: JudgeRM, human: tuple[list[ListwiseItem], list[ListwiseItem]]
) -> tuple[list[ListwiseItem], list[ListwiseItem]]:
    """`(train, val)`: the game's human pairs (`human` = `(human_train, human_val)`) or the
    file's, split by prompt from the game's seed."""
    from apo.validation import ConfigError

    if spec.pairs == "human":
        train, val = human
        return list(train), list(val)
    path = pairs_path(cfg, spec)
    if not path.is_file():
        raise ConfigError(f"game.judges.{spec.name}.pairs: no comparisons file at {path}")
    items = load_comparisons(path)
    parts = split_prompts(
        items, {"train": 1 - spec.val_fraction, "val": spec.val_fraction}, int(cfg.seed)
    )
    if not parts["train"] or not parts["val"]:
        raise ConfigError(
            f"game.judges.{spec.name}: {path} holds {len(items)} comparisons; with val_fraction="
            f"{spec.val_fraction} one part is empty (it needs prompts to fit on and to measure on)"
        )
    return parts["train"], parts["val"]


def fit(game: GameLoop) -> dict[str, float]:
    """Fit every judge on its pairs (each from its own seed, apart from the game's random
    stream) and keep its standardisation; its numbers for the summary."""
    data, dm = game.dm.data, game.dm
    for j, spec in enumerate(specs(game.cfg)):
        train, val = load_pairs(game.cfg, spec, (data.human_train, data.human_val))
        objective = replace(TEST_RM_OBJECTIVE, human_loss=spec.loss, margin=spec.margin)
        loader = CombinedLoader(
            {
                "human": dm.listwise_loader(
                    dm.human_items(train, "rm"), "train", dm.batch_size["rm"], True
                )
            },
            mode="max_size_cycle",
        )
        key = f"judge_{spec.name}"
        with isolated_rng(int(game.cfg.seed) + JUDGE_SEED_OFFSET + j):
            module = game.players.judge_module(spec.name, objective, f"{key}/train")
            steps = game.state.steps.get(key, 0)
            result = game.trainers.fit("rm", "warmup", module, loader, steps, 0)
        game.state.steps[key] = steps + result.steps
        scores = _predict(
            game, spec.name, [{"prompt": it.prompt, "texts": it.responses} for it in val]
        )
        flat = [s for row in scores for s in row]
        mu = mean(flat)
        sigma = math.sqrt(mean([(s - mu) ** 2 for s in flat])) or 1.0
        game.state.judge_rms[spec.name] = {
            "mean": mu,
            "std": sigma,
            "pairs": float(len(train)),
            "val_acc": pairwise_agreement(scores, [it.scores for it in val]),
        }
    return meta(game.state.judge_rms)


def meta(fitted: dict[str, dict[str, float]]) -> dict[str, float]:
    """The judges' fit numbers for the summary's data section (`judge_<name>_<number>`)."""
    return {f"judge_{n}_{k}": v for n, d in fitted.items() for k, v in d.items()}


def _predict(game: GameLoop, name: str, records: list[dict[str, Any]]) -> list[list[float]]:
    """Judge `name`'s raw scores of every response of `records`, drawn apart from the game's
    random stream (a DataLoader's iterator draws its base seed from it)."""
    loader = game.dm.listwise_loader(game.dm.text_items(records), "score")
    with isolated_rng(int(game.cfg.seed) + JUDGE_SEED_OFFSET):
        out = game.trainers.predict("rm", game.players.judge_module(name), loader)
    return [o["rewards"] for o in out]


def standardised(game: GameLoop, records: list[dict[str, Any]]) -> dict[str, list[list[float]]]:
    """Each judge's standardised scores of every response of `records`, by judge name."""
    out = {}
    for spec in specs(game.cfg):
        norm = game.state.judge_rms[spec.name]
        out[spec.name] = [
            [(s - norm["mean"]) / norm["std"] for s in row]
            for row in _predict(game, spec.name, records)
        ]
    return out


def shape(game: GameLoop, samples: dict[str, list[dict[str, Any]]]) -> dict[str, float]:
    """Add every judge's weighted standardised score to the round's samples' rewards (their own
    scores kept in `judge_scores`); each judge's mean over the policy split's samples."""
    weights = {s.name: s.weight for s in specs(game.cfg)}
    out = {}
    for split, recs in samples.items():
        by_judge = standardised(game, recs)
        for i, rec in enumerate(recs):
            rec["judge_scores"] = {n: by_judge[n][i] for n in weights}
            rec["rm_scores"] = weighted(
                rec["rm_scores"], [(w, by_judge[n][i]) for n, w in weights.items()]
            )
        if split == "policy":
            out.update(
                {
                    f"game/samples_judge_{n}": mean([x for row in by_judge[n] for x in row])
                    for n in weights
                }
            )
    return out


def evaluate(game: GameLoop, test: list[dict[str, Any]]) -> dict[str, float]:
    """Each judge's mean standardised score of the policy's test samples (`policy/judge_<name>`;
    0 = its validation responses' mean, 1 = one of their standard deviations above)."""
    if not enabled(game):
        return {}
    return {
        f"policy/judge_{n}": mean([x for row in rows for x in row])
        for n, rows in standardised(game, test).items()
    }
