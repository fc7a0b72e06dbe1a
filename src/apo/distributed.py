"""Rank helpers: every rank runs the whole game; predictions are gathered so all ranks agree."""

from __future__ import annotations

import copy
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from torch import nn
from torch.distributed.tensor import DTensor
from torch.utils.data import DataLoader, DistributedSampler


def global_rank() -> int:
    """This process's rank as Lightning knows it: read from the launcher's environment before
    the first Trainer exists (`RANK`, `LOCAL_RANK`, `SLURM_PROCID`), set by the strategy after."""
    return int(rank_zero_only.rank)


def is_global_zero() -> bool:
    return global_rank() == 0


def gather_objects(records: list[Any]) -> list[Any]:
    """Concatenate per-rank lists on every rank (a no-op in a single process)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return records
    parts: list[list[Any] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, records)
    return [r for part in parts for r in (part or [])]


def predict_gathered(
    trainer: L.Trainer, module: L.LightningModule, loader: DataLoader
) -> list[dict]:
    """Run `trainer.predict` and return every rank's per-example records, ordered by `index`.

    `predict_step` must return a list of dicts with an `index` key. With several processes the
    loader gets a padded `DistributedSampler` (Lightning's own for prediction does not repeat,
    so ranks could run different numbers of batches, which deadlocks a sharded model whose
    forward is a collective); the repeated examples are dropped here.
    """
    if trainer.world_size > 1:
        sampler = DistributedSampler(
            loader.dataset, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False
        )
        loader = DataLoader(
            loader.dataset,
            batch_size=loader.batch_size,
            sampler=sampler,
            collate_fn=loader.collate_fn,
            num_workers=loader.num_workers,
        )
    out = trainer.predict(module, dataloaders=loader, return_predictions=True) or []
    mine = [rec for batch in out for rec in batch]
    by_index = {rec["index"]: rec for rec in gather_objects(mine)}
    expected = len(loader.dataset)
    if len(by_index) != expected:
        raise RuntimeError(f"prediction returned {len(by_index)} of {expected} examples")
    return [by_index[i] for i in sorted(by_index)]


# ---- sharded weights (FSDP, DeepSpeed ZeRO-3) -----------------------------------------------
def sharding(model: nn.Module) -> str | None:
    """`"fsdp"` (DTensor or FSDP1 flat parameters), `"zero3"` (partitioned by DeepSpeed) or None."""
    for p in model.parameters():
        if hasattr(p, "ds_id"):
            return "zero3"
        if isinstance(p, DTensor) or type(p).__name__ == "FlatParameter":
            return "fsdp"
    return None


def _gather_full_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The full state dict on CPU; a collective: every rank must call it."""
    kind = sharding(model)
    if kind == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        opts = StateDictOptions(full_state_dict=True, cpu_offload=False)
        return {
            k: v.detach().cpu().clone()
            for k, v in get_model_state_dict(model, options=opts).items()
        }
    if kind == "zero3":
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
            return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def remember_full_state(model: nn.Module) -> None:
    """After a fit of a sharded model, keep a CPU copy of its full weights for
    `full_state_dict` (a collective: call it on every rank; nothing for unsharded models)."""
    if sharding(model) is not None:
        _keep(model, _gather_full_state(model))


def remember_frozen_state(model: nn.Module) -> None:
    """Before a frozen model (the reference policy) is first sharded, keep its full weights:
    they never change, so this copy serves every later `full_state_dict`."""
    if sharding(model) is None and getattr(model, "_apo_full_state", None) is None:
        _keep(model, _gather_full_state(model))


def _keep(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    # a plain attribute, not a buffer: it must not become part of the model's own state
    object.__setattr__(model, "_apo_full_state", state)


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's full weights as plain CPU tensors, whatever engine trained it.

    Unsharded models (auto, ddp, ZeRO-2) give their live weights. Sharded ones (FSDP, ZeRO-3)
    give the copy `remember_full_state` took at the end of the last fit (the players call it in
    `on_fit_end`); no collective runs here, so rank-0-only code may call it.
    """
    if sharding(model) is None:
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    state = getattr(model, "_apo_full_state", None)
    if state is None:
        raise RuntimeError(
            f"{type(model).__name__} is sharded and no full copy of its weights was gathered; "
            "call apo.distributed.remember_full_state(model) on every rank after its fit"
        )
    return state


def skeleton(model: nn.Module) -> nn.Module:
    """A copy of `model` with its parameters on the meta device (no memory): the architecture
    to rebuild a plain copy from once `model` itself is sharded. Take it before any fit."""
    memo: dict[int, Any] = {
        id(p): nn.Parameter(torch.empty_like(p, device="meta"), p.requires_grad)
        for p in model.parameters()
    }
    return copy.deepcopy(model, memo)


def plain_copy(model: nn.Module, skeleton_: nn.Module) -> nn.Module:
    """A plain (unsharded) copy of `model`'s current weights, in the architecture `skeleton_`
    (see `skeleton`). A collective when `model` is sharded: every rank must call it."""
    if sharding(model) is None:
        return copy.deepcopy(model)
    out = copy.deepcopy(skeleton_)
    out.load_state_dict(_gather_full_state(model), assign=True)
    return out
