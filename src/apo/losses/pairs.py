"""Pair construction shared by the listwise losses: which (i, j) in an item has i ranked above j."""

from __future__ import annotations

import torch


def preference_pairs(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`[B, k, k]` boolean matrix, True where item i scores strictly above item j and both are valid.

    Ties (equal scores) are not pairs: a tie carries no preference.
    """
    valid = mask.bool()
    better = scores.unsqueeze(-1) > scores.unsqueeze(-2)
    return better & valid.unsqueeze(-1) & valid.unsqueeze(-2)


def best_worst(
    scores: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Indices of the best and worst valid item per row and whether that pair is a real preference.

    A row whose valid items all tie (or that has fewer than two valid items) gives `ok = False`.
    """
    valid = mask.bool()
    neg_inf = torch.finfo(scores.dtype).min
    best = scores.masked_fill(~valid, neg_inf).argmax(-1)
    worst = scores.masked_fill(~valid, -neg_inf).argmin(-1)
    top = scores.gather(-1, best[:, None]).squeeze(-1)
    bottom = scores.gather(-1, worst[:, None]).squeeze(-1)
    ok = (top > bottom) & (valid.sum(-1) >= 2)
    return best, worst, ok
