"""The `denoise` phase's work (`rm.denoise`, `apo.losses.denoise`): after the warm start, the
warm-start RM (an ensemble's mean) measures the strength of every human training pair; the
pairs it strongly contradicts are flipped or dropped and every pair gets its adaptive margin.
The rounds' RM fits train on the result; the warm-start RM keeps what it learnt.

The decision (indices into the human training pairs) is kept in the game state, so a resumed
game re-applies it to the same pairs. With an oracle task the summary's `data` also says how
many of the changed pairs the annotators had really mislabeled.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from apo.losses.denoise import DENOISE_RULES, adaptive_margins
from apo.metrics import mean

if TYPE_CHECKING:
    from apo.game.loop import GameLoop


def enabled(game: GameLoop) -> bool:
    d = game.cfg.rm.denoise
    return d.rule != "none" or float(d.adaptive_margin) > 0


def decide(game: GameLoop) -> dict[str, Any]:
    """Score the human training pairs with the current RM and apply `rm.denoise`'s rule."""
    cfg, dm = game.cfg.rm.denoise, game.dm
    items = dm.data.human_train
    loader = dm.listwise_loader(dm.human_items(items, "rm"), "score")
    preds = game.trainers.predict("rm", game.players.rm_module(), loader)
    # pairs only: two responses with a preference between them
    pairs = [
        i for i, it in enumerate(items) if len(it.responses) == 2 and it.scores[0] != it.scores[1]
    ]
    strength = []
    for i in pairs:
        r, s = preds[i]["rewards"], items[i].scores
        c = 0 if s[0] > s[1] else 1
        strength.append(r[c] - r[1 - c])
    rule = DENOISE_RULES[str(cfg.rule)](strength, float(cfg.fraction))
    margins = adaptive_margins(strength, float(cfg.adaptive_margin))
    return {
        "flipped": [pairs[j] for j in rule.flipped],
        "dropped": [pairs[j] for j in rule.dropped],
        "softened": [pairs[j] for j in rule.softened],
        "margins": {str(pairs[j]): m for j, m in enumerate(margins) if m},
        "strength_mean": mean(strength),
        "pairs": len(pairs),
    }


def apply(game: GameLoop, decision: dict[str, Any]) -> None:
    """Make the human training pairs what `decision` says, and report it in the data's meta."""
    data = game.dm.data
    items = data.human_train
    flipped, dropped = set(decision["flipped"]), set(decision["dropped"])
    softened = set(decision.get("softened", []))
    eps = float(game.cfg.rm.denoise.smoothing)
    margins = {int(k): float(v) for k, v in decision["margins"].items()}
    changed = sorted(flipped | dropped | softened)
    meta = {
        "denoise_pairs": decision["pairs"],
        "denoise_flipped": len(flipped),
        "denoise_dropped": len(dropped),
        "denoise_softened": len(softened),
        "denoise_strength_mean": decision["strength_mean"],
        "denoise_margin_mean": mean(list(margins.values())) if margins else 0.0,
    }
    if game.judge.name == "oracle":
        wrong = [_mislabeled(game, items[i]) for i in range(len(items))]
        known = [w for w in wrong if w is not None]
        meta["denoise_mislabeled_rate"] = mean([float(w) for w in known]) if known else 0.0
        hits = [wrong[i] for i in changed if wrong[i] is not None]
        # of the changed pairs, the share the annotators had labeled against the oracle
        meta["denoise_precision"] = mean([float(w) for w in hits]) if hits else 0.0
    data.human_train = [
        dataclasses.replace(
            it,
            scores=list(reversed(it.scores)) if i in flipped else list(it.scores),
            margin=margins.get(i, 0.0),
            smoothing=eps if i in softened else 0.0,
        )
        for i, it in enumerate(items)
        if i not in dropped
    ]
    data.meta.update(meta)


def _mislabeled(game: GameLoop, item: Any) -> bool | None:
    """Whether the oracle ranks the pair against its label (None: not a pair, or an oracle tie)."""
    if len(item.responses) != 2 or item.scores[0] == item.scores[1]:
        return None
    a, b = (game.task.reward(item.prompt, t) for t in item.responses)
    if a == b:
        return None
    return (a > b) != (item.scores[0] > item.scores[1])
