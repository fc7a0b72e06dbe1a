"""`LocalShards` and `storage_bytes` on a real FSDP2 model over 2 CPU processes (gloo)."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _play(rank: int, port: int, out: dict) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    from apo.distributed import LocalShards, full_state_dict, storage_bytes

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        # a vocabulary of 15 rows, as the sort task's: shards of 8 and 7 rows
        model = nn.Sequential(nn.Embedding(15, 8), nn.Linear(8, 8), nn.Linear(8, 1))
        mesh = init_device_mesh("cpu", (2,))
        fully_shard(model[1], mesh=mesh)
        fully_shard(model, mesh=mesh)
        x = torch.tensor([[1, 2, 3], [4, 5, 14]])
        model(x).sum().backward()  # a fit's step: every module resharded after its backward
        base = LocalShards(model)
        want = full_state_dict(model)
        with torch.no_grad():
            model(x)  # an evaluation: the root's parameters stay gathered
        root_gathered = not isinstance(model[0].weight, DTensor)
        stored = storage_bytes(model)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)  # the round's fit moved the weights
            model(x)
        base.restore(model)  # the next round starts from the base again
        got = full_state_dict(model)
        out[rank] = {
            "root_gathered": root_gathered,
            "rows": base.tensors[0].shape[0],
            "stored": stored,
            "same": rank != 0 or all(torch.equal(got[k], want[k]) for k in want),
        }
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_snapshots_and_storage_are_shards_after_an_evaluation_left_the_root_gathered():
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_play, args=(_free_port(), out), nprocs=2, join=True)
        out = dict(out)
    full = (15 * 8 + 8 * 8 + 8 + 8 + 1) * 4
    # the situation that broke the 300M game under fsdp: after a forward without backward the
    # root's parameters are full tensors, not shards
    assert out[0]["root_gathered"] and out[1]["root_gathered"]
    assert sorted(o["rows"] for o in out.values()) == [7, 8]  # the shards, not 15 rows
    assert all(o["stored"] < 0.6 * full for o in out.values())
    assert out[0]["same"]  # restored to the base weights after the weights moved


def _copy(rank: int, port: int, out: dict) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, fully_shard

    from apo.distributed import full_state_dict, sharded_copy, skeleton, storage_bytes

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Embedding(15, 8), nn.Linear(8, 8), nn.Linear(8, 1))
        model.register_buffer("scale", torch.tensor(3.0))  # a buffer travels too
        arch = skeleton(model)
        mesh = init_device_mesh("cpu", (2,))
        fully_shard(model[1], mesh=mesh)
        fully_shard(model, mesh=mesh)
        x = torch.tensor([[1, 2, 3], [4, 5, 14]])
        model(x).sum().backward()
        with torch.no_grad():
            before = model(x)  # leaves the root gathered: the copy must read shards
        ref = sharded_copy(model, arch)
        want = full_state_dict(model)
        with torch.no_grad():
            same_out = torch.equal(ref(x), before)
            for p in model.parameters():
                p.add_(1.0)  # the policy moves on; the reference must not
            still = torch.equal(ref(x), before)
        got = full_state_dict(ref)
        out[rank] = {
            "sharded": isinstance(ref, FSDPModule) and isinstance(ref[1], FSDPModule),
            "stored": storage_bytes(ref),
            "model_stored": storage_bytes(model),
            "same_out": same_out,
            "still": still,
            "scale": float(ref.scale),
            "same_state": rank != 0 or all(torch.equal(got[k], want[k]) for k in want),
        }
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_a_sharded_copy_holds_only_shards_and_keeps_the_weights_it_was_taken_with():
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_copy, args=(_free_port(), out), nprocs=2, join=True)
        out = dict(out)
    full = (15 * 8 + 8 * 8 + 8 + 8 + 1) * 4
    for o in out.values():
        assert o["sharded"]  # the same modules sharded: a later Trainer keeps it as it is
        assert o["stored"] == o["model_stored"] < 0.6 * full  # shards only, as the model's
        assert o["same_out"] and o["still"]
        assert o["scale"] == 3.0
    assert out[0]["same_state"]
