"""DeepSpeed's buffers and ZeRO-3's working set sized from the player (`strategy.zero`)."""

from __future__ import annotations

from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from apo.strategies import build_strategy
from apo.zero_sizes import KEYS, player_shape, zero_sizes
from tests.conftest import compose_cfg

AUTO = dict.fromkeys(KEYS, "auto")


def _llama(width: int, mlp: int, layers: int = 2) -> LlamaForCausalLM:
    cfg = LlamaConfig(
        vocab_size=50,
        hidden_size=width,
        intermediate_size=mlp,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
    )
    return LlamaForCausalLM(cfg)


def test_auto_sizes_follow_the_width_and_the_largest_decoder_layer():
    # the policy and a wider second model in one LightningModule-like container: the widest
    # width and the largest layer of any of them
    small, wide = _llama(16, 40), _llama(32, 72)
    both = nn.ModuleDict({"policy": small, "rm": wide})
    layer = sum(p.numel() for p in wide.model.layers[0].parameters())
    # q, k, v, o (4 h^2), gate, up, down (3 h i) and two norms (2 h)
    assert layer == 4 * 32 * 32 + 3 * 32 * 72 + 2 * 32
    assert player_shape(both) == (32, layer)
    assert zero_sizes(both, AUTO) == {
        "reduce_bucket_size": 32 * 32,
        "allgather_bucket_size": 32 * 32,
        "stage3_prefetch_bucket_size": int(0.9 * 32 * 32),
        "stage3_param_persistence_threshold": 320,
        "stage3_max_live_parameters": 3 * layer,
        "stage3_max_reuse_distance": layer,
        "sub_group_size": layer,
    }


def test_numbers_are_kept_and_null_leaves_the_entry_to_deepspeed():
    got = zero_sizes(
        _llama(16, 40), {"reduce_bucket_size": 5e8, "stage3_max_live_parameters": None}
    )
    assert got == {"reduce_bucket_size": 500_000_000}


def test_a_model_without_transformers_shapes_keeps_deepspeeds_defaults():
    assert player_shape(nn.Linear(4, 4)) == (None, None)
    assert zero_sizes(nn.Linear(4, 4), AUTO) == {}


def test_the_strategy_carries_the_settings_of_its_config():
    cfg = compose_cfg(["experiment=tiny", "strategy=deepspeed_stage_3"])
    strategy, devices = build_strategy(cfg.strategy)
    assert strategy.zero == AUTO and devices == 2
