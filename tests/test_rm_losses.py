"""RM losses against values worked out by hand."""

import math

import pytest
import torch

from apo.losses.rm import RM_LOSSES, apo_diff, apo_ranking, bradley_terry, reward_centering


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


def test_bradley_terry_margin():
    r = torch.tensor([[2.0, 0.5]])
    s = torch.tensor([[1.0, 0.0]])
    m = torch.ones(1, 2, dtype=torch.bool)
    # -log sigmoid(2 - 0.5 - 1)
    assert bradley_terry(r, s, m, margin=1.0).item() == pytest.approx(nls(0.5), rel=1e-6)


def test_bradley_terry_margin_listwise_masking_and_ties():
    # the same pairs as the listwise test above, each gap lowered by the margin 0.5
    r = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 100.0]])
    s = torch.tensor([[3.0, 2.0, 2.0], [1.0, 0.0, -5.0]])
    m = torch.tensor([[True, True, True], [True, True, False]])
    expected = (nls(0.5) + nls(-1.5) + nls(-1.5)) / 3
    assert bradley_terry(r, s, m, margin=0.5).item() == pytest.approx(expected, rel=1e-6)


def test_non_finite_padding_does_not_leak():
    r = torch.tensor([[2.0, 0.5, math.nan]], requires_grad=True)
    s = torch.tensor([[1.0, 0.0, 5.0]])
    m = torch.tensor([[True, True, False]])
    for fn in (bradley_terry, apo_ranking, apo_diff):
        loss = fn(r, s, m)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(r.grad).all()
    assert reward_centering(r, m).item() == pytest.approx(2.5**2)


def test_apo_ranking_margin():
    # as in test_apo_ranking_sums_over_samples_and_averages_over_items, gaps lowered by 0.5:
    # item 0: nls(0.5) + nls(1.5) + nls(-1.5) ; item 1: nls(-1.0)
    r = torch.tensor([[2.0, 1.0, 0.0, 3.0], [0.0, 0.5, 9.0, 0.0]])
    s = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    m = torch.tensor([[True, True, True, True], [True, True, False, False]])
    expected = ((nls(0.5) + nls(1.5) + nls(-1.5)) + nls(-1.0)) / 2
    assert apo_ranking(r, s, m, margin=0.5).item() == pytest.approx(expected, rel=1e-6)


def test_apo_diff_margin_shifts_value_not_gradient():
    r = torch.tensor([[2.0, 1.0, -1.0], [0.0, 0.5, 0.0]], requires_grad=True)
    s = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    m = torch.tensor([[True, True, True], [True, True, False]])
    # item 0: -(1 - 0.5) - (3 - 0.5) = -3 ; item 1: -(-0.5 - 0.5) = 1 ; mean -1
    loss = apo_diff(r, s, m, margin=0.5)
    assert loss.item() == pytest.approx(-1.0, rel=1e-6)
    (g_margin,) = torch.autograd.grad(loss, r)
    (g_plain,) = torch.autograd.grad(apo_diff(r, s, m), r)
    assert torch.equal(g_margin, g_plain)


def test_reward_centering_squares_row_sums():
    r = torch.tensor([[1.0, -3.0, 5.0], [2.0, 0.5, 9.0], [4.0, 4.0, 4.0]], requires_grad=True)
    m = torch.tensor([[True, True, True], [True, False, False], [False, False, False]])
    # row sums over valid items: 1 - 3 + 5 = 3 and 2 ; the empty row is not counted
    # (3^2 + 2^2) / 2 = 6.5 ; d/dr = 2 * sum / 2 rows -> 3 on row 0, 2 on row 1's valid item
    loss = reward_centering(r, m)
    assert loss.item() == pytest.approx(6.5)
    loss.backward()
    expected = torch.tensor([[3.0, 3.0, 3.0], [2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert torch.allclose(r.grad, expected)


def test_reward_centering_pair_is_squared_sum_and_ignores_the_gap():
    m = torch.ones(1, 2, dtype=torch.bool)
    # (1.5 + -0.5)^2 = 1 ; the same mean with a wider gap costs the same
    assert reward_centering(torch.tensor([[1.5, -0.5]]), m).item() == pytest.approx(1.0)
    assert reward_centering(torch.tensor([[10.5, -9.5]]), m).item() == pytest.approx(1.0)


@pytest.mark.parametrize("name", sorted(RM_LOSSES))
@pytest.mark.parametrize("margin", [0.0, 0.7])
def test_every_rm_loss_is_finite_and_has_gradient(name, margin):
    g = torch.Generator().manual_seed(0)
    r = torch.randn(5, 4, generator=g).requires_grad_()
    s = torch.randint(0, 3, (5, 4), generator=g).float()
    s[:, 0] = 5.0  # at least one strict pair per row
    m = torch.ones(5, 4, dtype=torch.bool)
    m[2, 3] = False
    loss = RM_LOSSES[name](r, s, m, margin=margin)
    loss.backward()
    assert torch.isfinite(loss) and r.grad.abs().sum() > 0 and r.grad[2, 3] == 0


def test_rm_objective_reports_chosen_and_rejected_rewards():
    """The RM's Bradley-Terry pairs and its APO items under TRL's RewardTrainer names."""
    from apo.losses.rm_objective import RMObjective

    objective = RMObjective(
        kl_coeff=1.0,
        apo_coeff=1.0,
        apo_loss="ranking",
        samples_per_prompt=2,
        human_loss="bradley_terry",
        margin=0.0,
        centering_coeff=0.0,
        weighting="per_part",
    )
    r_human = torch.tensor([[1.0, -1.0], [0.0, 0.5]])  # the second pair is ranked wrongly
    human_scores = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    r_apo = torch.tensor([[2.0, 1.0, 3.0]])  # golden first, one sample above it
    _, parts = objective.loss(
        r_human,
        human_scores,
        torch.ones(2, 2),
        r_apo,
        torch.tensor([[1.0, 0.0, 0.0]]),
        torch.ones(1, 3),
    )
    assert parts["rewards/chosen"].item() == pytest.approx(0.5)
    assert parts["rewards/rejected"].item() == pytest.approx(-0.25)
    assert parts["rewards/margins"].item() == pytest.approx(0.75)
    assert parts["rewards/accuracies"].item() == pytest.approx(0.5)
    assert parts["apo/rewards/chosen"].item() == pytest.approx(2.0)
    assert parts["apo/rewards/rejected"].item() == pytest.approx(2.0)
    assert parts["apo/rewards/accuracies"].item() == pytest.approx(0.5)
