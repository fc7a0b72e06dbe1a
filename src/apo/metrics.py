"""Game metrics computed from scored samples (pure functions over plain lists)."""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Sequence


def pairwise_agreement(pred: Sequence[Sequence[float]], truth: Sequence[Sequence[float]]) -> float:
    """Share of within-group pairs whose `pred` order agrees with a strict `truth` order.

    Pairs that tie in `truth` are skipped; a tie in `pred` counts as half right. NaN if no pair.
    """
    right = total = 0.0
    for p, t in zip(pred, truth):
        for i, j in itertools.combinations(range(len(t)), 2):
            if t[i] == t[j]:
                continue
            total += 1
            d = (p[i] - p[j]) * (t[i] - t[j])
            right += 1.0 if d > 0 else 0.5 if d == 0 else 0.0
    return right / total if total else math.nan


def mean(xs: Sequence[float]) -> float:
    """The mean (`statistics.fmean`), NaN for an empty list (a metric with nothing to average)."""
    return statistics.fmean(xs) if len(xs) else math.nan


def std(xs: Sequence[float]) -> float:
    """Population standard deviation (`statistics.pstdev`), NaN for an empty list."""
    return statistics.pstdev(xs) if len(xs) else math.nan
