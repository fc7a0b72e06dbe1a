"""Label denoising by preference strength (Wang et al. 2024, "Secrets of RLHF in Large Language
Models Part II: Reward Modeling"): the strength of a human pair is the RM's margin
`d = r(chosen) - r(rejected)`, averaged over an ensemble's members (`rm.ensemble`). Pairs the RM
strongly contradicts (the lowest strengths, all below 0) are most often mislabeled: they are
flipped, dropped or their labels smoothed (`DENOISE_RULES`); an adaptive margin `alpha * max(d, 0)` asks the RM to
separate the pairs it finds clear by more than the ambiguous ones.

Pure functions on lists of strengths; the game's `denoise` phase applies them to the human
pairs after the warm start (`apo.game.phases`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Denoised:
    """What a rule does to each pair, by index."""

    flipped: tuple[int, ...] = ()
    dropped: tuple[int, ...] = ()
    #: pairs whose labels are smoothed (`soften`)
    softened: tuple[int, ...] = ()


def contradicted(strength: Sequence[float], fraction: float) -> list[int]:
    """Indices of the pairs with the lowest strengths, at most `fraction` of all pairs and only
    those below 0 (the RM prefers the rejected response), lowest first."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"rm.denoise.fraction must be in [0, 1], got {fraction}")
    budget = int(fraction * len(strength))
    order = sorted((d, i) for i, d in enumerate(strength) if d < 0)
    return [i for _, i in order[:budget]]


def _flip(strength: Sequence[float], fraction: float) -> Denoised:
    return Denoised(flipped=tuple(sorted(contradicted(strength, fraction))))


def _drop(strength: Sequence[float], fraction: float) -> Denoised:
    return Denoised(dropped=tuple(sorted(contradicted(strength, fraction))))


def _soften(strength: Sequence[float], fraction: float) -> Denoised:
    return Denoised(softened=tuple(sorted(contradicted(strength, fraction))))


#: `rule(strengths, fraction) -> Denoised`; `none` changes nothing
DENOISE_RULES: dict[str, Callable[[Sequence[float], float], Denoised]] = {
    "none": lambda strength, fraction: Denoised(),
    "flip": _flip,
    "drop": _drop,
    "soften": _soften,
}


def adaptive_margins(strength: Sequence[float], alpha: float) -> list[float]:
    """Per pair, the margin `alpha * max(d, 0)` its loss must clear (0 for contradicted pairs)."""
    if alpha < 0:
        raise ValueError(f"rm.denoise.adaptive_margin must be >= 0, got {alpha}")
    return [alpha * max(d, 0.0) for d in strength]
