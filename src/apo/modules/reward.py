"""The reward model player: a transformer with a scalar head, trained on listwise batches."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch import nn

from apo.distributed import remember_full_state
from apo.losses.rm import RM_LOSSES, reward_centering
from apo.strategies import shard

POOLINGS = ("last", "eos", "average", "max")


class RewardModule(L.LightningModule):
    """`r(x, y)` for the APO game.

    Training batches are dicts of listwise batches: `"human"` (preference items, always) and
    `"apo"` (items `[golden, sample_1..K]` with scores `[1, 0..0]`, from round 1 on). The loss is
    `kl_coeff * bradley_terry(human) + (apo_coeff / K) * apo_<apo_loss>(apo)`; `apo_coeff = 0` is
    the baseline RM.

    Args:
        model: a one-label `AutoModelForSequenceClassification` (its `base_model` and `score`
            head are used, so any pooling works and the export stays loadable by transformers).
        optimizer: a partial optimizer factory taking the parameters.
        pooling: `last` (last non-pad token, the default), `eos` (the first end-of-sequence token
            after the prompt; the last token where there is none), `average` or `max` over tokens.
        human_loss: RM_LOSSES name of the human-pair term (`bradley_terry`).
        margin: margin of the pairwise terms (0 = none).
        centering_coeff: weight of the reward-centering term on the human items (0 = off).
        eos_token_id: needed by `eos` pooling.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        kl_coeff: float = 1.0,
        apo_coeff: float = 0.1,
        apo_loss: str = "ranking",
        samples_per_prompt: int = 4,
        pooling: str = "last",
        human_loss: str = "bradley_terry",
        margin: float = 0.0,
        centering_coeff: float = 0.0,
        eos_token_id: int | None = None,
    ) -> None:
        super().__init__()
        if apo_loss not in ("ranking", "diff"):
            raise ValueError(
                f"RewardModule: apo_loss must be 'ranking' or 'diff', got {apo_loss!r}"
            )
        if pooling not in POOLINGS:
            raise ValueError(f"RewardModule: pooling must be one of {POOLINGS}, got {pooling!r}")
        if pooling == "eos" and eos_token_id is None:
            raise ValueError("RewardModule: pooling 'eos' needs eos_token_id")
        if human_loss not in RM_LOSSES:
            raise ValueError(
                f"RewardModule: unknown human_loss {human_loss!r}; known: {sorted(RM_LOSSES)}"
            )
        self.model = model
        self.optimizer_factory = optimizer
        self.kl_coeff, self.apo_coeff, self.apo_loss = kl_coeff, apo_coeff, apo_loss
        self.samples_per_prompt, self.pooling = samples_per_prompt, pooling
        self.human_loss, self.margin, self.centering_coeff = human_loss, margin, centering_coeff
        self.eos_token_id = eos_token_id
        self.log_prefix = "rm/train"

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Rewards for right-padded sequences `[N, T]` -> `[N]`."""
        hidden = self.model.base_model(input_ids=input_ids, attention_mask=attention_mask)[0]
        values = self.model.score(hidden).squeeze(-1).float()
        m = attention_mask.bool()
        if self.pooling in ("last", "eos"):
            pos = m.long().sum(-1).clamp(min=1) - 1
            if self.pooling == "eos":
                # first eos that is not position 0 (a bos may share the id); else the last token
                is_eos = (input_ids == self.eos_token_id) & m
                is_eos[:, 0] = False
                first = torch.where(is_eos.any(-1), is_eos.float().argmax(-1), pos)
                pos = first
            return values.gather(-1, pos[:, None]).squeeze(-1)
        if self.pooling == "average":
            return (values * m).sum(-1) / m.sum(-1).clamp(min=1)
        return values.masked_fill(~m, torch.finfo(values.dtype).min).amax(-1)

    def configure_model(self) -> None:
        # `forward` calls the backbone and the head directly, so each is an FSDP2 root
        shard(self, [self.model.base_model, self.model.score])

    def on_fit_end(self) -> None:
        remember_full_state(self.model)

    def listwise_rewards(self, batch: dict) -> torch.Tensor:
        B, k, T = batch["input_ids"].shape
        r = self(batch["input_ids"].view(B * k, T), batch["attention_mask"].view(B * k, T))
        return r.view(B, k)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        human = batch["human"]
        r_h = self.listwise_rewards(human)
        loss_h = RM_LOSSES[self.human_loss](r_h, human["scores"], human["mask"], margin=self.margin)
        loss = self.kl_coeff * loss_h
        logs = {"loss_human": loss_h, "reward_mean": r_h[human["mask"]].mean().detach()}
        if self.centering_coeff:
            loss_c = reward_centering(r_h, human["mask"])
            loss = loss + self.centering_coeff * loss_c
            logs["loss_centering"] = loss_c
        if batch.get("apo") is not None and self.apo_coeff != 0:
            apo = batch["apo"]
            loss_a = RM_LOSSES[self.apo_loss](
                self.listwise_rewards(apo), apo["scores"], apo["mask"], margin=self.margin
            )
            loss = loss + (self.apo_coeff / self.samples_per_prompt) * loss_a
            logs["loss_apo"] = loss_a
        logs["loss"] = loss
        bs = human["input_ids"].shape[0]
        self.log_dict({f"{self.log_prefix}/{k}": v for k, v in logs.items()}, batch_size=bs)
        return loss

    @torch.no_grad()
    def predict_step(self, batch: dict, batch_idx: int) -> list[dict[str, Any]]:
        r = self.listwise_rewards(batch)
        out = []
        for b, idx in enumerate(batch["index"].tolist()):
            n = int(batch["mask"][b].sum())
            out.append({"index": idx, "rewards": r[b, :n].tolist()})
        return out

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer_factory(self.trainer.model.parameters())
