"""Decoding-time alignment with the RM (DeAL-style, without training): best-of-N picks, among N
samples of a prompt, the one the RM scores highest. The evaluation reports the judge's score of
the RM's pick among each test prompt's samples (`policy/best_of_n_*`) beside the plain policy's,
and `apo-generate best_of=N rm.path=...` writes each output sample as the RM's best of N draws.
"""

from __future__ import annotations

from collections.abc import Sequence


def best_of_n(scores: Sequence[float], n: int) -> list[int]:
    """Indices of the RM's pick in each consecutive group of `n` of a prompt's `scores` (the
    first among ties): `len(scores) / n` picks."""
    if n < 1 or len(scores) % n:
        raise ValueError(f"best_of_n: {len(scores)} samples are not groups of {n}")
    return [
        max(range(start, start + n), key=lambda i: (scores[i], -i))
        for start in range(0, len(scores), n)
    ]
