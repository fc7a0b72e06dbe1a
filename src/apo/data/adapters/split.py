"""Prompt-disjoint splits that depend only on the prompts and a seed, and golden answers taken
from the chosen responses of a preference data set that has none of its own."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from typing import TypeVar

from apo.data.game_data import ListwiseItem

T = TypeVar("T")

# Fractions are floats: 0.7 + 0.2 + 0.1 may land a hair above 1.
_SUM_TOLERANCE = 1e-9


def split_prompts(
    items_or_prompts: Sequence[T], fractions: Mapping[str, float], seed: int
) -> dict[str, list[T]]:
    """Split items (anything with a string `prompt`) or prompt strings into named parts.

    The distinct prompts are sorted, shuffled with `random.Random(seed)` and cut in the order of
    `fractions`; cut points are rounded (half up) on the running total, so sizes add up to the whole when
    the fractions sum to 1. If they sum to less, the rest is left out. All elements with the same
    prompt land in the same part, so parts are disjoint by prompt; within a part elements keep
    their input order. The result depends only on the set of prompts and `seed`, not on the
    input order. A part with a tiny fraction may be empty."""
    _check_fractions(fractions)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"split_prompts: seed must be an integer, got {seed!r}")
    keys = [_prompt_of(x, i) for i, x in enumerate(items_or_prompts)]
    # Sorting first makes the shuffle independent of input order (and of hash randomisation).
    prompts = sorted(set(keys))
    random.Random(seed).shuffle(prompts)
    part_of: dict[str, str] = {}
    start, total = 0, 0.0
    for name, fraction in fractions.items():
        total += fraction
        end = min(len(prompts), math.floor(total * len(prompts) + 0.5))
        part_of.update((p, name) for p in prompts[start:end])
        start = max(start, end)
    out: dict[str, list[T]] = {name: [] for name in fractions}
    for x, key in zip(items_or_prompts, keys):
        if key in part_of:
            out[part_of[key]].append(x)
    return out


def golden_from_chosen(items: Sequence[ListwiseItem]) -> dict[str, str]:
    """`{prompt: response}` with each prompt's highest-scored response as its golden answer.

    When a prompt occurs in several items the first one decides. An item whose top score is
    shared by several responses has no single chosen response: that is an error."""
    out: dict[str, str] = {}
    for i, it in enumerate(items):
        if len(it.responses) != len(it.scores) or not it.responses:
            raise ValueError(
                f"golden_from_chosen: item {i} has {len(it.responses)} responses and "
                f"{len(it.scores)} scores; expected the same positive number"
            )
        if it.prompt in out:
            continue
        top = max(it.scores)
        best = [j for j, s in enumerate(it.scores) if s == top]
        if len(best) > 1:
            raise ValueError(
                f"golden_from_chosen: item {i} has responses {best} tied at the top score {top}; "
                "expected one chosen response"
            )
        out[it.prompt] = it.responses[best[0]]
    return out


def _prompt_of(x: object, i: int) -> str:
    if isinstance(x, str):
        return x
    prompt = getattr(x, "prompt", None)
    if not isinstance(prompt, str):
        raise TypeError(
            f"split_prompts: element {i} is a {type(x).__name__}; expected a prompt string or an "
            "item with a string `prompt`"
        )
    return prompt


def _check_fractions(fractions: Mapping[str, float]) -> None:
    if not isinstance(fractions, Mapping) or not fractions:
        raise ValueError(f"split_prompts: fractions must be a non-empty mapping, got {fractions!r}")
    for name, f in fractions.items():
        if isinstance(f, bool) or not isinstance(f, int | float) or not math.isfinite(f) or f < 0:
            raise ValueError(
                f"split_prompts: fraction {name!r} must be a finite number >= 0, got {f!r}"
            )
    total = sum(fractions.values())
    if total > 1 + _SUM_TOLERANCE:
        raise ValueError(
            f"split_prompts: fractions must sum to at most 1, got {total:g} ({dict(fractions)})"
        )
