"""Reward-model losses on listwise batches: rewards `[B, k]`, target scores `[B, k]`, mask `[B, k]`.

The game's RM step (Cheng et al. 2024, "Adversarial Preference Optimization", Eq. 7-8 and the
reference implementation) combines them in `apo.losses.rm_objective.RMObjective`; an APO item
is `[golden, sample_1, ..., sample_K]` with scores `[1, 0, ..., 0]`. Every loss takes an
optional constant `margin`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from apo.losses.pairs import preference_pairs

#: a constant margin, or one per item as a `[B, 1, 1]` tensor (label denoising's adaptive margin)
Margin = float | torch.Tensor


def bradley_terry(
    rewards: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor, margin: Margin = 0.0
) -> torch.Tensor:
    """Listwise Bradley-Terry loss (Bradley & Terry 1952; Ouyang et al. 2022, Eq. 1).

    `-log sigmoid(r_i - r_j - margin)` for every ordered pair with `score_i > score_j` (both
    unmasked), averaged over all such pairs in the batch. `margin > 0` is the margin loss of
    Touvron et al. 2023 ("Llama 2", Eq. 2) with a constant margin: the RM must separate a pair by
    at least that much before the loss flattens. Returns 0 (with a graph) when there is no pair.
    """
    pairs = preference_pairs(scores, mask)
    diff = _diffs(rewards, mask)
    n = pairs.sum()
    return (F.softplus(-(diff - margin)) * pairs).sum() / n.clamp(min=1)


def reward_centering(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Reward-centering penalty (Eisenstein et al. 2023, "Helping or Herding? Reward Model
    Ensembles Mitigate but do not Eliminate Reward Hacking", the auxiliary
    `(r(x, y+) + r(x, y-))^2` term of its reward-model loss).

    `(sum of a row's valid rewards)^2`, averaged over the rows with a valid item; for a pair this is
    the paper's term exactly. It pins each prompt's mean reward to 0 without touching the gaps
    between its items (unlike a plain `mean(r^2)`, which also shrinks the chosen-rejected gap the
    ranking loss is trying to grow). The BT loss only sees differences, so without it the offset
    drifts freely. Add it as `centering_coeff * reward_centering(rewards, mask)`.
    """
    valid = mask.bool()
    total = torch.where(valid, rewards, torch.zeros_like(rewards)).sum(-1)
    rows = valid.any(-1)
    return (total.square() * rows.to(rewards.dtype)).sum() / rows.sum().clamp(min=1)


def _diffs(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`[B, k, k]` with entry (i, j) = r_i - r_j; masked rewards are zeroed so padding cannot leak."""
    r = torch.where(mask.bool(), rewards, torch.zeros_like(rewards))
    return r.unsqueeze(-1) - r.unsqueeze(-2)


def _apo(
    rewards, scores, mask, margin: Margin, per_pair: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    pairs = preference_pairs(scores, mask)
    diff = _diffs(rewards, mask) - margin
    rows = pairs.flatten(1).any(-1).sum()
    # Summed over an item's K samples and averaged over items: the (c_apo / K) factor in L_RM
    # then makes the term a per-pair mean, as in the paper.
    return (per_pair(diff) * pairs).sum() / rows.clamp(min=1)


def apo_ranking(
    rewards: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor, margin: Margin = 0.0
) -> torch.Tensor:
    """APO adversarial loss, `ranking` type (Cheng et al. 2024, Eq. 8, log-sigmoid form).

    For each item, `sum_k -log sigmoid(r_gold - r_sample_k - margin)` over its valid samples,
    averaged over items. Pairs come from the scores, so the golden answer need not be in column 0.
    """
    return _apo(rewards, scores, mask, margin, lambda d: F.softplus(-d))


def apo_diff(
    rewards: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor, margin: Margin = 0.0
) -> torch.Tensor:
    """APO adversarial loss, `diff` type (Cheng et al. 2024, Eq. 7, the WGAN-like linear form).

    For each item, `sum_k -(r_gold - r_sample_k - margin)`, averaged over items. Unbounded below:
    keep `c_apo` small and the human term on. Being linear, the margin only shifts the value by
    `margin` per pair; the gradient is the same.
    """
    return _apo(rewards, scores, mask, margin, lambda d: -d)


#: `fn(rewards, scores, mask, margin=0.0)`; `reward_centering` is a separate auxiliary term.
RM_LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "bradley_terry": bradley_terry,
    "ranking": apo_ranking,
    "diff": apo_diff,
}


#: the per-pair form of each RM loss: `-log sigmoid(d)` or the linear `-d` (`d` = the pair's
#: reward gap minus the margin)
PAIR_FORMS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "bradley_terry": lambda d: F.softplus(-d),
    "ranking": lambda d: F.softplus(-d),
    "diff": lambda d: -d,
}


def smoothed_pair_sum(
    rewards: torch.Tensor,
    scores: torch.Tensor,
    mask: torch.Tensor,
    form: str,
    smoothing: torch.Tensor,
    margin: Margin = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`pair_sum` with label smoothing per item (`smoothing [B]`, eps): each pair's loss is
    `(1 - eps) * l(d - margin) + eps * l(-d - margin)`, as if its label were reversed with
    probability eps (label denoising's `soften`; eps 0 = `pair_sum`)."""
    pairs = preference_pairs(scores, mask)
    diff = _diffs(rewards, mask)
    eps = smoothing.to(diff.dtype)[:, None, None]
    f = PAIR_FORMS[form]
    per_pair = (1 - eps) * f(diff - margin) + eps * f(-diff - margin)
    return (per_pair * pairs).sum(), pairs.sum()


def pair_sum(
    rewards: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor, form: str, margin: Margin = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(sum of the per-pair losses, number of pairs)` of a listwise batch, for the losses that
    normalise over a mixed batch (the reference code's weighting, see `RMObjective`)."""
    pairs = preference_pairs(scores, mask)
    diff = _diffs(rewards, mask) - margin
    return (PAIR_FORMS[form](diff) * pairs).sum(), pairs.sum()
