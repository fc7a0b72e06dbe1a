"""Policy objectives against values worked out by hand."""

import math

import pytest
import torch

from apo.losses.pairs import best_worst
from apo.losses.policy import POLICY_OBJECTIVES, dpo, rjs, sft


def nls(x: float) -> float:
    return math.log1p(math.exp(-x))


def test_sft_token_mean():
    logps = torch.tensor([[-4.0, -6.0]])
    lengths = torch.tensor([[2.0, 3.0]])
    mask = torch.tensor([[True, False]])
    loss, _ = sft(logps, None, torch.zeros(1, 2), mask, lengths)
    assert loss.item() == pytest.approx(4.0 / 2.0)


def test_rjs_takes_best_valid_item_per_row():
    logps = torch.tensor([[-1.0, -10.0, -3.0], [-2.0, -8.0, -100.0]])
    lengths = torch.tensor([[1.0, 5.0, 3.0], [2.0, 4.0, 50.0]])
    # row 0: best is column 1 (score 0.9); row 1: column 2 would win but is masked -> column 1
    scores = torch.tensor([[0.1, 0.9, 0.5], [0.2, 0.3, 9.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    loss, _ = rjs(logps, None, scores, mask, lengths)
    assert loss.item() == pytest.approx((10.0 + 8.0) / (5.0 + 4.0))


def test_dpo_best_vs_worst_with_k3():
    logps = torch.tensor([[-1.0, -2.0, -3.0]])
    ref = torch.tensor([[-1.5, -2.0, -2.0]])
    scores = torch.tensor([[0.5, 0.9, 0.1]])  # best = 1, worst = 2
    mask = torch.ones(1, 3, dtype=torch.bool)
    beta = 0.5
    # margin = (logp_w - ref_w) - (logp_l - ref_l) = (0) - (-1) = 1
    loss, stats = dpo(logps, ref, scores, mask, torch.ones(1, 3), beta=beta)
    assert loss.item() == pytest.approx(nls(beta * 1.0), rel=1e-6)
    assert stats["reward_acc"].item() == 1.0


def test_dpo_skips_tied_rows_and_masked_items():
    logps = torch.tensor([[-1.0, -2.0, 0.0], [-1.0, -1.0, -1.0]])
    ref = torch.zeros(2, 3)
    # row 0: column 2 masked, best 0 vs worst 1 -> margin = -1 - (-2) = 1
    # row 1: all scores tie -> no preference, skipped
    scores = torch.tensor([[0.7, 0.2, 5.0], [0.3, 0.3, 0.3]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    loss, _ = dpo(logps, ref, scores, mask, torch.ones(2, 3), beta=1.0)
    assert loss.item() == pytest.approx(nls(1.0), rel=1e-6)


def test_dpo_needs_reference():
    with pytest.raises(ValueError, match="reference"):
        dpo(torch.zeros(1, 2), None, torch.tensor([[1.0, 0.0]]), torch.ones(1, 2, dtype=torch.bool),
            torch.ones(1, 2))


def test_best_worst_single_valid_item_is_not_a_pair():
    best, worst, ok = best_worst(torch.tensor([[1.0, 2.0]]), torch.tensor([[True, False]]))
    assert best.item() == 0 and worst.item() == 0 and not ok.item()


def test_registry_metadata():
    assert POLICY_OBJECTIVES["rjs"].select == "best"
    assert POLICY_OBJECTIVES["dpo"].select == "best_worst" and POLICY_OBJECTIVES["dpo"].needs_reference
