"""The memory model's parts, engine by engine, on sizes small enough to count by hand."""

from __future__ import annotations

import pytest

from apo.memory_model import ENGINES, Player, fit_bytes, game_peak, llama

P = Player(params=1000, layers=2, hidden=8, heads=2)
COPIES = {"fitted": 1000, "other": 1000, "ref": 1000, "rm_base": 1000}


def parts(engine: str, world: int = 2, **kw) -> dict[str, float]:
    return fit_bytes(engine, world, P, COPIES, tokens=0, **kw)


def test_one_process_holds_four_copies_their_gradients_and_adams_two_moments():
    got = parts("auto", world=1)
    assert sum(v for k, v in got.items() if k.startswith("weights/")) == 4 * 1000 * 4
    assert (got["grads"], got["optimizer"], got["master"]) == (4000, 8000, 0)
    assert got["total"] == 16000 + 4000 + 8000


def test_each_engine_splits_what_it_shards():
    assert parts("ddp")["total"] == parts("auto")["total"] + 4000  # the reducer's buckets
    fsdp = parts("fsdp")
    assert fsdp["total"] == (16000 + 4000 + 8000) / 2 + 2 * 500 * 4  # + one layer and the next
    z2 = parts("deepspeed_stage_2")
    assert z2["weights/ref"] == 4000 and z2["grads"] == 2000 and z2["master"] == 2000
    z3 = parts("deepspeed_stage_3")
    # every copy split, the reference too (partitioned by the generation before every fit)
    assert z3["weights/fitted"] == z3["weights/ref"] == 2000
    # fp32 weights stepped in place (apo.deepspeed_fixes): as much as FSDP; a bf16 player's
    # fp32 master partition on top
    assert z3["master"] == 0 and z3["total"] == fsdp["total"]
    z3_bf16 = parts("deepspeed_stage_3", bytes_per_param=2)
    assert z3_bf16["master"] == 2000
    assert z3_bf16["total"] == parts("fsdp", bytes_per_param=2)["total"] + 2000
    # offload moves the optimizer's state off an accelerator; on a CPU-only host it is all RAM,
    off = parts("deepspeed_stage_3_offload", device_only=True)
    assert off["optimizer"] == off["master"] == off["host_grads"] == 0
    # and its fp32 master and its optimizer's own gradient partition are copies there
    on_host = parts("deepspeed_stage_3_offload")
    assert on_host["total"] == z3["total"] + 2000 + 2000
    assert on_host["master"] == on_host["host_grads"] == 2000


def test_activations_per_token_and_layer_and_with_checkpointing():
    full = fit_bytes("auto", 1, P, COPIES, tokens=10)["activations"]
    assert full == 10 * 2 * (10 * 8 + 4 * 32 + 2) * 4  # MLP width 4 x 8 by default
    ckpt = fit_bytes("auto", 1, P, COPIES, tokens=10, checkpointing=True)
    assert ckpt["activations"] == 10 * 2 * 8 * 4
    half = fit_bytes("auto", 1, P, COPIES, tokens=10, bytes_per_param=2)
    assert half["activations"] == full / 2 and half["grads"] == 2000


def test_both_fits_hold_every_copy_and_the_larger_player_fit_costs_more():
    small, large = Player(1000, 2, 8, 2), Player(3000, 2, 8, 2)
    fits = game_peak("auto", 1, policy=large, rm=small, policy_tokens=0, rm_tokens=0)
    weights = lambda f: sum(v for k, v in f.items() if k.startswith("weights/"))  # noqa: E731
    assert weights(fits["rm_fit"]) == weights(fits["policy_fit"]) == (2 * 3000 + 2 * 1000) * 4
    assert fits["policy_fit"]["total"] > fits["rm_fit"]["total"]


@pytest.mark.parametrize("size", [1, 7, 70])
def test_sharding_engines_need_less_per_rank_than_ddp_at_every_size(size: int):
    p = llama(size)
    for b in (4, 2):
        fits = {e: game_peak(e, 8, p, p, 4096, 10240, bytes_per_param=b) for e in ENGINES}
        need = {e: max(f["total"] for f in fits[e].values()) for e in ENGINES}
        assert need["deepspeed_stage_3"] < need["deepspeed_stage_2"] < need["ddp"]
        # ZeRO-3 = FSDP in fp32 (weights stepped in place); bf16 adds its fp32 master partition
        assert (need["fsdp"] == need["deepspeed_stage_3"]) == (b == 4)
        assert need["fsdp"] <= need["deepspeed_stage_3"]
    assert abs(p.params / (size * 1e9) - 1) < 1e-9
