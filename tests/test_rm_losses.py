"""RM losses against values worked out by hand."""

import math

import pytest
import torch

from apo.losses.rm import RM_LOSSES, apo_diff, apo_ranking, bradley_terry


def nls(x: float) -> float:
    """-log sigmoid(x), by hand."""
    return math.log1p(math.exp(-x))


def test_bradley_terry_pair():
    r = torch.tensor([[2.0, 0.5]])
    s = torch.tensor([[1.0, 0.0]])
    m = torch.ones(1, 2, dtype=torch.bool)
    assert bradley_terry(r, s, m).item() == pytest.approx(nls(1.5), rel=1e-6)


def test_bradley_terry_listwise_masking_and_ties():
    # item 0: scores 3 > 2 = 2 (tie between items 1 and 2 is no pair) -> pairs (0,1), (0,2)
    # item 1: scores 1, 0, padding -> one pair (0,1); the masked column is ignored
    r = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 100.0]])
    s = torch.tensor([[3.0, 2.0, 2.0], [1.0, 0.0, -5.0]])
    m = torch.tensor([[True, True, True], [True, True, False]])
    expected = (nls(1.0) + nls(-1.0) + nls(-1.0)) / 3
    assert bradley_terry(r, s, m).item() == pytest.approx(expected, rel=1e-6)


def test_bradley_terry_no_pairs_is_zero_with_grad():
    r = torch.tensor([[1.0, 2.0]], requires_grad=True)
    loss = bradley_terry(r, torch.tensor([[1.0, 1.0]]), torch.ones(1, 2, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0 and r.grad is not None and torch.all(r.grad == 0)


def test_apo_ranking_sums_over_samples_and_averages_over_items():
    # item 0: gold 2 vs samples 1, 0, 3  -> nls(1) + nls(2) + nls(-1)
    # item 1: gold 0 vs samples 0.5 and a masked one -> nls(-0.5)
    r = torch.tensor([[2.0, 1.0, 0.0, 3.0], [0.0, 0.5, 9.0, 0.0]])
    s = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    m = torch.tensor([[True, True, True, True], [True, True, False, False]])
    expected = ((nls(1.0) + nls(2.0) + nls(-1.0)) + nls(-0.5)) / 2
    assert apo_ranking(r, s, m).item() == pytest.approx(expected, rel=1e-6)


def test_apo_diff_is_linear_gap():
    r = torch.tensor([[2.0, 1.0, -1.0], [0.0, 0.5, 0.0]])
    s = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    m = torch.tensor([[True, True, True], [True, True, False]])
    # item 0: -(1) - (3) = -4 ; item 1: -(-0.5) = 0.5 ; mean over items
    assert apo_diff(r, s, m).item() == pytest.approx((-4.0 + 0.5) / 2, rel=1e-6)


def test_apo_ranking_golden_need_not_be_first():
    r = torch.tensor([[1.0, 2.0]])
    s = torch.tensor([[0.0, 1.0]])
    m = torch.ones(1, 2, dtype=torch.bool)
    assert apo_ranking(r, s, m).item() == pytest.approx(nls(1.0), rel=1e-6)


def test_gradient_pushes_golden_up():
    r = torch.tensor([[0.0, 0.0]], requires_grad=True)
    apo_ranking(r, torch.tensor([[1.0, 0.0]]), torch.ones(1, 2, dtype=torch.bool)).backward()
    assert r.grad[0, 0] < 0 < r.grad[0, 1]


def test_registry_names():
    assert set(RM_LOSSES) == {"bradley_terry", "ranking", "diff"}
