"""The cost model's objective (Safe RLHF, Dai et al. 2024, reduced to its safety labels): a
scalar head whose sigmoid is the probability that a response is costly, fitted with binary
cross-entropy on the safety annotators' per-response labels. A listwise batch's `scores` are
the labels (1 = costly); it plugs into `RewardModule` where an `RMObjective` would."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class CostObjective:
    """What the cost model's fit minimises: mean BCE over the batch's valid responses."""

    #: the cost model never sees APO items
    serves_apo: bool = False

    def loss(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        mask: torch.Tensor,
        *apo: torch.Tensor,
        human_margin: torch.Tensor | None = None,
        human_smoothing: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Mean BCE of `sigmoid(logits)` against `labels`; the pairwise extras (margins,
        smoothing) have no meaning for per-response labels and are refused."""
        if human_margin is not None or human_smoothing is not None:
            raise ValueError("CostObjective: per-response labels take no margins or smoothing")
        valid = mask.bool()
        x, y = logits[valid], labels[valid].to(logits.dtype)
        loss = F.binary_cross_entropy_with_logits(x, y)
        with torch.no_grad():
            acc = ((x > 0) == (y > 0.5)).float().mean()
        return loss, {"loss": loss, "acc": acc, "cost_mean": torch.sigmoid(x).mean()}
