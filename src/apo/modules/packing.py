"""Sequences packed into rows: an item's shared prompt run once, and no padding.

An item's k sequences (a preference pair, a golden answer and the policy's samples, one prompt's
samples) all begin with the same prompt. Run as k separate rows, every layer computes the prompt
k times, and every row is padded to the batch's longest. Packed, an item is its common prefix
once, then each sequence's own tokens; several items share a row, one after the other. A block
attention mask lets a token see only the earlier tokens of its own item's prefix and its own
sequence, and every token keeps the position it has in its own sequence, so each hidden state
is the one the separate rows give (within float rounding, tested). The hidden states are laid
out again as `[rows, T, h]`, so heads and losses downstream do not change. Prefix sharing as in
"Accelerating Direct Preference Optimization with Prefix Sharing" (Wang et al. 2024), with the
padding-free packing of several sequences per row that SFT trainers use, for every listwise
batch of both players (a warm-start demonstration is an item of one sequence).

The projections and MLPs then see the distinct tokens only, while attention grows with the
square of the packed rows' length. `hidden_states` estimates both costs from the model's shape
for rows of 1 to 8 times the longest item (`ROW_SIZES`) and packs with the cheapest, when that is
cheaper than the plain rows; a model whose attention cannot take a custom mask (FlashAttention)
runs the plain rows.
"""

from __future__ import annotations

import torch
from torch import nn

from apo.modules.last_layer import last_layer_at

#: attention implementations that take a 4D mask: bool (True = attend) or additive
_BOOL_MASK, _ADDITIVE_MASK = {"sdpa", "flex_attention"}, {"eager"}
#: pack when its estimated cost is below this share of the plain rows' cost
GAIN = 0.9
#: packed rows of this many times the longest item are tried
#: (first fit leaves less padding at some length between 1x and 2x than at either end; the
#: finer steps there cut the default round's padded slots by 5 % and its attention by a third)
ROW_SIZES = (1, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.75, 2, 2.5, 3, 4, 8)


def common_prefix(ids: torch.Tensor, att: torch.Tensor) -> torch.Tensor:
    """`[B]` length of the prefix shared by every non-empty sequence of each item of right-padded
    `ids, att [B, k, T]` (0 for an item without a sequence; a whole sequence for an item of one)."""
    lengths = att.sum(-1)
    valid = lengths > 0
    first = valid.float().argmax(1)
    ref = ids[torch.arange(ids.shape[0]), first]  # [B, T]: a sequence of the item
    same = (ids == ref[:, None]) | ~valid[..., None]
    shortest = lengths.masked_fill(~valid, ids.shape[-1]).min(1).values
    inside = torch.arange(ids.shape[-1], device=ids.device)[None] < shortest[:, None]
    agree = same.all(1) & inside & valid.any(1, keepdim=True)
    return agree.long().cumprod(-1).sum(-1)


def item_lengths(att: torch.Tensor, prefix: torch.Tensor) -> list[int]:
    """Each item's distinct tokens: its shared prefix once, then every sequence's own tokens."""
    return (prefix + (att.sum(-1) - prefix[:, None]).clamp(min=0).sum(1)).tolist()


def first_fit(lengths: list[int], capacity: int) -> tuple[list[int], list[int]]:
    """Each item's row and its start in the row: first fit, longest items first."""
    rows: list[int] = []  # filled length of each row
    row, start = [0] * len(lengths), [0] * len(lengths)
    for b in sorted(range(len(lengths)), key=lambda b: -lengths[b]):
        r = next((i for i, used in enumerate(rows) if used + lengths[b] <= capacity), None)
        if r is None:
            r = len(rows)
            rows.append(0)
        row[b], start[b] = r, rows[r]
        rows[r] += lengths[b]
    return row, start


def rows_of(item_length: list[int], capacity: int) -> tuple[list[int], list[int], int, int]:
    """Each item's row and start, the number of rows and their length, rows of at most
    `capacity` tokens (at least the longest item)."""
    cap = max(max(item_length, default=1), capacity, 1)
    row, start = first_fit(item_length, cap)
    n_rows = max(row, default=0) + 1
    fill = [0] * n_rows
    for b, r in enumerate(row):
        fill[r] = max(fill[r], start[b] + item_length[b])
    return row, start, n_rows, max(max(fill), 1)


