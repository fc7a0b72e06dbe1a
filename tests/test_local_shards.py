"""`LocalShards`, `storage_bytes` and `sharded_copy` on a real FSDP2 model over 2 CPU processes
(gloo)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
from torch import nn

from tests.conftest import free_port, on_two_ranks

X = torch.tensor([[1, 2, 3], [4, 5, 14]])
FULL_BYTES = (15 * 8 + 8 * 8 + 8 + 8 + 1) * 4  # the model's parameters, unsharded


def _model() -> nn.Module:
    torch.manual_seed(0)
    # a vocabulary of 15 rows, as the sort task's: shards of 8 and 7 rows
    return nn.Sequential(nn.Embedding(15, 8), nn.Linear(8, 8), nn.Linear(8, 1))


def _shard_and_step(model: nn.Module) -> None:
    """FSDP2 on the middle layer, then the root; one fit step, after whose backward every
    module is resharded."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (2,))
    fully_shard(model[1], mesh=mesh)
    fully_shard(model, mesh=mesh)
    model(X).sum().backward()


def _play(rank: int) -> dict:
    from torch.distributed.tensor import DTensor

    from apo.distributed import LocalShards, full_state_dict, storage_bytes

    model = _model()
    _shard_and_step(model)
    base = LocalShards(model)
    want = full_state_dict(model)
    with torch.no_grad():
        model(X)  # an evaluation: the root's parameters stay gathered
    root_gathered = not isinstance(model[0].weight, DTensor)
    stored = storage_bytes(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # the round's fit moved the weights
        model(X)
    base.restore(model)  # the next round starts from the base again
    got = full_state_dict(model)
    return {
        "root_gathered": root_gathered,
        "rows": base.tensors[0].shape[0],
        "stored": stored,
        "same": rank != 0 or all(torch.equal(got[k], want[k]) for k in want),
    }


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_snapshots_and_storage_are_shards_after_an_evaluation_left_the_root_gathered():
    out = on_two_ranks(_play)
    # the situation that broke the 300M game under fsdp: after a forward without backward the
    # root's parameters are full tensors, not shards
    assert out[0]["root_gathered"] and out[1]["root_gathered"]
    assert sorted(o["rows"] for o in out.values()) == [7, 8]  # the shards, not 15 rows
    assert all(o["stored"] < 0.6 * FULL_BYTES for o in out.values())
    assert out[0]["same"]  # restored to the base weights after the weights moved


def _copy(rank: int) -> dict:
    from torch.distributed.fsdp import FSDPModule

    from apo.distributed import full_state_dict, sharded_copy, skeleton, storage_bytes

    model = _model()
    model.register_buffer("scale", torch.tensor(3.0))  # a buffer travels too
    arch = skeleton(model)
    _shard_and_step(model)
    with torch.no_grad():
        before = model(X)  # leaves the root gathered: the copy must read shards
    ref = sharded_copy(model, arch)
    want = full_state_dict(model)
    with torch.no_grad():
        same_out = torch.equal(ref(X), before)
        for p in model.parameters():
            p.add_(1.0)  # the policy moves on; the reference must not
        still = torch.equal(ref(X), before)
    got = full_state_dict(ref)
    return {
        "sharded": isinstance(ref, FSDPModule) and isinstance(ref[1], FSDPModule),
        "stored": storage_bytes(ref),
        "model_stored": storage_bytes(model),
        "same_out": same_out,
        "still": still,
        "scale": float(ref.scale),
        "same_state": rank != 0 or all(torch.equal(got[k], want[k]) for k in want),
    }


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_a_sharded_copy_holds_only_shards_and_keeps_the_weights_it_was_taken_with():
    out = on_two_ranks(_copy)
    for o in out.values():
        assert o["sharded"]  # the same modules sharded: a later Trainer keeps it as it is
        assert o["stored"] == o["model_stored"] < 0.6 * FULL_BYTES  # shards only, as the model's
        assert o["same_out"] and o["still"]
        assert o["scale"] == 3.0
    assert out[0]["same_state"]


def _partitioned_copy(rank: int) -> dict:
    import deepspeed

    from apo.distributed import (
        full_state_dict,
        partitioned_copy,
        sharding,
        skeleton,
        storage_bytes,
    )

    os.environ.update(LOCAL_RANK=str(rank), RANK=str(rank), WORLD_SIZE="2")
    model = _model()
    model.register_buffer("scale", torch.tensor(3.0))
    arch = skeleton(model)
    with torch.no_grad():
        before = model(X)
    deepspeed.zero.Init(module=model, dtype=torch.float32, mem_efficient_linear=False)
    ref = partitioned_copy(model, arch)
    want = full_state_dict(model)
    with torch.no_grad():
        for p in model.parameters():
            p.ds_tensor.add_(1.0)  # the policy moves on; the reference must not
    with deepspeed.zero.GatheredParameters(list(ref.parameters())), torch.no_grad():
        same_out = torch.equal(ref(X), before)
    got = full_state_dict(ref)
    return {
        "partitioned": sharding(ref) == "zero3",
        "stored": storage_bytes(ref),
        "same_out": same_out,
        "scale": float(ref.scale),
        "same_state": rank != 0 or all(torch.equal(got[k], want[k]) for k in want),
    }


@pytest.mark.slow
@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_a_partitioned_copy_holds_only_its_partitions_and_the_weights_it_was_taken_with():
    out = on_two_ranks(_partitioned_copy)
    for o in out.values():
        assert o["partitioned"] and o["stored"] < 0.6 * FULL_BYTES  # its partitions only
        assert o["same_out"] and o["scale"] == 3.0
    assert out[0]["same_state"]


_EXIT = """
import atexit, os
import torch.distributed as dist
from apo.distributed import destroy_process_group_at_exit
# registered first, so it runs last (atexit is last in, first out): what the group is then
atexit.register(lambda: print("initialized at exit:", dist.is_initialized()))
destroy_process_group_at_exit()
destroy_process_group_at_exit()  # once per process
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ["PORT"])
dist.init_process_group("gloo", rank=0, world_size=1)
print("initialized:", dist.is_initialized())
"""


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_the_process_group_is_destroyed_as_the_process_exits():
    import subprocess
    import sys

    env = {**os.environ, "PORT": str(free_port())}
    out = subprocess.run(
        [sys.executable, "-c", _EXIT], capture_output=True, text=True, check=True, env=env
    ).stdout.split("\n")
    assert out[:2] == ["initialized: True", "initialized at exit: False"], out
