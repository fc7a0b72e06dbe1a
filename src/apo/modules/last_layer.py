"""The last decoder layer computed only at the positions whose output is read.

A reward model reads one hidden state per sequence (its pooled token); a policy's log-likelihoods
read the positions that predict a response token. Every layer but the last must run at every
position (later positions attend to their keys and values), but the last layer's output at a
position no one reads is wasted: there, only its keys and values are needed, for the positions
that are read. `last_layer_at(decoder, keep)` makes the decoder's last layer compute its input
norm, keys and values everywhere and its queries, attention, output projection and MLP only at
the `keep` positions (the rest of its output is zero); the decoder's final norm is per token, so
the hidden states at `keep` are the full computation's (within float rounding, tested). With a
4-layer model this removes most of a quarter of the projections' and MLPs' work; with 32 layers,
most of a thirty-second.

The layer's own submodules are called (a sharded engine's hooks and LoRA adapters run as in the
full layer); the arithmetic between them is the llama family's (pre-norm attention with rotary
embeddings, optional per-head q/k norms, then the pre-norm MLP), so only the model types
`apo.modules.shared_prefix.supports` lists are switched. Any other model, a layer called with a
cache, or attention dropout in training run the layer as it is.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.llama.modeling_llama import rotate_half

from apo.modules.shared_prefix import supports

#: the decoder layer's own parts this module calls
_PARTS = {"self_attn", "mlp", "input_layernorm", "post_attention_layernorm"}


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of `x [R, H, Q, D]` with `cos, sin [R, Q, D]` (the llama family's:
    queries and keys here take it at different positions, so not `apply_rotary_pos_emb`)."""
    return x * cos[:, None] + rotate_half(x) * sin[:, None]


def _heads(x: torch.Tensor, d: int, norm: nn.Module | None) -> torch.Tensor:
    """`[R, Q, H * D]` -> `[R, H, Q, D]`, each head normed first where the model does so."""
    x = x.view(*x.shape[:2], -1, d)
    return (x if norm is None else norm(x)).transpose(1, 2)


def _forward_at(
    layer: nn.Module,
    keep: torch.Tensor,
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
    past_key_values: Any = None,
    **kwargs: Any,
) -> torch.Tensor:
    attn = layer.self_attn
    R, L, h = hidden_states.shape
    dropout = layer.training and getattr(attn, "attention_dropout", 0.0)
    if (
        past_key_values is not None
        or dropout
        or position_embeddings is None
        or keep.shape != (R, L)
        or position_embeddings[0].shape[-1] != attn.head_dim
    ):
        return type(layer).forward(
            layer,
            hidden_states,
            attention_mask=attention_mask,
            position_embeddings=position_embeddings,
            past_key_values=past_key_values,
            **kwargs,
        )
    counts = keep.sum(1)
    Q = max(int(counts.max()), 1)
    # each row's kept positions first (in order), then others that only pad the query rows
    idx = torch.sort((~keep).to(torch.uint8), dim=1, stable=True).indices[:, :Q]  # [R, Q]
    rows = torch.arange(R, device=keep.device)[:, None].expand(R, Q)
    valid = torch.arange(Q, device=keep.device)[None] < counts[:, None]
    d = attn.head_dim
    cos, sin = (t.expand(R, L, t.shape[-1]) for t in position_embeddings)
    x = layer.input_layernorm(hidden_states)
    k = _rotate(_heads(attn.k_proj(x), d, getattr(attn, "k_norm", None)), cos, sin)
    v = _heads(attn.v_proj(x), d, None)
    q = _heads(attn.q_proj(x[rows, idx]), d, getattr(attn, "q_norm", None))
    q = _rotate(q, cos[rows, idx], sin[rows, idx])
    if attention_mask is None:  # plain causal rows
        mask = torch.arange(L, device=keep.device)[None, None] <= idx[..., None]
    else:
        mask = attention_mask.expand(R, -1, L, L)[:, 0][rows, idx]  # [R, Q, L]
        if mask.is_floating_point():  # additive (eager); SDPA takes it in the queries' dtype
            mask = mask.to(q.dtype)
    o = F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask[:, None], scale=attn.scaling, enable_gqa=k.shape[1] != q.shape[1]
    )
    o = attn.o_proj(o.transpose(1, 2).reshape(R, Q, -1))
    out = hidden_states[rows, idx] + o
    out = out + layer.mlp(layer.post_attention_layernorm(out))
    return hidden_states.new_zeros(R, L, h).index_put((rows[valid], idx[valid]), out[valid])


@contextmanager
def last_layer_at(decoder: nn.Module, keep: torch.Tensor | None) -> Iterator[None]:
    """Inside the block, `decoder`'s last layer computes its output only where `keep [R, L]`
    (the rows the decoder is called with) is True; as it is where `keep` is None or the model
    is not of the llama family."""
    layers = getattr(decoder, "layers", None)
    last = layers[-1] if layers else None
    if keep is None or last is None or not supports(decoder) or not set(last._modules) >= _PARTS:
        yield  # (a wrapper around the layer, e.g. FSDP1's, would not gather for its parts)
        return
    last.forward = partial(_forward_at, last, keep)
    try:
        yield
    finally:
        del last.forward
