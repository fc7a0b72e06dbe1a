"""The policy player: a causal LM with a frozen reference copy, aligned on RM-scored samples."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from apo.distributed import plain_copy, remember_full_state, skeleton
from apo.losses.policy import POLICY_OBJECTIVES
from apo.modules.sampling import sample
from apo.strategies import shard


def sequence_logps(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, loss_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-likelihood of the `loss_mask` tokens of each row `[N, T]`, and their count."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
    targets = input_ids[:, 1:]
    tok_logp = -F.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none")
    m = loss_mask[:, 1:].to(tok_logp.dtype)
    return (tok_logp * m).sum(-1), m.sum(-1)


class PolicyModule(L.LightningModule):
    """`pi(y | x)` for the APO game.

    Training batches are listwise `[B, k, T]` with RM scores; the objective (a name in
    `POLICY_OBJECTIVES`, with its keyword arguments) turns their log-likelihoods into a loss.
    Prediction batches say what to compute in `batch["op"]`: `generate` (K samples per prompt,
    batched, with the KV cache; see `sampling.sample`), `logps` (policy and reference log-likelihoods) or `ref_logps`.

    Args:
        model: an `AutoModelForCausalLM`.
        optimizer: a partial optimizer factory taking the parameters.
        objective: registry name; `objective_kwargs` are passed to it (e.g. `beta`).
        generation: keyword arguments of `sampling.sample` (max_new_tokens, temperature, top_k,
            top_p, and `mixture`: the weight of the reference in Nash-MD style mixture sampling).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        objective: str = "rjs",
        objective_kwargs: dict[str, Any] | None = None,
        generation: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.ref_model: nn.Module | None = None
        # the architecture without weights, to copy the reference from once `model` is sharded
        # (not a submodule, so no engine wraps or shards it)
        object.__setattr__(self, "_skeleton", skeleton(model))
        self.optimizer_factory = optimizer
        self.set_objective(objective, objective_kwargs or {})
        self.generation = dict(generation or {})
        self.samples_per_prompt = 1
        self.generation_seed = 0
        #: learning rate of the round fits when the objective sets one (None = the optimizer's)
        self.round_lr: float | None = None
        self.log_prefix = "policy/train"

    def set_objective(self, name: str, kwargs: dict[str, Any]) -> None:
        if name not in POLICY_OBJECTIVES:
            raise ValueError(
                f"unknown policy objective {name!r}; known: {sorted(POLICY_OBJECTIVES)}"
            )
        self.objective_name, self.objective = name, POLICY_OBJECTIVES[name]
        self.objective_kwargs = dict(kwargs)

    def snapshot_reference(self) -> None:
        """Freeze a copy of the current policy as `pi_ref` (done once, after the warm start)."""
        self.ref_model = plain_copy(self.model, self._skeleton).eval()
        self.ref_model.requires_grad_(False)

    def configure_model(self) -> None:
        # the reference is sharded like the policy; it keeps its full weights for saving
        shard(self, [self.model, self.ref_model], frozen=[self.ref_model])

    def on_fit_end(self) -> None:
        remember_full_state(self.model)

    def _flat_logps(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        B, k, T = batch["input_ids"].shape
        lp, n = sequence_logps(
            model,
            batch["input_ids"].view(B * k, T),
            batch["attention_mask"].view(B * k, T),
            batch["loss_mask"].view(B * k, T),
        )
        return lp.view(B, k), n.view(B, k)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logps, lengths = self._flat_logps(self.model, batch)
        loss, stats = self.objective.fn(
            logps,
            batch.get("ref_logps"),
            batch["scores"],
            batch["mask"],
            lengths,
            **self.objective_kwargs,
        )
        logs = {"loss": loss, **stats}
        bs = batch["input_ids"].shape[0]
        self.log_dict({f"{self.log_prefix}/{k}": v for k, v in logs.items()}, batch_size=bs)
        return loss

    def on_predict_start(self) -> None:
        # Each rank draws different samples, reproducibly for a given seed, round and rank.
        torch.manual_seed(self.generation_seed * 1000 + self.global_rank)
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
                raise RuntimeError("reference log-probs requested before snapshot_reference()")
            ref, lengths = self._flat_logps(self.ref_model, batch)
            for rec, r, n, c in zip(out, ref.tolist(), lengths.tolist(), counts):
                rec["ref_logps"], rec["lengths"] = r[:c], n[:c]
        if op == "logps":
            lp, _ = self._flat_logps(self.model, batch)
            for rec, r, c in zip(out, lp.tolist(), counts):
                rec["logps"] = r[:c]
        elif op != "ref_logps":
            raise ValueError(f"PolicyModule.predict_step: unknown op {op!r}")
        return out

    def _generate(self, batch: dict) -> list[dict[str, Any]]:
        gen = dict(self.generation)
        mixture = gen.pop("mixture", 0.0)
        if batch.get("mixture") is not None:
            mixture = batch["mixture"]
        mixture = float(mixture or 0.0)
        cfg = self.model.generation_config
        responses = sample(
            self.model,
            batch["input_ids"],
            batch["attention_mask"],
            num_samples=int(batch.get("num_samples", self.samples_per_prompt)),
            max_new_tokens=int(gen.pop("max_new_tokens", 32)),
            eos_token_id=cfg.eos_token_id,
            pad_token_id=cfg.pad_token_id,
            ref_model=self.ref_model if mixture > 0 else None,
            mixture=mixture,
            **gen,
        )
        return [{"index": i, "responses": r} for i, r in zip(batch["index"].tolist(), responses)]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = [p for p in self.trainer.model.parameters() if p.requires_grad]
        if self.round_lr is not None and self.objective_name != "sft":
            return self.optimizer_factory(params, lr=self.round_lr)
        return self.optimizer_factory(params)
