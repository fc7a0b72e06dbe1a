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


def chosen_rejected(
    rewards: torch.Tensor,
    pairs: torch.Tensor,
    valid: torch.Tensor,
    logps: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Statistics of a batch's training pairs under TRL's names (`DPOTrainer`, `RewardTrainer`):
    the mean reward of the chosen and of the rejected item of a pair, their mean margin, the share
    of pairs whose chosen item has the higher reward (`rewards/*`), and with `logps` the mean
    log-likelihood of both (`logps/*`). `pairs` is `[B, k, k]`, True at (chosen, rejected).

    Detached tensors, computed on the device from what the loss already has: logging them adds
    no host synchronisation. Invalid items are zeroed first, so padding cannot leak.
    """
    w = pairs.to(rewards.dtype)
    n = w.sum().clamp(min=1)
    as_chosen, as_rejected = w.sum(-1), w.sum(-2)  # [B, k]: how often an item is either side

    def side(x: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        x = torch.where(valid, x.detach(), torch.zeros_like(x))
        return (x * count).sum() / n

    r = torch.where(valid, rewards.detach(), torch.zeros_like(rewards))
    wins = ((r.unsqueeze(-1) - r.unsqueeze(-2)) > 0).to(w.dtype)
    chosen, rejected = side(rewards, as_chosen), side(rewards, as_rejected)
    stats = {
        "rewards/chosen": chosen,
        "rewards/rejected": rejected,
        "rewards/margins": chosen - rejected,
        "rewards/accuracies": (wins * w).sum() / n,
    }
    if logps is not None:
        stats["logps/chosen"] = side(logps, as_chosen)
        stats["logps/rejected"] = side(logps, as_rejected)
    return stats
