"""`apo.gather.full_tensors` (behind `full_state_dict` and `plain_copy`) against each engine's
own gather, on real FSDP2 and ZeRO-3 models over 2 CPU processes (gloo): uneven shards (15 rows
on 2 ranks, a 1-row bias whose second shard is empty), a tied weight and a buffer."""

from __future__ import annotations

import os
from contextlib import nullcontext

import pytest
import torch
import torch.distributed as dist
from torch import nn

from tests.conftest import on_two_ranks

X = torch.tensor([[1, 2, 3], [4, 5, 14]])


class _Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(15, 8)
        self.mid = nn.Linear(8, 8)
        self.head = nn.Linear(8, 15)
        self.head.weight = self.emb.weight  # tied: one tensor under two names
        self.one = nn.Linear(8, 1)
        self.register_buffer("scale", torch.tensor(3.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.mid(self.emb(x))) * self.scale
        return torch.cat([self.head(h), self.one(h)], dim=-1)


def _report(rank: int, model: nn.Module, arch: nn.Module, want: dict, whole=nullcontext) -> dict:
    """`whole()`: a context in which the sharded model can run a forward."""
    from apo.distributed import full_state_dict, plain_copy

    got = full_state_dict(model)
    with torch.no_grad(), whole():
        sharded_out = model(X)
    copy = plain_copy(model, arch)
    with torch.no_grad():
        copy_out = copy(X)
    return {
        "keys": sorted(got),
        "same": rank == 0
        and set(got) == set(want)
        and all(torch.equal(got[k], want[k]) for k in want),
        "tied": bool(got) and got["head.weight"].data_ptr() == got["emb.weight"].data_ptr(),
        "copy_same": torch.allclose(copy_out, sharded_out, atol=1e-6),
        "copy_tensors": all(torch.equal(v, want[k]) for k, v in copy.state_dict().items()),
        "rank": rank,
    }


def _fsdp(rank: int) -> dict:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    from apo.distributed import skeleton

    model = _Tied()
    arch = skeleton(model)
    mesh = init_device_mesh("cpu", (2,))
    fully_shard(model.mid, mesh=mesh)
    fully_shard(model, mesh=mesh)
    model(X).sum().backward()  # one step's backward: every module back on its shards
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)  # weights unlike the initial ones
    # the engine's own gather, one DTensor at a time
    want = {
        k: v.full_tensor() if isinstance(v, DTensor) else v.detach().clone()
        for k, v in model.state_dict().items()
    }
    with torch.no_grad():
        model(X)  # an evaluation leaves the root gathered: the gather must reshard first
    return {**_report(rank, model, arch, want), "bias_rows": model.one.bias.to_local().numel()}


def _zero3(rank: int) -> dict:
    import deepspeed

    from apo.distributed import skeleton

    os.environ.update(LOCAL_RANK=str(rank), RANK=str(rank), WORLD_SIZE="2")
    model = _Tied()
    arch = skeleton(model)
    deepspeed.zero.Init(module=model, dtype=torch.float32, mem_efficient_linear=False)
    with torch.no_grad():
        for p in model.parameters():
            p.ds_tensor.add_(0.5)
    want = {}
    for k, v in model.state_dict(keep_vars=True).items():
        with deepspeed.zero.GatheredParameters([v], modifier_rank=None):
            want[k] = v.detach().clone()
    return _report(
        rank, model, arch, want, lambda: deepspeed.zero.GatheredParameters(list(model.parameters()))
    )


def _check(out: dict[int, dict]) -> None:
    names = [
        "emb.weight",
        "head.bias",
        "head.weight",
        "mid.bias",
        "mid.weight",
        "one.bias",
        "one.weight",
    ]
    assert out[0]["keys"] == sorted([*names, "scale"])
    assert out[0]["same"] and out[0]["tied"]
    assert out[1]["keys"] == []  # rank 1 never holds the full weights
    for o in out.values():  # the plain copy (generation's) is whole on every rank
        assert o["copy_same"] and o["copy_tensors"]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_the_gather_gives_fsdp2s_full_tensors_for_uneven_shards_ties_and_buffers():
    out = on_two_ranks(_fsdp)
    assert sorted(o["bias_rows"] for o in out.values()) == [0, 1]  # an empty shard
    _check(out)


@pytest.mark.slow
@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_the_gather_gives_zero3s_full_tensors_for_uneven_partitions_ties_and_buffers():
    _check(on_two_ranks(_zero3))


def _agree(flags: list[bool]):
    """`all_ranks` of a one-process test: this rank's flag, unless another rank said no."""
    return lambda flag: flag and all(flags)


def test_gathered_copies_are_kept_while_the_weights_stay_and_regathered_when_they_change():
    from apo.distributed import skeleton
    from apo.gathered import GatheredCopies

    model = _Tied()
    copies = GatheredCopies(skeleton(model))
    first = copies.get(model, _agree([]))
    assert not first.training and first is not model
    assert torch.equal(first.mid.weight, model.mid.weight)
    assert copies.get(model, _agree([])) is first  # unchanged weights: the same copy
    assert (copies.gathered, copies.reused) == (1, 1)
    # a write that bumps no version counter (`.data`, as engines' optimizers write) is seen
    model.mid.weight.data[0, 0] += 1e-3
    second = copies.get(model, _agree([]))
    assert second is not first and torch.equal(second.mid.weight, model.mid.weight)
    model.scale.fill_(4.0)  # a buffer too
    third = copies.get(model, _agree([]))
    assert third is not second and float(third.scale) == 4.0
    # another rank's pieces changed: every rank gathers again
    assert copies.get(model, _agree([False])) is not third
    assert (copies.gathered, copies.reused) == (4, 1)
    copies.drop()
    assert len(copies) == 0
