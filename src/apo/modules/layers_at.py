"""Decoder layers computed only at the tokens that exist and the positions that are read.

Packed rows (`apo.modules.packing`) hold each item's distinct tokens once, and some padding at
the end of each row. A layer's projections and MLP act on each token alone, so they need not
run on that padding: `layers_at(decoder, tokens, keep)` makes every layer gather the `tokens`
(the packed rows' real positions) into one flat `[N, h]` batch for its norms, projections,
rotary embedding and MLP, and lay its queries, keys and values out in the rows only for the
attention. The residual stream between layers stays in the rows (zero at the padding, which no
real token attends to).

The last layer's output is read at few positions: a reward model reads one hidden state per
sequence (its pooled token); a policy's log-likelihoods read the positions that predict a
response token. Every earlier layer must run at every token (later tokens attend to their keys
and values), but the last layer's output elsewhere is wasted: there, only its keys and values
are needed. With `keep`, the last layer computes its queries, attention, output projection and
MLP only at the `keep` positions (the rest of its output is zero); the decoder's final norm is
per token, so the hidden states at `keep` are the full computation's (within float rounding,
tested). Rows that are not packed (`tokens` None) switch only the last layer.

The layers' own submodules are called (a sharded engine's hooks and LoRA adapters run as in the
full layer); the arithmetic between them is the llama family's (pre-norm attention with rotary
embeddings, optional per-head q/k norms, then the pre-norm MLP), so only the model types
`apo.modules.shared_prefix.supports` lists are switched. A layer called with a cache, attention
dropout in training, or a layer whose parts are not its own (FSDP1's wrapper) runs as it is.
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


def _heads(x: torch.Tensor, d: int, norm: nn.Module | None) -> torch.Tensor:
    """`[..., H * D]` -> `[..., H, D]`, each head normed where the model does so."""
    x = x.view(*x.shape[:-1], -1, d)
    return x if norm is None else norm(x)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of `x [..., H, D]` with `cos, sin [..., D]` (the llama family's, taken
    at each token's own position)."""
    return x * cos[..., None, :] + rotate_half(x) * sin[..., None, :]


def _forward_at(
    layer: nn.Module,
    tokens: torch.Tensor | None,
    keep: torch.Tensor | None,
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
    past_key_values: Any = None,
    **kwargs: Any,
) -> torch.Tensor:
    """The layer at `tokens` (flat indices into the `R * L` positions; None: all), its output
    only where `keep [R, L]` (None: at every token)."""
    attn = layer.self_attn
    R, L, h = hidden_states.shape
    dropout = layer.training and getattr(attn, "attention_dropout", 0.0)
    if (
        past_key_values is not None
        or dropout
        or position_embeddings is None
        or (keep is not None and keep.shape != (R, L))
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
    d, dev = attn.head_dim, hidden_states.device

    def scatter(t: torch.Tensor) -> torch.Tensor:
        """Per-token values `[N, ...]` -> `[R * L, ...]`, zero where there is no token."""
        if tokens is None:
            return t
        return t.new_zeros(R * L, *t.shape[1:]).index_put((tokens,), t)

    def grid(t: torch.Tensor) -> torch.Tensor:
        """`[N, H, D]` -> `[R, H, L, D]` for the attention."""
        return scatter(t).view(R, L, *t.shape[1:]).transpose(1, 2)

    flat = hidden_states.reshape(R * L, h)
    res = flat if tokens is None else flat[tokens]  # [N, h]
    cos, sin = (t.expand(R, L, d).reshape(R * L, d) for t in position_embeddings)
    cos_n, sin_n = (cos, sin) if tokens is None else (cos[tokens], sin[tokens])
    x = layer.input_layernorm(res)
    k = _rotate(_heads(attn.k_proj(x), d, getattr(attn, "k_norm", None)), cos_n, sin_n)
    v = _heads(attn.v_proj(x), d, None)
    if keep is None:  # every token's output (a layer before the last)
        q = _rotate(_heads(attn.q_proj(x), d, getattr(attn, "q_norm", None)), cos_n, sin_n)
        q, mask, at = grid(q), attention_mask, None
        if mask is None:
            mask = torch.ones(L, L, dtype=torch.bool, device=dev).tril()[None, None]
    else:  # the positions read: each row's kept positions first (in order), then fillers
        counts = keep.sum(1)
        Q = max(int(counts.max()), 1)
        idx = torch.sort((~keep).to(torch.uint8), dim=1, stable=True).indices[:, :Q]  # [R, Q]
        at = torch.arange(R, device=dev)[:, None] * L + idx  # [R, Q] flat positions
        valid = torch.arange(Q, device=dev)[None] < counts[:, None]
        q = _heads(attn.q_proj(scatter(x)[at]), d, getattr(attn, "q_norm", None))
        q = _rotate(q, cos[at], sin[at]).transpose(1, 2)  # [R, H, Q, D]
        if attention_mask is None:  # plain causal rows
            mask = torch.arange(L, device=dev)[None, None] <= idx[..., None]
        else:
            mask = attention_mask.expand(R, -1, L, L)[:, 0].reshape(R * L, L)[at]  # [R, Q, L]
        mask = mask[:, None]
    if mask.is_floating_point():  # additive (eager); SDPA takes it in the queries' dtype
        mask = mask.to(q.dtype)
    o = F.scaled_dot_product_attention(
        q, grid(k), grid(v), attn_mask=mask, scale=attn.scaling, enable_gqa=k.shape[1] != q.shape[1]
    ).transpose(1, 2)  # [R, L or Q, H, D]
    if at is None:
        o = o.reshape(R * L, -1)
        out = res + attn.o_proj(o if tokens is None else o[tokens])
        out = out + layer.mlp(layer.post_attention_layernorm(out))
        return scatter(out).view(R, L, h)
    out = flat[at] + attn.o_proj(o.reshape(R, at.shape[1], -1))
    out = out + layer.mlp(layer.post_attention_layernorm(out))
    return flat.new_zeros(R * L, h).index_put((at[valid],), out[valid]).view(R, L, h)


@contextmanager
def layers_at(
    decoder: nn.Module, tokens: torch.Tensor | None, keep: torch.Tensor | None
) -> Iterator[None]:
    """Inside the block, every layer of `decoder` computes only at `tokens` (flat indices into
    the `[R, L]` rows it is called with; None: every layer as it is but the last) and the last
    layer's output only where `keep [R, L]` is True (None: everywhere). As it is for a model not
    of the llama family."""
    layers = list(getattr(decoder, "layers", None) or [])
    chosen = layers if tokens is not None else layers[-1:] if keep is not None else []
    chosen = [layer for layer in chosen if set(layer._modules) >= _PARTS]
    if not chosen or not supports(decoder):
        yield  # (a wrapper around a layer, e.g. FSDP1's, would not gather for its parts)
        return
    for layer in chosen:
        last = layer is layers[-1]
        layer.forward = partial(_forward_at, layer, tokens, keep if last else None)
    try:
        yield
    finally:
        for layer in chosen:
            del layer.forward
