"""A sharded model's full tensors, each gathered by one collective straight into the tensor
that keeps it.

Both engines store a parameter as equal-sized pieces, one per rank, that laid end to end in
rank order begin with the whole parameter: FSDP2's dim-0 shards (`torch.chunk` rows, the last
ranks' padded to the first's row count) and ZeRO-3's flat partitions (padded to equal length).
So one `all_gather_single` of the rank's padded piece into a fresh buffer gives the full
parameter as a view of that buffer, on the device the pieces live on: no state-dict machinery
and no second copy (measured on the 308M policy, 2 gloo processes: `get_model_state_dict` plus
the CPU clone it needed took 2.6 s of a 11.6 s generation phase). Layouts this does not know
(HSDP meshes, other shard dims, pieces on the host under a GPU backend) fall back to the
engine's own gather."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor, Shard


def _direct(piece: torch.Tensor, group: dist.ProcessGroup | None) -> bool:
    """Whether `group`'s backend can run a collective on `piece`'s device."""
    return piece.device.type != "cpu" or dist.get_backend(group) == "gloo"


def _all_gather(piece: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """The ranks' equal-sized flat `piece`s end to end, in rank order."""
    out = piece.new_empty(piece.numel() * dist.get_world_size(group))
    dist.all_gather_single(out, piece.contiguous().view(-1), group=group)
    return out


def _fsdp_full(p: DTensor) -> torch.Tensor:
    mesh, placements = p.device_mesh, p.placements
    local = p.to_local()
    if mesh.ndim != 1 or placements != (Shard(0),) or not _direct(local, mesh.get_group()):
        return p.full_tensor()
    world, rows, rest = mesh.size(), p.shape[0], tuple(p.shape[1:])
    per = -(-rows // world)  # torch.chunk's rows per rank; the last ranks may hold fewer
    if local.shape[0] < per:
        local = torch.cat([local, local.new_zeros(per - local.shape[0], *rest)])
    return _all_gather(local, mesh.get_group()).view(world * per, *rest)[:rows]


def _zero3_full(p: nn.Parameter) -> torch.Tensor | None:
    piece, group = p.ds_tensor, p.ds_process_group
    if not _direct(piece, group):
        return None
    return _all_gather(piece, group)[: p.ds_numel].view(p.ds_shape)


def _kept(t: torch.Tensor | None, keep: bool, device: torch.device | str | None):
    if not keep or t is None:
        return None
    return t if device is None else t.to(device)


@torch.no_grad()
def full_tensors(
    model: nn.Module, keep: bool, device: torch.device | str | None = None
) -> dict[str, torch.Tensor]:
    """Every entry of `model`'s state dict as a full tensor, by name, where `keep` (moved to
    `device` as each is gathered, when given); `{}` elsewhere. A collective: every rank calls it, with the same model. FSDP2 models must be
    resharded first (`apo.distributed.resharded`). A tensor tied under several names is
    gathered once; unsharded entries (buffers) are cloned."""
    out: dict[str, torch.Tensor] = {}
    done: dict[int, torch.Tensor] = {}
    fallback = []
    for name, v in model.state_dict(keep_vars=True).items():
        if id(v) not in done:
            if isinstance(v, DTensor):
                full = _fsdp_full(v)
            elif hasattr(v, "ds_tensor"):
                full = _zero3_full(v)
                if full is None:
                    fallback.append(v)
            else:
                full = v.detach().clone()
            done[id(v)] = _kept(full, keep, device)
        if keep:
            out[name] = done[id(v)]
    if fallback:
        import deepspeed

        for v in fallback:  # one parameter at a time, gathered by DeepSpeed
            with deepspeed.zero.GatheredParameters([v], modifier_rank=None):
                done[id(v)] = _kept(v.detach().clone(), keep, device)
        out = {k: done[id(v)] for k, v in model.state_dict(keep_vars=True).items()} if keep else {}
    return {k: t.detach() for k, t in out.items()}
