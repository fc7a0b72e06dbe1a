"""Reward-model losses on listwise batches: rewards `[B, k]`, target scores `[B, k]`, mask `[B, k]`.

The game's RM step (Cheng et al. 2024, "Adversarial Preference Optimization", Eq. 7-8 and the
reference implementation) is

    L_RM = c_kl * bradley_terry(human items) + (c_apo / K) * apo_{ranking|diff}(gold vs samples)

where an APO item is `[golden, sample_1, ..., sample_K]` with scores `[1, 0, ..., 0]`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from apo.losses.pairs import preference_pairs


def bradley_terry(rewards: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Listwise Bradley-Terry loss (Bradley & Terry 1952; Ouyang et al. 2022, Eq. 1).

    `-log sigmoid(r_i - r_j)` for every ordered pair with `score_i > score_j` (both unmasked),
    averaged over all such pairs in the batch. Returns 0 (with a graph) when there is no pair.
    """
    pairs = preference_pairs(scores, mask)
    diff = rewards.unsqueeze(-1) - rewards.unsqueeze(-2)
    n = pairs.sum()
    return (F.softplus(-diff) * pairs).sum() / n.clamp(min=1)


def _apo(rewards, scores, mask, per_pair: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    pairs = preference_pairs(scores, mask)
    diff = rewards.unsqueeze(-1) - rewards.unsqueeze(-2)
    rows = pairs.flatten(1).any(-1).sum()
    # Summed over an item's K samples and averaged over items: the (c_apo / K) factor in L_RM
    # then makes the term a per-pair mean, as in the paper.
    return (per_pair(diff) * pairs).sum() / rows.clamp(min=1)


def apo_ranking(rewards: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """APO adversarial loss, `ranking` type (Cheng et al. 2024, Eq. 8, log-sigmoid form).

    For each item, `sum_k -log sigmoid(r_gold - r_sample_k)` over its valid samples, averaged over
    items. Pairs come from the scores, so the golden answer need not be in column 0.
    """
    return _apo(rewards, scores, mask, lambda d: F.softplus(-d))


def apo_diff(rewards: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """APO adversarial loss, `diff` type (Cheng et al. 2024, Eq. 7, the WGAN-like linear form).

    For each item, `sum_k -(r_gold - r_sample_k)`, averaged over items. Unbounded below: keep
    `c_apo` small and the human term on.
    """
    return _apo(rewards, scores, mask, lambda d: -d)


RM_LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "bradley_terry": bradley_terry,
    "ranking": apo_ranking,
    "diff": apo_diff,
}
