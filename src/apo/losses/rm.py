"""Reward-model losses on listwise batches: rewards `[B, k]`, target scores `[B, k]`, mask `[B, k]`.

The game's RM step (Cheng et al. 2024, "Adversarial Preference Optimization", Eq. 7-8 and the
reference implementation) combines them in `RMObjective`:

    L_RM = c_kl * L_human(human items) + c_centering * centering(human items)
           + (c_apo / K) * apo_{ranking|diff}(gold vs samples)

where an APO item is `[golden, sample_1, ..., sample_K]` with scores `[1, 0, ..., 0]`. Every loss
takes an optional constant `margin`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from apo.losses.pairs import chosen_rejected, preference_pairs


def bradley_terry(
    rewards: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor, margin: float = 0.0
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
    rewards, scores, mask, margin: float, per_pair: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    pairs = preference_pairs(scores, mask)
    diff = _diffs(rewards, mask) - margin
    rows = pairs.flatten(1).any(-1).sum()
    # Summed over an item's K samples and averaged over items: the (c_apo / K) factor in L_RM
    # then makes the term a per-pair mean, as in the paper.
    return (per_pair(diff) * pairs).sum() / rows.clamp(min=1)


def apo_ranking(
    rewards: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor, margin: float = 0.0
) -> torch.Tensor:
    """APO adversarial loss, `ranking` type (Cheng et al. 2024, Eq. 8, log-sigmoid form).

    For each item, `sum_k -log sigmoid(r_gold - r_sample_k - margin)` over its valid samples,
    averaged over items. Pairs come from the scores, so the golden answer need not be in column 0.
    """
    return _apo(rewards, scores, mask, margin, lambda d: F.softplus(-d))


def apo_diff(
    rewards: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor, margin: float = 0.0
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


APO_LOSSES = ("ranking", "diff")


@dataclass(frozen=True)
class RMObjective:
    """What one RM fit minimises; built from `game.*` (see `apo.game.plan`), never defaulted here.

    `loss` is the whole RM step on one training batch, weighted per part: the human term is the
    mean over the human pairs of the batch, the APO term sums each item's K sample pairs and
    averages over the APO items, so `(c_apo / K) * apo` is `c_apo` times the mean over APO pairs.
    """

    #: c_kl, weight of the human-pair term (`human_loss`, an RM_LOSSES name)
    kl_coeff: float
    #: c_apo; 0 = the baseline RM (no adversarial term, no APO items served)
    apo_coeff: float
    #: the APO term's form: `ranking` (-log sigmoid) or `diff` (linear, WGAN-like)
    apo_loss: str
    #: K, the samples per prompt in an APO item
    samples_per_prompt: int
    human_loss: str
    #: constant margin of every pairwise term (0 = none)
    margin: float
    #: weight of the reward-centering term on the human items (0 = off)
    centering_coeff: float

    def __post_init__(self) -> None:
        if self.apo_loss not in APO_LOSSES:
            raise ValueError(f"game.apo_loss must be one of {APO_LOSSES}, got {self.apo_loss!r}")
        if self.human_loss not in RM_LOSSES:
            raise ValueError(
                f"game.rm_loss: unknown human-pair loss {self.human_loss!r}; known: "
                f"{sorted(RM_LOSSES)}"
            )

    @property
    def serves_apo(self) -> bool:
        """Whether the fit needs APO items (golden answers against this round's samples)."""
        return self.apo_coeff != 0

    def loss(
        self,
        r_human: torch.Tensor,
        human_scores: torch.Tensor,
        human_mask: torch.Tensor,
        r_apo: torch.Tensor | None = None,
        apo_scores: torch.Tensor | None = None,
        apo_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """`(L_RM, parts)` from the rewards of a batch's human items `[B, k]` and, when the
        objective serves APO items, of its APO items `[B', K + 1]`."""
        loss_h = RM_LOSSES[self.human_loss](r_human, human_scores, human_mask, margin=self.margin)
        loss = self.kl_coeff * loss_h
        parts = {"loss_human": loss_h, "reward_mean": r_human[human_mask.bool()].mean().detach()}
        # the human pairs' chosen / rejected rewards, as TRL's RewardTrainer names them
        h_pairs = preference_pairs(human_scores, human_mask)
        parts.update(chosen_rejected(r_human, h_pairs, human_mask.bool()))
        if self.centering_coeff:
            loss_c = reward_centering(r_human, human_mask)
            loss = loss + self.centering_coeff * loss_c
            parts["loss_centering"] = loss_c
        if r_apo is not None and self.serves_apo:
            loss_a = RM_LOSSES[self.apo_loss](r_apo, apo_scores, apo_mask, margin=self.margin)
            loss = loss + (self.apo_coeff / self.samples_per_prompt) * loss_a
            parts["loss_apo"] = loss_a
            # golden answers (chosen) against the policy's samples (rejected)
            a_pairs = preference_pairs(apo_scores, apo_mask)
            stats = chosen_rejected(r_apo, a_pairs, apo_mask.bool())
            parts.update({f"apo/{k}": v for k, v in stats.items()})
        parts["loss"] = loss
        return loss, parts
