"""Rank helpers: every rank runs the whole game; predictions are gathered so all ranks agree."""

from __future__ import annotations

import atexit
import copy
import functools
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from torch import nn
from torch.distributed.tensor import DTensor
from torch.utils.data import DataLoader, DistributedSampler

from apo.gather import full_tensors


def global_rank() -> int:
    """This process's rank as Lightning knows it: read from the launcher's environment before
    the first Trainer exists (`RANK`, `LOCAL_RANK`, `SLURM_PROCID`), set by the strategy after."""
    return int(rank_zero_only.rank)


def is_global_zero() -> bool:
    return global_rank() == 0


@functools.cache
def destroy_process_group_at_exit() -> None:
    """Destroy the default process group (Lightning's, which nobody destroys) when the process
    exits, while the interpreter is still whole: gloo's worker threads alive at finalization
    abort the process now and then ("terminate called without an active exception", SIGABRT
    after a finished game; seen once on a rank of the 2-task srun test). At exit, not at the
    game's end: a Hydra multirun plays its jobs in one process on the same group. Once per
    process."""
    atexit.register(_destroy_process_group)


def _destroy_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


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
    forward is a collective); the repeated examples are dropped here. The records must be plain
    Python values (lists, numbers, strings): they are taken as `predict_step` returns them, where
    Lightning's own `return_predictions` walks every list of every record to move it to the CPU
    (a fifth of a tiny policy's sampling time).
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
    collect = _Collect()
    trainer.callbacks.append(collect)
    try:
        trainer.predict(module, dataloaders=loader, return_predictions=False)
    finally:
        trainer.callbacks.remove(collect)
    mine = [rec for batch in collect.batches for rec in batch]
    by_index = {rec["index"]: rec for rec in gather_objects(mine)}
    # a dataset of ready batches (`apo.data.batching.BatchedDataset`) counts its items
    expected = getattr(loader.dataset, "num_items", len(loader.dataset))
    if len(by_index) != expected:
        raise RuntimeError(f"prediction returned {len(by_index)} of {expected} examples")
    return [by_index[i] for i in sorted(by_index)]


class _Collect(L.Callback):
    """The outputs of every prediction batch, as they are."""

    def __init__(self) -> None:
        self.batches: list[list[dict]] = []

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dl_idx=0):
        self.batches.append(outputs)


# ---- sharded weights (FSDP, DeepSpeed ZeRO-3) -----------------------------------------------
def sharding(model: nn.Module) -> str | None:
    """`"fsdp"` (DTensor or FSDP1 flat parameters), `"zero3"` (partitioned by DeepSpeed) or None."""
    for p in model.parameters():
        if hasattr(p, "ds_id"):
            return "zero3"
        if isinstance(p, DTensor) or type(p).__name__ == "FlatParameter":
            return "fsdp"
    return None


