"""Decoding with a prompt's keys held once for its samples: the logits of every step are those
of the model run on the whole sequence, with left padding, with samples leaving the batch, for
every model type it is switched on for; other models keep their own attention."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, MistralConfig, Qwen2Config

from apo.modules import shared_prefix
from apo.modules.backbones import build_causal_lm
from apo.modules.sampling import _Stream
from tests.conftest import sort_task

SIZES = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=64,
)


def _model(cfg_cls, kv_heads: int):
    tok = sort_task().build_tokenizer()
    cfg = cfg_cls(**SIZES, num_key_value_heads=kv_heads)
    if cfg_cls is MistralConfig:
        cfg.sliding_window = None  # Mistral's default 4096 window: not plain full attention
    return build_causal_lm(cfg, tok, seed=0).eval(), tok


def _full_logits(model, ids: torch.Tensor, att: torch.Tensor) -> torch.Tensor:
    """The last position's logits of the model's own forward over the whole sequence."""
    pos = (att.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=att, position_ids=pos).logits[:, -1].float()


@pytest.mark.parametrize(
    "cfg_cls,kv_heads", [(LlamaConfig, 4), (LlamaConfig, 2), (Qwen2Config, 2), (MistralConfig, 1)]
)
def test_every_decoding_step_equals_the_whole_sequence_forward(cfg_cls, kv_heads):
    model, tok = _model(cfg_cls, kv_heads)
    assert shared_prefix.supports(model)
    prompts = [[tok.bos_token_id, 5, 6, 7, 8, 9], [tok.bos_token_id, 7], [tok.bos_token_id, 4, 4]]
    width = max(map(len, prompts))
    ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in prompts])
    att = torch.arange(width)[None] >= torch.tensor([width - len(p) for p in prompts])[:, None]
    att = att.long()
    k, new = 3, 5
    with torch.no_grad():
        stream = _Stream(model, ids, att, new, repeats=k)
    assert isinstance(stream.past, shared_prefix.SharedPrefixCache)
    assert stream.past.layers[0].pk.shape[0] == len(prompts)  # each prompt held once
    seq, a = ids.repeat_interleave(k, 0), att.repeat_interleave(k, 0)
    torch.testing.assert_close(stream.logits, _full_logits(model, seq, a), atol=1e-5, rtol=0)
    g = torch.Generator().manual_seed(0)
    rows = torch.arange(len(seq))
    for t in range(new - 1):
        token = torch.randint(3, 12, (len(rows),), generator=g)
        seq, a = torch.cat([seq, token[:, None]], 1), torch.cat([a, torch.ones_like(a[:, :1])], 1)
        with torch.no_grad():
            stream.step(token, a)
        torch.testing.assert_close(stream.logits, _full_logits(model, seq, a), atol=1e-5, rtol=0)
        if t == 1:  # samples leave the batch: the first of the first prompt and the whole second
            keep = torch.tensor([1, 2, 6, 7, 8])
            stream.keep(keep)
            seq, a, rows = seq[keep], a[keep], rows[keep]
    assert model.config._attn_implementation == "sdpa"  # switched back after each step


def test_other_models_keep_their_own_attention():
    model, _ = _model(LlamaConfig, 4)
    model.config._attn_implementation = "flash_attention_2"
    assert not shared_prefix.supports(model)
    model.config._attn_implementation = "sdpa"
    model.config.model_type = "gemma2"  # soft-capping: not plain attention
    assert not shared_prefix.supports(model)
    windowed, _ = _model(MistralConfig, 1)
    assert shared_prefix.supports(windowed)
    windowed.config.sliding_window = 4
    assert not shared_prefix.supports(windowed)
