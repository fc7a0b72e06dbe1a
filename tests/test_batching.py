"""Prediction batches are sized in padded sequences and tokens, in item order."""

from __future__ import annotations

import pytest

from apo.data.batching import BatchedDataset, budget_batches


def test_batches_count_sequences_not_items():
    # 10 items of k = 4 sequences: a budget of 8 sequences is 2 items a batch
    batches = budget_batches([(4, 10)] * 10, max_seqs=8)
    assert batches == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]


def test_batches_count_padded_tokens_and_keep_the_order():
    sizes = [(2, 10), (2, 10), (2, 40), (2, 5), (2, 5), (2, 5)]
    batches = budget_batches(sizes, max_seqs=100, max_tokens=100)
    assert [i for b in batches for i in b] == list(range(len(sizes)))
    for b in batches:
        rows = len(b) * max(sizes[i][0] for i in b)
        assert rows * max(sizes[i][1] for i in b) <= 100 or len(b) == 1
    # the long item pads its neighbours: it stands alone
    assert [2] in batches


def test_an_item_over_budget_is_a_batch_of_its_own():
    assert budget_batches([(8, 10), (1, 10)], max_seqs=4) == [[0], [1]]
    with pytest.raises(ValueError, match="budgets"):
        budget_batches([(1, 1)], max_seqs=0)


def test_the_datamodule_loader_stays_within_the_budgets(tiny_cfg):
    from apo.game.loop import GameLoop

    game = GameLoop(tiny_cfg)
    dm = game.dm
    dm.batch_size["predict"], dm.batch_size["predict_tokens"] = 16, 200
    items = dm.human_items(dm.data.human_train[:50], "rm")
    loader = dm.listwise_loader(items, "score")
    assert isinstance(loader.dataset, BatchedDataset) and loader.dataset.num_items == 50
    seen = []
    for batch in loader:
        B, k, T = batch["input_ids"].shape
        assert B * k <= 16 and (B * k * T <= 200 or B == 1)
        seen += batch["index"].tolist()
    assert seen == list(range(50))
