"""The policy player: a causal LM with a frozen reference copy, aligned on RM-scored samples."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch import nn

from apo.distributed import sharding
from apo.gathered import GatheredCopies
from apo.guards import GuardNormClipping
from apo.losses.objectives import PolicyObjective
from apo.modules.logps import sequence_logps
from apo.modules.sampling import SamplingSpec, sample
from apo.monitors import log_step, logs_this_step
from apo.strategies import build_optimizer, shard

log = logging.getLogger(__name__)


def _fit_stats(
    logps: torch.Tensor,
    ref_logps: torch.Tensor | None,
    mask: torch.Tensor,
    lengths: torch.Tensor,
    entropy: list[torch.Tensor],
) -> dict[str, torch.Tensor]:
    """What a fit's batch says about the policy beyond its loss (detached, on the device):
    `kl`, the mean of `logp - ref_logp` per response when the batch has reference log-probs
    (the samples are the policy's own from before this fit, so it estimates KL(pi || pi_ref)
    only at the fit's start; it shows how far the fit moves the policy), and `entropy`, nats
    per response token, when it was computed."""
    valid = mask.bool()
    zero = torch.zeros_like(logps)
    out = {}
    if ref_logps is not None:
        diff = torch.where(valid, (logps - ref_logps).detach(), zero)
        out["kl"] = diff.sum() / valid.sum().clamp(min=1)
    if entropy:
        tokens = torch.where(valid, lengths.to(logps.dtype), zero).sum().clamp(min=1)
        out["entropy"] = torch.where(valid, entropy[0], zero).sum() / tokens
    return out


class PolicyModule(GuardNormClipping, L.LightningModule):
    """`pi(y | x)` for the APO game, as a LightningModule for one fit or one prediction.

    The weights live in `model` and `ref_model` (the frozen `pi_ref`), which outlive the module:
    the game builds a PolicyModule around them for every fit (with that fit's objective and
    learning rate) and every prediction (with its sampling settings and seed), through
    `apo.game.players.policy_module`, so nothing is switched on a module between calls.

    Training batches are listwise `[B, k, T]` with RM scores; `objective.loss` turns their
    log-likelihoods into a loss. Prediction batches say what to compute in `batch["op"]`:
    `generate` (`batch["num_samples"]` samples per prompt, batched, with the KV cache; see
    `sampling.sample`), `logps` (policy and reference log-likelihoods) or `ref_logps`.

    Args:
        model: an `AutoModelForCausalLM`.
        ref_model: the frozen reference (None before the warm start has made it).
        objective: the loss of a fit; None for a module that only predicts.
        optimizer: a partial optimizer factory taking the parameters (fits only).
        lr: the fit's learning rate; None = the optimizer factory's own.
        log_prefix: prefix of the logged step metrics (fits only), e.g. `policy/train`.
        sampling: how `generate` samples (predictions that generate).
        seed: seeds every prediction, per rank: the same seed, round and rank draw the same
            samples.
        gathered: with the players sharded (FSDP, ZeRO-3), `generate` samples from plain
            copies of their weights taken from here (gathered at the prediction's first
            batch, or kept from an earlier sampling prediction when the weights have not
            changed since; `apo.gathered`), without a collective per token
            (`policy.generation.weights: gathered`); None = the sharded model runs every token
            (`sharded`).
    """

    def __init__(
        self,
        model: nn.Module,
        ref_model: nn.Module | None = None,
        objective: PolicyObjective | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        lr: float | None = None,
        log_prefix: str | None = None,
        sampling: SamplingSpec | None = None,
        seed: int | None = None,
        gathered: GatheredCopies | None = None,
    ) -> None:
        super().__init__()
        if objective is not None and (optimizer is None or log_prefix is None):
            raise ValueError("PolicyModule: a fit needs an optimizer and a log_prefix")
        self.model, self.ref_model = model, ref_model
        self.objective, self.optimizer_factory, self.lr = objective, optimizer, lr
        self.log_prefix, self.sampling, self.seed = log_prefix, sampling, seed
        # a tuple, not a submodule: no engine may wrap or shard the copies or their skeleton
        self._gather = (gathered,) if gathered is not None else None
        self._gathered: tuple[nn.Module, nn.Module | None] | None = None

    def configure_model(self) -> None:
        # the reference is sharded like the policy; it keeps its full weights for saving
        shard(self, [self.model, self.ref_model], frozen=[self.ref_model])

    def _flat_logps(
        self, model: nn.Module, batch: dict, entropy: bool = False
    ) -> tuple[torch.Tensor, ...]:
        B, k, T = batch["input_ids"].shape
        out = sequence_logps(
            model,
            batch["input_ids"].view(B * k, T),
            batch["attention_mask"].view(B * k, T),
            batch["loss_mask"].view(B * k, T),
            entropy=entropy,
            group=k,
        )
        return tuple(t.view(B, k) for t in out)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if self.objective is None:
            raise RuntimeError("PolicyModule: built without an objective, it can only predict")
        # the entropy costs a softmax over the vocabulary: only on the steps whose logs are written
        entropy = logs_this_step(self.trainer)
        logps, lengths, *ent = self._flat_logps(self.model, batch, entropy=entropy)
        ref_logps = batch.get("ref_logps")
        loss, stats = self.objective.loss(logps, ref_logps, batch["scores"], batch["mask"], lengths)
        logs = {"loss": loss, **stats, **_fit_stats(logps, ref_logps, batch["mask"], lengths, ent)}
        bs = batch["input_ids"].shape[0]
        log_step(self, logs, bs)
        return loss

    def on_predict_start(self) -> None:
        # Each rank draws different samples, reproducibly for a given seed, round and rank.
        if self.seed is None:
            raise RuntimeError("PolicyModule: a prediction needs a seed")
        torch.manual_seed(self.seed * 1000 + self.global_rank)
        if self.ref_model is not None:
            self.ref_model.eval()

    @torch.no_grad()
    def predict_step(self, batch: dict, batch_idx: int) -> list[dict[str, Any]]:
        op = batch["op"]
        if op == "generate":
            return self._generate(batch)
        out: list[dict[str, Any]] = [{"index": i} for i in batch["index"].tolist()]
        counts = batch["mask"].sum(-1).tolist()
        if op in ("logps", "ref_logps"):
            if self.ref_model is None:
                raise RuntimeError("reference log-probs requested before the warm start")
            ref, lengths = self._flat_logps(self.ref_model, batch)
            for rec, r, n, c in zip(out, ref.tolist(), lengths.tolist(), counts):
                rec["ref_logps"], rec["lengths"] = r[:c], n[:c]
        if op == "logps":
            lp, _, ent = self._flat_logps(self.model, batch, entropy=True)
            for rec, r, e, c in zip(out, lp.tolist(), ent.tolist(), counts):
                rec["logps"], rec["entropy"] = r[:c], e[:c]
        elif op != "ref_logps":
            raise ValueError(f"PolicyModule.predict_step: unknown op {op!r}")
        return out

    def _generate(self, batch: dict) -> list[dict[str, Any]]:
        if self.sampling is None:
            raise RuntimeError("PolicyModule: built without sampling settings, it cannot generate")
        s = self.sampling
        if s.mixture > 0 and self.ref_model is None:
            raise RuntimeError("mixture sampling needs the reference policy (after the warm start)")
        cfg = self.model.generation_config
        model, ref_model = self._sampling_models()
        responses = sample(
            model,
            batch["input_ids"],
            batch["attention_mask"],
            num_samples=int(batch["num_samples"]),
            spec=s,
            eos_token_id=cfg.eos_token_id,
            pad_token_id=cfg.pad_token_id,
            ref_model=ref_model if s.mixture > 0 else None,
            stop_together=self._all_ranks,
        )
        return [{"index": i, "responses": r} for i, r in zip(batch["index"].tolist(), responses)]

    def _sampling_models(self) -> tuple[nn.Module, nn.Module | None]:
        """The policy and reference to sample from: the players themselves, or with gathered
        weights and a sharded player, plain copies taken at the first `generate` batch (a
        collective, which every rank reaches together: the prediction's ranks run the same
        batches) and used until the prediction ends."""
        if self._gather is None or sharding(self.model) is None:
            return self.model, self.ref_model
        if self._gathered is None:
            (copies,) = self._gather
            before = copies.gathered
            ref = self.ref_model
            if ref is not None and self.sampling.mixture > 0 and sharding(ref) is not None:
                ref = copies.get(ref, self._all_ranks)
            self._gathered = (copies.get(self.model, self._all_ranks), ref)
            n = sum(p.numel() for p in self._gathered[0].parameters())
            if self.global_rank == 0:
                how = "gathered once" if copies.gathered > before else "kept from before"
                log.info("generation: the sharded policy's weights %s (%d parameters)", how, n)
        return self._gathered

    def on_predict_end(self) -> None:
        self._gathered = None  # `GatheredCopies` keeps them until the next fit

    def _all_ranks(self, flag: bool) -> bool:
        return self.trainer.strategy.reduce_boolean_decision(flag, all=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = [p for p in self.trainer.model.parameters() if p.requires_grad]
        kwargs = {} if self.lr is None else {"lr": self.lr}
        return build_optimizer(self.trainer, self.optimizer_factory, params, **kwargs)
