"""The RM step's objective: which terms, with which weights, normalised how.

    per_part:  L = c_kl * mean_{human pairs} l_h + (c_apo / K) * mean_{APO items} sum_k l_apo
               = c_kl * mean_{human pairs} l_h + c_apo * mean_{APO pairs} l_apo
    reference: L = (c_kl * sum_{human pairs} l_h + (c_apo / K) * sum_{APO pairs} l_apo) / N
               with N the number of pairs of the whole mixed batch (human + APO)

plus `c_centering * reward_centering(human items)` in both. `reference` is the weighting of the
paper's code (Linear95/APO, `trainer.py`: both terms summed over their pairs and divided by the
pairs of the mixed batch), so `c_apo` means there what it means in the paper: per pair, an APO
pair weighs `c_apo / K` against a human pair's `c_kl`. With `per_part` an APO pair weighs
`c_apo` (times the ratio of human to APO pairs in a batch) — at the default batches (64 human
pairs + 16 items x 4 samples) `per_part` with c_apo = 1 weighs APO pairs as `reference` with
c_apo = 4 does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from apo.losses.pairs import chosen_rejected, preference_pairs
from apo.losses.rm import RM_LOSSES, pair_sum, reward_centering, smoothed_pair_sum

APO_LOSSES = ("ranking", "diff")
WEIGHTINGS = ("reference", "per_part")


@dataclass(frozen=True)
class RMObjective:
    """What one RM fit minimises; built from `game.*` (see `apo.game.plan`), never defaulted
    here. `loss` is the whole RM step on one training batch, weighted as the module docstring
    says (`weighting`)."""

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
    #: `reference` (the paper's code: one normalisation over the mixed batch) or `per_part`
    weighting: str

    def __post_init__(self) -> None:
        if self.apo_loss not in APO_LOSSES:
            raise ValueError(f"game.apo_loss must be one of {APO_LOSSES}, got {self.apo_loss!r}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(
                f"game.apo_weighting must be one of {WEIGHTINGS}, got {self.weighting!r}"
            )
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
        human_margin: torch.Tensor | None = None,
        human_smoothing: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """`(L_RM, parts)` from the rewards of a batch's human items `[B, k]` and, when the
        objective serves APO items, of its APO items `[B', K + 1]`; `human_margin [B]` adds a
        per-item margin to the human pairs' (label denoising's adaptive margin), and
        `human_smoothing [B]` smooths their labels per item (`smoothed_pair_sum`)."""
        apo = r_apo is not None and self.serves_apo
        m_h: float | torch.Tensor = self.margin
        if human_margin is not None:
            m_h = self.margin + human_margin.to(r_human.dtype)[:, None, None]
        smooth = None
        if human_smoothing is not None:
            smooth = smoothed_pair_sum(
                r_human, human_scores, human_mask, self.human_loss, human_smoothing, m_h
            )
        if self.weighting == "per_part":
            if smooth is not None:
                loss_h = smooth[0] / smooth[1].clamp(min=1)
            else:
                loss_h = RM_LOSSES[self.human_loss](r_human, human_scores, human_mask, margin=m_h)
            loss = self.kl_coeff * loss_h
            loss_a = None
            if apo:
                loss_a = RM_LOSSES[self.apo_loss](r_apo, apo_scores, apo_mask, margin=self.margin)
        else:
            s_h, n_h = smooth or pair_sum(r_human, human_scores, human_mask, self.human_loss, m_h)
            total = self.kl_coeff * s_h
            n = n_h
            if apo:
                s_a, n_a = pair_sum(r_apo, apo_scores, apo_mask, self.apo_loss, self.margin)
                total = total + (self.apo_coeff / self.samples_per_prompt) * s_a
                n = n + n_a
            loss = total / n.clamp(min=1)
            # logged as per-pair means, whatever the weighting
            loss_h = (s_h / n_h.clamp(min=1)).detach()
            loss_a = (s_a / n_a.clamp(min=1)).detach() if apo else None
        parts = {"loss_human": loss_h, "reward_mean": r_human[human_mask.bool()].mean().detach()}
        # the human pairs' chosen / rejected rewards, as TRL's RewardTrainer names them
        h_pairs = preference_pairs(human_scores, human_mask)
        parts.update(chosen_rejected(r_human, h_pairs, human_mask.bool()))
        if self.centering_coeff:
            loss_c = reward_centering(r_human, human_mask)
            loss = loss + self.centering_coeff * loss_c
            parts["loss_centering"] = loss_c
        if loss_a is not None:
            if self.weighting == "per_part":
                loss = loss + (self.apo_coeff / self.samples_per_prompt) * loss_a
            parts["loss_apo"] = loss_a
            # golden answers (chosen) against the policy's samples (rejected)
            a_pairs = preference_pairs(apo_scores, apo_mask)
            stats = chosen_rejected(r_apo, a_pairs, apo_mask.bool())
            parts.update({f"apo/{k}": v for k, v in stats.items()})
        parts["loss"] = loss
        return loss, parts
