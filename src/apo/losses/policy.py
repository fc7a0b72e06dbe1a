"""Policy objectives on listwise batches of RM-scored samples.

Every objective takes `logps [B, k]` (summed response log-likelihood under the policy),
`ref_logps [B, k]` (the same under the frozen reference, or None), `scores [B, k]` (RM scores),
`mask [B, k]` and `lengths [B, k]` (response tokens), and returns `(loss, stats)`.
`select` tells the data module which of the K samples a prompt's item needs, so that RJS does not
pay for forward passes over samples it ignores.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from apo.losses.pairs import best_worst

Stats = dict[str, torch.Tensor]


def sft(logps, ref_logps, scores, mask, lengths) -> tuple[torch.Tensor, Stats]:
    """Supervised fine-tuning: token-mean negative log-likelihood of every valid item."""
    m = mask.to(logps.dtype)
    loss = -(logps * m).sum() / (lengths * m).sum().clamp(min=1)
    return loss, {}


def rjs(logps, ref_logps, scores, mask, lengths) -> tuple[torch.Tensor, Stats]:
    """Rejection sampling / RAFT (Dong et al. 2023, "RAFT: Reward rAnked FineTuning", Alg. 1).

    Token-mean NLL of the best RM-scored valid item of each row (the data module may already have
    kept only that item, in which case this is SFT on it).
    """
    neg_inf = torch.finfo(scores.dtype).min
    best = scores.masked_fill(~mask.bool(), neg_inf).argmax(-1, keepdim=True)
    keep = torch.zeros_like(mask, dtype=torch.bool).scatter_(-1, best, True) & mask.bool()
    return sft(logps, ref_logps, scores, keep, lengths)


def dpo(logps, ref_logps, scores, mask, lengths, beta: float = 0.1) -> tuple[torch.Tensor, Stats]:
    """Direct Preference Optimization (Rafailov et al. 2023, Eq. 7), best vs worst RM-scored item.

    `-log sigmoid(beta * [(logp_w - ref_w) - (logp_l - ref_l)])`, averaged over rows that have a
    strict preference (rows whose items all tie are skipped).
    """
    if ref_logps is None:
        raise ValueError("dpo needs reference log-probs (ref_logps is None)")
    best, worst, ok = best_worst(scores, mask)
    ratio = logps - ref_logps
    margin = ratio.gather(-1, best[:, None]).squeeze(-1) - ratio.gather(-1, worst[:, None]).squeeze(-1)
    okf = ok.to(logps.dtype)
    loss = (F.softplus(-beta * margin) * okf).sum() / okf.sum().clamp(min=1)
    acc = ((margin > 0).to(logps.dtype) * okf).sum() / okf.sum().clamp(min=1)
    return loss, {"reward_margin": (beta * margin * okf).sum() / okf.sum().clamp(min=1), "reward_acc": acc}


@dataclass(frozen=True)
class PolicyObjective:
    """A registered objective: its loss function and what data it needs."""

    fn: Callable[..., tuple[torch.Tensor, Stats]]
    #: which samples of a prompt the data module keeps: "best", "best_worst" or "all".
    select: str
    #: whether reference log-probs must be computed (once per round) before the fit.
    needs_reference: bool


POLICY_OBJECTIVES: dict[str, PolicyObjective] = {
    "sft": PolicyObjective(sft, select="all", needs_reference=False),
    "rjs": PolicyObjective(rjs, select="best", needs_reference=False),
    "dpo": PolicyObjective(dpo, select="best_worst", needs_reference=True),
}
