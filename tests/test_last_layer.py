"""The last decoder layer run only at the positions read gives transformers' own hidden states
and gradients there, for each model type it switches, plain or packed, through both
attention implementations; other models and layers run as they are."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    MistralConfig,
    Qwen2Config,
    Qwen3Config,
)

from apo.modules import packing
from apo.modules.last_layer import last_layer_at
from apo.modules.packing import hidden_states
from tests.test_packing import CFG, _rows

CONFIGS = {
    "llama": lambda: LlamaConfig(**CFG),
    "mistral": lambda: MistralConfig(**CFG, sliding_window=None),
    "qwen2": lambda: Qwen2Config(**CFG),
    "qwen3": lambda: Qwen3Config(**CFG, head_dim=8),
}


def _decoder(kind: str, attn: str) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = CONFIGS[kind]()
    cfg._attn_implementation = attn
    return AutoModelForCausalLM.from_config(cfg).get_decoder()


def _keep(att: torch.Tensor) -> torch.Tensor:
    """Each row's last real token and, where it has them, its third and fifth positions."""
    keep = torch.zeros_like(att, dtype=torch.bool)
    last = att.sum(-1).clamp(min=1) - 1
    keep[torch.arange(len(att)), last] = True
    keep[:, [2, 4]] |= att[:, [2, 4]].bool()
    # not an empty row's padding: a query that sees no key has no meaningful gradient (with an
    # additive mask, eager attention's and SDPA's differ there); callers mask such rows out
    return keep & att.bool()


def _grads(dec: torch.nn.Module, out: torch.Tensor, keep: torch.Tensor) -> list[torch.Tensor]:
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    params = [p for p in dec.parameters() if p.requires_grad]
    return torch.autograd.grad((out * w)[keep].sum(), params, allow_unused=True)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("kind", sorted(CONFIGS))
@pytest.mark.parametrize("packed", [None, False, True])
def test_kept_positions_equal_the_full_layer(monkeypatch, kind, attn, packed):
    """packed: None = the plain padded rows (transformers' own mask, an empty row among them),
    False = each sequence its own item, True = items of three sharing their prompt."""
    monkeypatch.setattr(packing, "GAIN", 0.0 if packed is None else 1e9)
    dec = _decoder(kind, attn)
    ids, att = _rows()
    keep = _keep(att)
    full = dec(input_ids=ids, attention_mask=att, use_cache=False)[0]  # transformers' own
    kept = hidden_states(dec, ids, att, group=3 if packed else 1, keep=keep)
    torch.testing.assert_close(kept[keep], full[keep], atol=1e-5, rtol=0)
    # with one position read a sequence, the last layer's MLP ran on fewer positions than all
    last = torch.zeros_like(keep)
    last[torch.arange(len(att)), att.sum(-1).clamp(min=1) - 1] = True
    last &= att.bool()  # (not an empty row's padding)
    seen = {}
    layer = dec.layers[-1]
    hooks = [
        mod.register_forward_hook(lambda m, i, o, name=name: seen.update({name: i[0].shape}))
        for name, mod in (("norm", layer.input_layernorm), ("mlp", layer.mlp))
    ]
    one = hidden_states(dec, ids, att, group=3 if packed else 1, keep=last)
    for h in hooks:
        h.remove()
    torch.testing.assert_close(one[last], full[last], atol=1e-5, rtol=0)
    assert seen["mlp"][0] == seen["norm"][0] and seen["mlp"][1] < seen["norm"][1] / 2
    for a, b in zip(_grads(dec, kept, keep), _grads(dec, full, keep)):
        if b is None:
            assert a is None or float(a.abs().max()) == 0.0
        else:
            torch.testing.assert_close(a, b, atol=5e-5, rtol=1e-3)


def test_the_layer_is_restored_and_other_models_run_as_they_are():
    dec = _decoder("llama", "sdpa")
    ids, att = _rows()
    keep = _keep(att)
    last = dec.layers[-1]
    with last_layer_at(dec, keep):
        assert "forward" in vars(last)
    assert "forward" not in vars(last)  # the class's forward again

    class Wrapper(torch.nn.Module):  # as FSDP1 holds a layer: its parts are not its own
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *args, **kwargs):
            return self.inner(*args, **kwargs)

    dec.layers[-1] = Wrapper(last)
    with last_layer_at(dec, keep):
        assert "forward" not in vars(dec.layers[-1]) and "forward" not in vars(last)
    sliding = MistralConfig(**CFG, sliding_window=4)
    sliding._attn_implementation = "sdpa"
    torch.manual_seed(0)
    dec = AutoModelForCausalLM.from_config(sliding).get_decoder()
    with last_layer_at(dec, keep):
        assert "forward" not in vars(dec.layers[-1])  # a sliding window: left as it is
        out = dec(input_ids=ids, attention_mask=att)[0]
    assert bool((out[att.bool()] != 0).all(-1).all())  # every position computed


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_kept_positions_under_bf16_autocast(monkeypatch, attn):
    monkeypatch.setattr(packing, "GAIN", 1e9)
    dec = _decoder("llama", attn)
    ids, att = _rows()
    keep = _keep(att)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        full = dec(input_ids=ids, attention_mask=att, use_cache=False)[0]
        kept = hidden_states(dec, ids, att, group=3, keep=keep)
    assert kept.dtype == full.dtype
    torch.testing.assert_close(kept[keep].float(), full[keep].float(), atol=0.05, rtol=0.02)
