"""Prediction batches sized by what they cost: sequences and padded tokens, not items.

A listwise item holds k sequences (k = 2 for a pair, K + 1 for an APO item), so a batch of N
items is `N * k` forward rows; counting items made a 1,024-item batch of scored samples 4,096
rows. `budget_batches` packs consecutive items (the order is kept, so predictions come back in
index order) while the padded batch stays within both budgets.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch.utils.data import Dataset


def budget_batches(
    sizes: Sequence[tuple[int, int]], max_seqs: int, max_tokens: int | None = None
) -> list[list[int]]:
    """Indices of consecutive items in batches of at most `max_seqs` padded sequences and
    `max_tokens` padded tokens; `sizes[i]` is item i's `(sequences, longest sequence)`. The
    collator pads a batch to `[B, k_max, T_max]`, and that is what the budgets count. An item
    over a budget on its own is a batch by itself."""
    if max_seqs < 1 or (max_tokens is not None and max_tokens < 1):
        raise ValueError(f"prediction budgets must be >= 1, got {max_seqs} and {max_tokens}")
    batches: list[list[int]] = []
    cur: list[int] = []
    k_max = t_max = 0
    for i, (k, t) in enumerate(sizes):
        k2, t2 = max(k_max, k), max(t_max, t)
        rows = (len(cur) + 1) * k2
        over = rows > max_seqs or (max_tokens is not None and rows * t2 > max_tokens)
        if cur and over:
            batches.append(cur)
            cur, k2, t2 = [], k, t
        cur.append(i)
        k_max, t_max = k2, t2
    if cur:
        batches.append(cur)
    return batches


class BatchedDataset(Dataset):
    """Items grouped into ready batches: a DataLoader with `batch_size=None` hands each group
    to its collator as one batch. Lightning (and `predict_gathered`) shard such a dataset over
    ranks batch by batch, with a padded `DistributedSampler`, so every rank runs the same number
    of batches."""

    def __init__(self, items: list[Any], batches: list[list[int]]) -> None:
        self.groups = [[items[i] for i in b] for b in batches]
        #: the items, for the check that every prediction came back
        self.num_items = len(items)

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, i: int) -> list[Any]:
        return self.groups[i]