def _gather_full_state(
    model: nn.Module, rank0_only: bool, device: str | None = None
) -> dict[str, torch.Tensor]:
    """The full state dict (a collective for sharded models: every rank must call it), on
    `device` (None: where the model's pieces live); with `rank0_only`, ranks other than 0 get
    `{}` and never hold a full copy (each tensor is dropped as soon as it is gathered)."""
    kind = sharding(model)
    rank0 = not rank0_only or not dist.is_initialized() or dist.get_rank() == 0
    if kind == "fsdp" and any(type(p).__name__ == "FlatParameter" for p in model.parameters()):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        # FSDP1: its own gather (cpu_offload with a full state dict: to rank 0 only)
        opts = StateDictOptions(full_state_dict=True, cpu_offload=rank0_only)
        state = get_model_state_dict(model, options=opts)
        if not rank0:
            return {}
        return {k: v.detach().to(device or v.device).clone() for k, v in state.items()}
    return full_tensors(resharded(model) if kind == "fsdp" else model, rank0, device)


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's full weights as plain CPU tensors on rank 0, whatever engine trained it.

    A collective when the model is sharded (FSDP, ZeRO-3): every rank must call it; rank 0 gets
    the weights, gathered one tensor at a time, the other ranks `{}` (no rank but 0 ever holds a
    full copy). Unsharded models (auto, ddp, ZeRO-2) give their live weights on every rank."""
    if sharding(model) is None:
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return _gather_full_state(model, rank0_only=True, device="cpu")


def local_tensor(p: torch.Tensor) -> torch.Tensor:
    """This rank's storage of parameter `p`: its shard under FSDP (a DTensor's local part) or
    ZeRO-3 (`ds_tensor`, the rank's partition), else the parameter's own data."""
    if hasattr(p, "ds_tensor"):
        return p.ds_tensor
    if isinstance(p, DTensor):
        return p.to_local()
    return p.data


def resharded(model: nn.Module) -> nn.Module:
    """`model` with every FSDP2 module back on its shards. FSDP2 keeps a root module's
    parameters gathered after a forward that no backward follows (an evaluation, a scoring
    pass), and `parameters()` then gives the full tensors, not this rank's shards."""
    from torch.distributed.fsdp import FSDPModule

    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.reshard()
    return model


def storage_bytes(model: nn.Module | None) -> int:
    """Bytes of `model`'s parameters this rank holds (its shards when the model is sharded;
    an FSDP2 model is resharded first, see `resharded`)."""
    if model is None:
        return 0
    resharded(model)
    seen = {id(p): local_tensor(p) for p in model.parameters()}
    return sum(t.numel() * t.element_size() for t in seen.values())


class LocalShards:
    """A sharded model's weights as each rank's own shards, cloned: a snapshot that costs a
    rank what its shards do (1/N of the model) and is restored in place, so that no rank ever
    keeps a full copy (the base RM of `game.rm_init: base` under FSDP or ZeRO-3)."""

    def __init__(self, model: nn.Module) -> None:
        params = resharded(model).parameters()
        self.tensors = [local_tensor(p).detach().clone() for p in params]

    @torch.no_grad()
    def restore(self, model: nn.Module) -> None:
        """Write the snapshot back into `model` (the same sharded architecture)."""
        params = list(resharded(model).parameters())
        if len(params) != len(self.tensors):
            raise ValueError(
                f"LocalShards: {len(self.tensors)} tensors for {len(params)} parameters"
            )
        for p, t in zip(params, self.tensors, strict=True):
            local_tensor(p).copy_(t)

    def full_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The snapshot's full weights on rank 0 (`full_state_dict`, a collective), gathered
        through `model`, which is left as it was."""
        current = LocalShards(model)
        self.restore(model)
        try:
            return full_state_dict(model)
        finally:
            current.restore(model)


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
    out.load_state_dict(_gather_full_state(model, rank0_only=False), assign=True)
    return out


def partitioned_copy(model: nn.Module, skeleton_: nn.Module) -> nn.Module:
    """A copy of the ZeRO-3-partitioned `model`, partitioned as it is: `skeleton_` (see
    `skeleton`) is laid out in (untouched) memory and partitioned by DeepSpeed over the same
    ranks, and each rank copies its own partitions into it, so that no rank holds a full copy
    (the reference policy of a ZeRO-3 game). Not a collective."""
    import deepspeed

    first = local_tensor(next(model.parameters()))
    out = copy.deepcopy(skeleton_).to_empty(device=first.device)
    # mem_efficient_linear would replace torch's linear for the whole process
    deepspeed.zero.Init(module=out, dtype=first.dtype, mem_efficient_linear=False)
    return _copy_local(out, model, "partitioned_copy")


def _copy_local(out: nn.Module, model: nn.Module, what: str) -> nn.Module:
    """Each rank's own storage of `model`'s parameters (and its buffers) copied into `out`,
    sharded or partitioned as `model` is."""
    with torch.no_grad():
        for (n, a), (m, b) in zip(out.named_parameters(), model.named_parameters(), strict=True):
            if n != m or local_tensor(a).shape != local_tensor(b).shape:
                raise ValueError(
                    f"{what}: {n} {tuple(local_tensor(a).shape)} does not "
                    f"match {m} {tuple(local_tensor(b).shape)}"
                )
            local_tensor(a).copy_(local_tensor(b))
        for a, b in zip(out.buffers(), model.buffers(), strict=True):
            a.copy_(b)
    return out


def sharded_copy(model: nn.Module, skeleton_: nn.Module) -> nn.Module:
    """A copy of the FSDP2-sharded `model`, sharded as it is: `skeleton_` (see `skeleton`)
    gets `fully_shard` on the same modules and mesh, and each rank fills it with its own
    shards, so that no rank ever holds a full copy (the reference policy of a sharded game).
    Not a collective."""
    from torch.distributed.fsdp import FSDPModule, fully_shard

    src = dict(resharded(model).named_modules())
    out = copy.deepcopy(skeleton_)
    # inner modules first (`named_modules` lists a module before its children), as FSDP2 wants
    for name, m in reversed(list(out.named_modules())):
        if isinstance(src.get(name), FSDPModule):
            mesh = next(p.device_mesh for p in src[name].parameters() if isinstance(p, DTensor))
            fully_shard(m, mesh=mesh)
    out.to_empty(device=local_tensor(next(model.parameters())).device)
    return resharded(_copy_local(out, model, "sharded_copy"))