class Packing:
    """The packed layout of `[B, k, T]` right-padded sequences: `ids, positions [R, L]`, the
    block mask `[R, 1, L, L]` and where each sequence's token sits in the rows.

    `item_length` (each item's distinct tokens) and its `prefix` are computed when not given;
    `capacity` is the rows' length (at least the longest item's)."""

    def __init__(
        self,
        ids: torch.Tensor,
        att: torch.Tensor,
        capacity: int = 0,
        prefix: torch.Tensor | None = None,
    ) -> None:
        B, k, T = ids.shape
        dev = ids.device
        lengths = att.sum(-1)  # [B, k]
        prefix = common_prefix(ids, att) if prefix is None else prefix  # [B]
        own = (lengths - prefix[:, None]).clamp(min=0)  # each sequence's tokens after the prefix
        offset = own.cumsum(1) - own  # where each sequence's own tokens start after the prefix
        self.item_length = item_lengths(att, prefix)
        row, start, n_rows, L = rows_of(self.item_length, capacity)
        row_t = torch.tensor(row, device=dev)[:, None, None]
        start_t = torch.tensor(start, device=dev)[:, None, None]
        t = torch.arange(T, device=dev)[None, None]  # [1, 1, T]
        p = prefix[:, None, None]
        inside = torch.where(t < p, t, p + offset[..., None] + (t - p))  # within the item
        real = t < lengths[..., None]  # [B, k, T]
        flat = row_t * L + start_t + inside  # [B, k, T]: place in the flattened rows
        self.where = torch.where(real, flat, torch.zeros_like(flat)).clamp(max=n_rows * L - 1)
        at = self.where[real]
        self.ids = torch.zeros(n_rows * L, dtype=ids.dtype, device=dev)
        self.ids[at] = ids[real]
        self.positions = torch.zeros(n_rows * L, dtype=torch.long, device=dev)
        self.positions[at] = t.expand(B, k, T)[real]
        # each packed token's item (-1: padding) and sequence (-1: its item's prefix)
        item = torch.full((n_rows * L,), -1, dtype=torch.long, device=dev)
        item[at] = torch.arange(B, device=dev)[:, None, None].expand(B, k, T)[real]
        seq = torch.full((n_rows * L,), -1, dtype=torch.long, device=dev)
        own_tok = real & (t >= p)
        seq[self.where[own_tok]] = torch.arange(k, device=dev)[None, :, None].expand(B, k, T)[
            own_tok
        ]
        self.ids, self.positions = self.ids.view(n_rows, L), self.positions.view(n_rows, L)
        item, seq = item.view(n_rows, L), seq.view(n_rows, L)
        i = torch.arange(L, device=dev)
        causal = i[None, :] <= i[:, None]  # [L(query), L(key)]
        same_item = (item[:, None, :] == item[:, :, None]) & (item[:, None, :] >= 0)
        sees = (seq[:, None, :] == -1) | (seq[:, None, :] == seq[:, :, None])
        diagonal = torch.eye(L, dtype=torch.bool, device=dev)  # a padding token sees itself
        self.mask = ((causal[None] & same_item & sees) | diagonal)[:, None]  # [R, 1, L, L]
        self.shape = (B, k, T)

    def marks(self, keep: torch.Tensor) -> torch.Tensor:
        """Positions marked in the rows' `[B * k, T]` -> the same marks in the packed `[R, L]`."""
        B, k, T = self.shape
        packed = torch.zeros(self.ids.numel(), dtype=torch.bool, device=keep.device)
        packed[self.where.view(B * k, T)[keep]] = True
        return packed.view(self.ids.shape)

    def unpack(self, hidden: torch.Tensor) -> torch.Tensor:
        """Packed hidden states `[R, L, h]` -> the rows' `[B * k, T, h]`."""
        B, k, T = self.shape
        h = hidden.shape[-1]
        idx = self.where.reshape(B * k * T, 1).expand(-1, h)
        return hidden.reshape(-1, h).gather(0, idx).view(B * k, T, h)


def _unit_costs(cfg) -> tuple[int, int]:
    """Multiply-adds per token (projections, MLP) and per query-key pair (attention)."""
    h = cfg.hidden_size
    heads = cfg.num_attention_heads
    d = getattr(cfg, "head_dim", None) or h // heads
    kv = getattr(cfg, "num_key_value_heads", None) or heads
    inter = getattr(cfg, "intermediate_size", None) or 4 * h
    return 2 * h * heads * d + 2 * h * kv * d + 3 * h * inter, 2 * heads * d


def _mask_kind(decoder: nn.Module) -> str | None:
    impl = getattr(getattr(decoder, "config", None), "_attn_implementation", None)
    return "bool" if impl in _BOOL_MASK else "additive" if impl in _ADDITIVE_MASK else None


def plan(cfg, ids: torch.Tensor, att: torch.Tensor) -> Packing | None:
    """The cheapest packing of `[B, k, T]` sequences, or None when the plain rows cost less."""
    per_token, per_pair = _unit_costs(cfg)
    B, k, T = ids.shape
    prefix = common_prefix(ids, att)
    item_length = item_lengths(att, prefix)
    longest = max(max(item_length), 1)
    best, best_cost = None, GAIN * B * k * T * (per_token + T * per_pair)
    for capacity in sorted({int(m * longest) for m in ROW_SIZES}):  # (short items: repeats)
        _, _, R, L = rows_of(item_length, capacity)
        cost = R * L * (per_token + L * per_pair)
        if cost < best_cost:
            best, best_cost = capacity, cost
        if R == 1:
            break
    return None if best is None else Packing(ids, att, best, prefix)


def hidden_states(
    decoder: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    group: int = 1,
    keep: torch.Tensor | None = None,
) -> torch.Tensor:
    """The decoder's last hidden states `[N, T, h]` of right-padded rows `[N, T]`, whose rows come
    in items of `group` consecutive rows sharing their prompt: packed where that is cheaper
    (and the attention takes a custom mask), else as they are. With `keep [N, T]`, only the
    positions it marks are read: the last layer may leave the others zero
    (`apo.modules.last_layer`)."""
    N, T = input_ids.shape
    kind = _mask_kind(decoder)
    if N % group == 0 and kind is not None:
        ids, att = input_ids.view(-1, group, T), attention_mask.view(-1, group, T)
        pack = plan(decoder.config, ids, att)
        if pack is not None:
            mask = pack.mask
            if kind == "additive":
                dtype = next(decoder.parameters()).dtype
                mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
                    ~mask, torch.finfo(dtype).min
                )
            with last_layer_at(decoder, None if keep is None else pack.marks(keep)):
                out = decoder(
                    input_ids=pack.ids,
                    attention_mask=mask,
                    position_ids=pack.positions,
                    use_cache=False,
                )
            return pack.unpack(out[0])
    with last_layer_at(decoder, keep):
        return decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)[0]
