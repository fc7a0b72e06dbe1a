"""The reward model player: a transformer with a scalar head, trained on listwise batches."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch import nn

from apo.guards import GuardNormClipping
from apo.losses.rm_objective import RMObjective
from apo.modules.ensemble import bag_mask, members, spread
from apo.modules.packing import hidden_states
from apo.monitors import log_step
from apo.strategies import build_optimizer, shard

POOLINGS = ("last", "eos", "average", "max")


class RewardModule(GuardNormClipping, L.LightningModule):
    """`r(x, y)` for the APO game, as a LightningModule for one fit or one prediction.

    The weights live in `model`, which outlives the module: the game builds a RewardModule around
    the same model for every fit (with that fit's `objective`) and every prediction (without one),
    through `apo.game.players.reward_module`, so nothing is switched on a module between calls.

    Training batches are dicts of listwise batches: `"human"` (preference items, always) and
    `"apo"` (items `[golden, sample_1..K]` with scores `[1, 0..0]`, when the objective serves
    them); `objective.loss` weighs them (see `apo.losses.rm.RMObjective`).

    Args:
        model: a one-label `AutoModelForSequenceClassification` (its `base_model` and `score`
            head are used, so any pooling works and the export stays loadable by transformers).
        pooling: `last` (last non-pad token), `eos` (the first end-of-sequence token after the
            prompt; the last token where there is none), `average` or `max` over tokens.
        eos_token_id: needed by `eos` pooling.
        objective: the loss of a fit; None for a module that only predicts.
        optimizer: a partial optimizer factory taking the parameters (fits only).
        log_prefix: prefix of the logged step metrics (fits only), e.g. `rm/train`.
        bootstrap, bag_seed: an ensemble's (`apo.modules.ensemble.RMEnsemble`) members each fit
            on their own bag of the human items, each item in it with probability `bootstrap`
            (0 = every member sees every item), drawn from `bag_seed`.

    An ensemble's reward is its members' mean (`listwise_spread` gives their std too); every
    member is fitted on every batch, the loss is the mean of the members' losses.
    """

    def __init__(
        self,
        model: nn.Module,
        pooling: str,
        eos_token_id: int | None,
        objective: RMObjective | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        log_prefix: str | None = None,
        bootstrap: float = 0.0,
        bag_seed: int = 0,
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"rm.pooling must be one of {POOLINGS}, got {pooling!r}")
        if pooling == "eos" and eos_token_id is None:
            raise ValueError("rm.pooling 'eos' needs a tokenizer with an eos token")
        if objective is not None and (optimizer is None or log_prefix is None):
            raise ValueError("RewardModule: a fit needs an optimizer and a log_prefix")
        self.model = model
        self.pooling, self.eos_token_id = pooling, eos_token_id
        self.objective, self.optimizer_factory, self.log_prefix = objective, optimizer, log_prefix
        self.bootstrap, self.bag_seed = bootstrap, bag_seed

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Rewards for right-padded sequences `[N, T]` -> `[N]` (an ensemble's mean)."""
        return spread(self.member_rewards(input_ids, attention_mask))[0]

    def member_rewards(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, group: int = 1
    ) -> torch.Tensor:
        """Each member's rewards `[M, N]` (M = 1 for a single RM); rows in items of `group`
        consecutive rows that share their prompt run it once (`apo.modules.packing`)."""
        return torch.stack(
            [self._pooled(m, input_ids, attention_mask, group) for m in members(self.model)]
        )

    def _pooled(
        self,
        model: nn.Module,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        group: int = 1,
    ) -> torch.Tensor:
        m = attention_mask.bool()
        if self.pooling not in ("last", "eos"):
            hidden = hidden_states(model.base_model, input_ids, attention_mask, group)
            values = model.score(hidden).squeeze(-1).float()
            if self.pooling == "average":
                return (values * m).sum(-1) / m.sum(-1).clamp(min=1)
            return values.masked_fill(~m, torch.finfo(values.dtype).min).amax(-1)
        pos = m.long().sum(-1).clamp(min=1) - 1
        if self.pooling == "eos":
            # first eos that is not position 0 (a bos may share the id); else the last token
            is_eos = (input_ids == self.eos_token_id) & m
            is_eos[:, 0] = False
            pos = torch.where(is_eos.any(-1), is_eos.float().argmax(-1), pos)
        rows = torch.arange(len(pos), device=pos.device)
        keep = torch.zeros_like(m).index_put((rows, pos), torch.tensor(True, device=m.device))
        hidden = hidden_states(model.base_model, input_ids, attention_mask, group, keep)
        return model.score(hidden[rows, pos]).squeeze(-1).float()

    def configure_model(self) -> None:
        shard(self, self.shard_roots())

    def shard_roots(self) -> list[nn.Module]:
        """`forward` calls each member's backbone and head directly: each is an FSDP2 root."""
        return [part for m in members(self.model) for part in (m.base_model, m.score)]

    def listwise_member_rewards(self, batch: dict) -> torch.Tensor:
        """Each member's rewards of a listwise batch `[M, B, k]`."""
        B, k, T = batch["input_ids"].shape
        r = self.member_rewards(
            batch["input_ids"].view(B * k, T), batch["attention_mask"].view(B * k, T), group=k
        )
        return r.view(-1, B, k)

    def listwise_spread(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """`(mean, std)` over the members of a listwise batch's rewards, each `[B, k]`."""
        return spread(self.listwise_member_rewards(batch))

    def listwise_rewards(self, batch: dict) -> torch.Tensor:
        return self.listwise_spread(batch)[0]

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if self.objective is None:
            raise RuntimeError("RewardModule: built without an objective, it can only predict")
        human, apo = batch["human"], batch.get("apo")
        r_human = self.listwise_member_rewards(human)
        r_apo = None
        if apo is not None and self.objective.serves_apo:
            r_apo = self.listwise_member_rewards(apo)
        losses, logs = [], {}
        for i in range(r_human.shape[0]):
            mask = human["mask"]
            if r_human.shape[0] > 1:
                mask = bag_mask(mask, human["index"], i, self.bag_seed, self.bootstrap)
            args = () if r_apo is None else (r_apo[i], apo["scores"], apo["mask"])
            loss_i, logs_i = self.objective.loss(
                r_human[i],
                human["scores"],
                mask,
                *args,
                human_margin=human.get("margin"),
                human_smoothing=human.get("smoothing"),
            )
            losses.append(loss_i)
            for k, v in logs_i.items():  # the members' mean of every logged number
                logs[k] = logs.get(k, 0.0) + v.detach() / r_human.shape[0]
        loss = torch.stack(losses).mean()
        logs["loss"] = loss.detach()
        bs = human["input_ids"].shape[0]
        log_step(self, logs, bs)
        return loss

    @torch.no_grad()
    def predict_step(self, batch: dict, batch_idx: int) -> list[dict[str, Any]]:
        each = self.listwise_member_rewards(batch)
        r, sd = spread(each)
        ensemble = each.shape[0] > 1
        out = []
        for b, idx in enumerate(batch["index"].tolist()):
            n = int(batch["mask"][b].sum())
            rec = {"index": idx, "rewards": r[b, :n].tolist()}
            if ensemble:  # the members' disagreement on each response, and their own rewards
                rec["rewards_std"] = sd[b, :n].tolist()
                rec["member_rewards"] = each[:, b, :n].T.tolist()
            out.append(rec)
        return out

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return build_optimizer(
            self.trainer, self.optimizer_factory, self.trainer.model.parameters()
        )
