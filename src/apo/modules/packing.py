"""The sequences of one item share their prompt: run it once (prefix sharing).

An item's k sequences (a preference pair, a golden answer and the policy's samples, one prompt's
samples) all begin with the same prompt. Run as k separate rows, every layer computes the
prompt k times. Packed, an item is one row: its common prefix once, then each sequence's own
tokens, with a block attention mask (a token of sequence j sees the prefix and the earlier
tokens of sequence j, nothing else) and the positions each token has in its own sequence, so
every hidden state is the one the separate rows give (within float rounding, tested). The
hidden states are then laid out again as `[rows, T, h]`, so the heads and losses downstream
do not change. As in "Accelerating Direct Preference Optimization with Prefix Sharing" (Wang et
al. 2024), here for every listwise batch of both players.

Packing pays when the prefix is long against the rest: the projections and MLPs see
`prefix + sum of the suffixes` tokens instead of `k x T`, while attention grows to the packed
length squared. `hidden_states` estimates both costs from the model's shape and packs only when
that is cheaper; a model whose attention cannot take a custom mask (FlashAttention) is run as
rows.
"""

from __future__ import annotations

import torch
from torch import nn

#: attention implementations that take a 4D mask: bool (True = attend) or additive
_BOOL_MASK, _ADDITIVE_MASK = {"sdpa", "flex_attention"}, {"eager"}
#: pack when its estimated cost is below this share of the rows' cost
GAIN = 0.9


def common_prefix(ids: torch.Tensor, att: torch.Tensor) -> torch.Tensor:
    """`[B]` length of the prefix shared by every non-empty sequence of each item of right-padded
    `ids, att [B, k, T]` (0 for an item without a sequence)."""
    lengths = att.sum(-1)
    valid = lengths > 0
    first = valid.float().argmax(1)
    ref = ids[torch.arange(ids.shape[0]), first]  # [B, T]: a sequence of the item
    same = (ids == ref[:, None]) | ~valid[..., None]
    shortest = lengths.masked_fill(~valid, ids.shape[-1]).min(1).values
    inside = torch.arange(ids.shape[-1], device=ids.device)[None] < shortest[:, None]
    agree = same.all(1) & inside & valid.any(1, keepdim=True)
    return agree.long().cumprod(-1).sum(-1)


class Packing:
    """The packed layout of `[B, k, T]` right-padded sequences: `ids, positions [B, L]`, the
    block mask `[B, 1, L, L]` and, per row and position, where its token sits in the pack."""

    def __init__(self, ids: torch.Tensor, att: torch.Tensor) -> None:
        B, k, T = ids.shape
        dev = ids.device
        lengths = att.sum(-1)  # [B, k]
        prefix = common_prefix(ids, att)  # [B]
        own = (lengths - prefix[:, None]).clamp(min=0)  # each sequence's tokens after the prefix
        offset = own.cumsum(1) - own  # where each sequence's own tokens start after the prefix
        self.length = prefix + own.sum(1)  # [B]
        L = int(self.length.max().clamp(min=1))
        t = torch.arange(T, device=dev)[None, None]  # [1, 1, T]
        p = prefix[:, None, None]
        where = torch.where(t < p, t, p + offset[..., None] + (t - p))
        real = t < lengths[..., None]  # [B, k, T]
        self.where = torch.where(real, where, torch.zeros_like(where)).clamp(max=L - 1)
        b = torch.arange(B, device=dev)[:, None, None].expand(B, k, T)
        self.ids = torch.zeros((B, L), dtype=ids.dtype, device=dev)
        self.ids[b[real], self.where[real]] = ids[real]
        self.positions = torch.zeros((B, L), dtype=torch.long, device=dev)
        self.positions[b[real], self.where[real]] = t.expand(B, k, T)[real]
        # the sequence each packed token belongs to: -1 the prefix, j its own, k padding
        seq = torch.full((B, L), k, dtype=torch.long, device=dev)
        rows = torch.arange(k, device=dev)[None, :, None].expand(B, k, T)
        own_tok = real & (t >= p)
        seq[b[own_tok], self.where[own_tok]] = rows[own_tok]
        pre = torch.arange(L, device=dev)[None] < prefix[:, None]
        seq = seq.masked_fill(pre, -1)
        i = torch.arange(L, device=dev)
        causal = i[None, :] <= i[:, None]  # [L(query), L(key)]
        sees = (seq[:, None, :] == -1) | (seq[:, None, :] == seq[:, :, None])
        pad = seq == k
        self.mask = (causal[None] & sees & ~pad[:, None, :]) | torch.eye(
            L, dtype=torch.bool, device=dev
        )
        self.mask = self.mask[:, None]  # [B, 1, L, L]; a padding token sees itself (no empty row)
        self.shape = (B, k, T)

    def unpack(self, hidden: torch.Tensor) -> torch.Tensor:
        """Packed hidden states `[B, L, h]` -> the rows' `[B * k, T, h]`."""
        B, k, T = self.shape
        idx = self.where.reshape(B, k * T, 1).expand(-1, -1, hidden.shape[-1])
        return hidden.gather(1, idx).view(B * k, T, hidden.shape[-1])


def _costs(cfg, rows_tokens: int, rows_pairs: int, pack_tokens: int, pack_pairs: int):
    """Multiply-adds of the rows and of the pack: projections and MLP per token, attention per
    query-key pair."""
    h = cfg.hidden_size
    heads = cfg.num_attention_heads
    d = getattr(cfg, "head_dim", None) or h // heads
    kv = getattr(cfg, "num_key_value_heads", None) or heads
    inter = getattr(cfg, "intermediate_size", None) or 4 * h
    per_token = 2 * h * heads * d + 2 * h * kv * d + 3 * h * inter
    per_pair = 2 * heads * d
    return (
        rows_tokens * per_token + rows_pairs * per_pair,
        pack_tokens * per_token + pack_pairs * per_pair,
    )


def _mask_kind(decoder: nn.Module) -> str | None:
    impl = getattr(getattr(decoder, "config", None), "_attn_implementation", None)
    return "bool" if impl in _BOOL_MASK else "additive" if impl in _ADDITIVE_MASK else None


def hidden_states(
    decoder: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, group: int = 1
) -> torch.Tensor:
    """The decoder's last hidden states `[N, T, h]` of right-padded rows `[N, T]` whose rows come
    in items of `group` consecutive rows sharing their prompt: packed per item where that is
    cheaper (and the attention takes a custom mask), else row by row."""
    N, T = input_ids.shape
    kind = _mask_kind(decoder)
    if group > 1 and N % group == 0 and kind is not None:
        ids, att = input_ids.view(-1, group, T), attention_mask.view(-1, group, T)
        pack = Packing(ids, att)
        L = pack.ids.shape[1]
        rows, packed = _costs(
            decoder.config, N * T, N * T * T, ids.shape[0] * L, ids.shape[0] * L * L
        )
        if packed < GAIN * rows:
            mask = pack.mask
            if kind == "additive":
                dtype = next(decoder.parameters()).dtype
                mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
                    ~mask, torch.finfo(dtype).min
                )
            out = decoder(input_ids=pack.ids, attention_mask=mask, position_ids=pack.positions)
            return pack.unpack(out[0])
    return decoder(input_ids=input_ids, attention_mask=attention_mask)[0]
