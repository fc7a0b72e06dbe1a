"""The online RL losses against values worked out by hand (masking, ties, K > 2)."""

from __future__ import annotations

import math

import pytest
import torch

from apo.losses.rl import (
    clipped_policy_loss,
    clipped_value_loss,
    gae,
    group_advantages,
    kl_per_token,
    rloo_advantages,
)


def test_rloo_leave_one_out_by_hand_with_masking():
    r = torch.tensor([[1.0, 2.0, 6.0], [3.0, 5.0, 100.0], [4.0, 0.0, 0.0]])
    m = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    adv = rloo_advantages(r, m)
    # row 0: 1 - (2+6)/2 = -3, 2 - (1+6)/2 = -1.5, 6 - (1+2)/2 = 4.5
    assert adv[0].tolist() == pytest.approx([-3.0, -1.5, 4.5])
    # row 1: the masked 100 is nobody's baseline
    assert adv[1].tolist() == pytest.approx([-2.0, 2.0, 0.0])
    # row 2: one sample, no baseline
    assert adv[2].tolist() == [0.0, 0.0, 0.0]
    # advantages of a fully valid row sum to 0 (times K/(K-1) of the centred rewards)
    assert adv[0].sum().item() == pytest.approx(0.0, abs=1e-6)


def test_group_advantages_with_and_without_the_std_and_ties():
    r = torch.tensor([[1.0, 3.0, 5.0, 7.0], [2.0, 2.0, 2.0, 2.0]])
    m = torch.ones_like(r, dtype=torch.bool)
    std = math.sqrt(((1 - 4) ** 2 + 1 + 1 + 9) / 4)  # population std of 1, 3, 5, 7
    adv = group_advantages(r, m, scale=True, eps=0.0)
    assert adv[0].tolist() == pytest.approx([-3 / std, -1 / std, 1 / std, 3 / std])
    assert adv[1].tolist() == [0.0] * 4  # all ties: no signal (and no division by zero)
    assert group_advantages(r, m, scale=False)[0].tolist() == pytest.approx([-3.0, -1.0, 1.0, 3.0])
    m2 = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    assert group_advantages(r, m2, scale=False)[0].tolist() == pytest.approx([-1.0, 1.0, 0.0, 0.0])


def test_kl_estimators_by_hand():
    logp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])
    assert kl_per_token(logp, ref, "k1").tolist() == pytest.approx([0.5, -1.0])
    # k3 = (pi_ref/pi - 1) - log(pi_ref/pi) >= 0
    k3 = [math.exp(-0.5) - 1 + 0.5, math.exp(1.0) - 1 - 1.0]
    assert kl_per_token(logp, ref, "k3").tolist() == pytest.approx(k3)
    assert (kl_per_token(logp, ref, "k3") >= 0).all()
    with pytest.raises(ValueError, match="kl_estimator"):
        kl_per_token(logp, ref, "k2")


def test_gae_by_hand_with_padding():
    # one row of 3 real tokens then padding; gamma 0.9, lambda 0.5
    r = torch.tensor([[0.0, 0.0, 1.0, 7.0]])
    v = torch.tensor([[0.2, 0.4, 0.5, 9.0]])
    m = torch.tensor([[1, 1, 1, 0]], dtype=torch.bool)
    adv, ret = gae(r, v, m, gamma=0.9, lam=0.5)
    d2 = 1.0 - 0.5  # last real token: no next value
    d1 = 0.0 + 0.9 * 0.5 - 0.4
    d0 = 0.0 + 0.9 * 0.4 - 0.2
    a2 = d2
    a1 = d1 + 0.45 * a2
    a0 = d0 + 0.45 * a1
    assert adv[0].tolist() == pytest.approx([a0, a1, a2, 0.0])
    assert ret[0].tolist() == pytest.approx([a0 + 0.2, a1 + 0.4, a2 + 0.5, 0.0])
    # gamma = lambda = 1: the advantage is the return-to-go minus the value
    adv1, _ = gae(r, v, m, gamma=1.0, lam=1.0)
    assert adv1[0, 0].item() == pytest.approx(1.0 - 0.2)


def test_clipped_policy_loss_by_hand():
    logp = torch.tensor([[0.0, math.log(1.5), math.log(0.5)]], requires_grad=True)
    old = torch.zeros(1, 3)
    adv = torch.tensor([1.0])  # one sequence advantage for its three tokens
    m = torch.tensor([[1, 1, 1]], dtype=torch.bool)
    loss, stats = clipped_policy_loss(logp, old, adv, m, clip=0.2)
    # token surrogates: min(1, 1) = 1; min(1.5, 1.2) = 1.2; min(0.5, 0.8) = 0.5
    assert loss.item() == pytest.approx(-(1.0 + 1.2 + 0.5) / 3)
    assert stats["clip_frac"].item() == pytest.approx(2 / 3)
    loss.backward()
    # the clipped token (ratio 1.5 > 1.2 with A > 0) gets no gradient
    assert logp.grad[0, 1].item() == 0.0 and logp.grad[0, 0].item() == pytest.approx(-1 / 3)
    # negative advantage: min picks the clipped 0.8 * -1 for ratio 0.5
    loss_neg, _ = clipped_policy_loss(logp.detach(), old, -adv, m, clip=0.2)
    assert loss_neg.item() == pytest.approx(-(-1.0 - 1.5 - 0.8) / 3)


def test_reinforce_gradient_and_masked_padding():
    logp = torch.tensor([[-1.0, -2.0, -math.inf]], requires_grad=True)
    m = torch.tensor([[1, 1, 0]], dtype=torch.bool)
    loss, _ = clipped_policy_loss(logp, logp.detach(), torch.tensor([2.0]), m, clip=None)
    loss.backward()
    assert loss.item() == pytest.approx(-2.0)
    assert logp.grad[0].tolist() == pytest.approx([-1.0, -1.0, 0.0])
    assert torch.isfinite(logp.grad).all()


def test_clipped_value_loss_by_hand():
    v, old, ret = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.5, 0.0]]), torch.tensor([[0.0, 1.0]])
    m = torch.ones(1, 2, dtype=torch.bool)
    # token 0: (1 - 0)^2 = 1 vs clip(1, 0.3, 0.7) = 0.7 -> 0.49: max 1; token 1: 1 vs 1: 1
    assert clipped_value_loss(v, old, ret, m, clip=0.2).item() == pytest.approx(0.5 * (1 + 1) / 2)
    assert clipped_value_loss(v, old, ret, m, clip=None).item() == pytest.approx(0.5)
