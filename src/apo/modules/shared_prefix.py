"""Decoding K samples of one prompt with the prompt's keys and values held once.

Every sample of a prompt attends to the same prompt: its keys and values are the same for the K
samples. `SharedPrefixCache` keeps them once per prompt (`[B, H_kv, T_prompt, D]`, written by
the prompt's pass) and only the generated tokens per sample (`[B * K, H_kv, new, D]`); the
attention of a decoding step (`shared_prefix_attention`) reads a prompt's keys once for all of
its samples, as a batch of K queries, and joins both parts in one softmax. The result is the
attention over the whole sequence (equal to SDPA's within float rounding, tested); what changes
is the memory (the prompt is not stored K times) and the bytes read per step (decoding is
bound by reading the cache). The same idea as cascade / prefix-shared attention in inference
servers (Hydragen, Juravsky et al. 2024; FlashInfer's cascade attention).

It plugs into transformers' attention registry: while `enabled(model)` holds, the model's
`_attn_implementation` is this module's, whose prompt pass is SDPA's own and whose decoding
steps read the cache passed as the `shared_prefix` keyword. Only model types whose attention
layers call the registry with the rotated keys and nothing else (no sliding window, soft-capping
or attention sinks) are switched; any other model keeps its own attention and cache.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.cache_utils import DynamicCache, DynamicLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "apo_shared_prefix"
#: model types whose attention is plain full attention through the registry (tested: llama)
MODEL_TYPES = {"llama", "mistral", "qwen2", "qwen3"}
#: the attention implementations this one stands in for (both compute the same thing)
REPLACES = {"sdpa", "eager"}


class _Layer(DynamicLayer):
    """One layer's cache: the prompts' keys and values as their pass wrote them, and a buffer of
    `capacity` generated positions for each of the `repeats` samples of every prompt."""

    def __init__(self, capacity: int, repeats: int) -> None:
        super().__init__()
        self.capacity, self.repeats, self.filled = capacity, repeats, 0

    def update(self, key_states, value_states, *args, **kwargs):  # type: ignore[override]
        if not self.is_initialized:  # the prompts' own pass: attention over themselves
            self.lazy_initialization(key_states, value_states)
            self.pk, self.pv = key_states, value_states
            b, h, _, d = key_states.shape
            self.sk = key_states.new_empty((b * self.repeats, h, self.capacity, d))
            self.sv = value_states.new_empty(
                (b * self.repeats, h, self.capacity, value_states.shape[-1])
            )
            return key_states, value_states
        end = self.filled + key_states.shape[-2]
        self.sk[:, :, self.filled : end] = key_states
        self.sv[:, :, self.filled : end] = value_states
        self.filled = end
        return self.sk[:, :, :end], self.sv[:, :, :end]

    def get_seq_length(self) -> int:
        return self.pk.shape[-2] + self.filled if self.is_initialized else 0

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized:
            self.sk, self.sv = self.sk[indices], self.sv[indices]

    def batch_repeat_interleave(self, repeats: int) -> None:
        if repeats != self.repeats:
            raise ValueError(f"this cache holds {self.repeats} samples a prompt, not {repeats}")


class SharedPrefixCache(DynamicCache):
    """The cache of a model's layers for `repeats` samples of each prompt; `slots` are the live
    rows' places in the `[prompts * repeats]` grid (None while every row is live)."""

    def __init__(self, n_layers: int, capacity: int, repeats: int) -> None:
        super().__init__()
        self.layers = [_Layer(capacity, repeats) for _ in range(n_layers)]
        self.repeats = repeats
        self.slots: torch.Tensor | None = None

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.slots = indices if self.slots is None else self.slots[indices]
        for layer in self.layers:
            layer.batch_select_indices(indices)


def supports(model: nn.Module) -> bool:
    cfg = getattr(model, "config", None)
    return (
        cfg is not None
        and getattr(cfg, "model_type", None) in MODEL_TYPES
        and not getattr(cfg, "sliding_window", None)
        and set(getattr(cfg, "layer_types", None) or ["full_attention"]) == {"full_attention"}
        and getattr(cfg, "_attn_implementation", None) in REPLACES
        and bool(getattr(cfg, "num_hidden_layers", 0))
    )


@contextmanager
def enabled(model: nn.Module) -> Iterator[None]:
    """The model attends with `shared_prefix_attention` inside the block."""
    cfg = model.config
    before = cfg._attn_implementation
    cfg._attn_implementation = NAME
    try:
        yield
    finally:
        cfg._attn_implementation = before


def _to_grid(x: torch.Tensor, slots: torch.Tensor | None, rows: int) -> torch.Tensor:
    """Rows `[N, ...]` in their places of a `[rows, ...]` grid (zeros where a row has left)."""
    if slots is None:
        return x
    return x.new_zeros((rows, *x.shape[1:])).index_copy_(0, slots, x)


def shared_prefix_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    shared_prefix: SharedPrefixCache | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention signature. `query [N, H, 1, D]` of a decoding step attends to its
    prompt's keys (held once per prompt in `shared_prefix`) and to `key` / `value`, its own
    generated positions; a pass over several positions (the prompts) is SDPA's."""
    if query.shape[2] != 1:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    if shared_prefix is None:
        raise RuntimeError(
            f"{NAME}: a decoding step without its cache (the model's forward must pass keyword "
            "arguments on to its attention)"
        )
    layer = shared_prefix.layers[module.layer_idx]
    pk, pv, slots = layer.pk, layer.pv, shared_prefix.slots
    b, hkv, tp, d = pk.shape
    n, h = query.shape[:2]
    g, r = h // hkv, shared_prefix.repeats
    scale = scaling if scaling is not None else d**-0.5
    q = query[:, :, 0]  # [N, H, D]
    # the prompt part: a prompt's samples are K * G queries against its keys, read once
    qg = _to_grid(q, slots, b * r).view(b, r, hkv, g, d).transpose(1, 2).reshape(b, hkv, r * g, d)
    sp = torch.matmul(qg, pk.transpose(-1, -2)).view(b, hkv, r, g, tp).transpose(1, 2)
    sp = sp.reshape(b * r, h, tp)
    if slots is not None:
        sp = sp[slots]
    # the generated part: each row against its own positions
    ts = key.shape[-2]
    ss = torch.matmul(q.view(n, hkv, g, d), key.transpose(-1, -2)).reshape(n, h, ts)
    s = torch.cat([sp, ss], -1).float().mul_(scale)
    if attention_mask is not None:
        m = attention_mask[:, :1, -1, :]  # [N, 1, Tp + Ts]: the mask of this step's query
        s = s.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else s + m
    p = s.softmax(-1).to(value.dtype)
    pg = _to_grid(p[..., :tp], slots, b * r).view(b, r, hkv, g, tp).transpose(1, 2)
    op = torch.matmul(pg.reshape(b, hkv, r * g, tp), pv).view(b, hkv, r, g, -1).transpose(1, 2)
    op = op.reshape(b * r, h, -1)
    if slots is not None:
        op = op[slots]
    os_ = torch.matmul(p[..., tp:].reshape(n, hkv, g, ts), value).reshape(n, h, -1)
    return (op + os_)[:, None], None


AttentionInterface.register(NAME, shared_prefix_attention)
AttentionMaskInterface.register(NAME, sdpa_mask)
