"""Calibration errors against hand-computed bins and against torchmetrics."""

import math

import pytest
import torch
from torchmetrics.functional.classification import binary_calibration_error

from apo.calibration import calibration_errors, preference_probs, reliability_diagram


def test_hand_computed_bins():
    probs = torch.tensor([0.05, 0.15, 0.12, 0.95, 0.55, 1.0])
    labels = torch.tensor([0, 1, 0, 1, 1, 1])
    # bin 0: {0.05 -> 0}          conf 0.05   acc 0    gap 0.05
    # bin 1: {0.15 -> 1, 0.12 -> 0} conf 0.135 acc 0.5  gap 0.365
    # bin 5: {0.55 -> 1}          conf 0.55   acc 1    gap 0.45
    # bin 9: {0.95, 1.0 -> 1, 1}  conf 0.975  acc 1    gap 0.025 (p = 1 joins the last bin)
    out = calibration_errors(probs, labels, n_bins=10)
    assert out["ece"].item() == pytest.approx((0.05 + 2 * 0.365 + 0.45 + 2 * 0.025) / 6, rel=1e-6)
    assert out["ace"].item() == pytest.approx((0.05 + 0.365 + 0.45 + 0.025) / 4, rel=1e-6)
    assert out["mce"].item() == pytest.approx(0.45, rel=1e-6)
    assert out["counts"].tolist() == [1, 2, 0, 0, 0, 1, 0, 0, 0, 2]
    assert out["confidence"][1].item() == pytest.approx(0.135, rel=1e-6)
    assert out["accuracy"][[0, 1, 5, 9]].tolist() == [0.0, 0.5, 1.0, 1.0]
    assert torch.isnan(out["confidence"][2]) and torch.isnan(out["accuracy"][2])
    assert out["edges"].tolist() == pytest.approx([i / 10 for i in range(11)])


def test_left_closed_bins_and_n_bins():
    # with 4 bins: 0 -> bin 0 ; 0.25 -> bin 1 (left edge) ; 0.5 -> bin 2 ; 0.75 -> bin 3
    out = calibration_errors(torch.tensor([0.0, 0.25, 0.5, 0.75]), torch.tensor([0, 0, 1, 1]), 4)
    assert out["counts"].tolist() == [1, 1, 1, 1]
    # gaps 0, 0.25, 0.5, 0.25 -> ece = ace = 1 / 4, mce = 0.5
    assert out["ece"].item() == pytest.approx(0.25)
    assert out["ace"].item() == pytest.approx(0.25)
    assert out["mce"].item() == pytest.approx(0.5)


def test_empty_input_is_nan_and_bad_input_raises():
    out = calibration_errors(torch.tensor([]), torch.tensor([]))
    assert math.isnan(out["ece"]) and math.isnan(out["ace"]) and math.isnan(out["mce"])
    assert out["counts"].sum() == 0
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        calibration_errors(torch.tensor([1.5]), torch.tensor([1]))
    with pytest.raises(ValueError, match="size"):
        calibration_errors(torch.tensor([0.5, 0.2]), torch.tensor([1]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_torchmetrics(seed):
    g = torch.Generator().manual_seed(seed)
    probs = torch.rand(500, generator=g).clamp(1e-4, 1 - 1e-4)
    # deliberately over-confident: the truth is pulled toward 0.5
    labels = (torch.rand(500, generator=g) < 0.5 + 0.6 * (probs - 0.5)).long()
    out = calibration_errors(probs, labels, n_bins=10)
    ece = binary_calibration_error(probs, labels, n_bins=10, norm="l1")
    mce = binary_calibration_error(probs, labels, n_bins=10, norm="max")
    assert out["ece"].item() == pytest.approx(ece.item(), abs=1e-5)
    assert out["mce"].item() == pytest.approx(mce.item(), abs=1e-5)


def test_preference_probs_gives_both_orientations_and_skips_ties():
    rewards = torch.tensor([[2.0, 0.0, 1.0, 7.0]])
    scores = torch.tensor([[1.0, 0.0, 0.0, 9.0]])
    mask = torch.tensor([[True, True, True, False]])
    # pairs (0 > 1) and (0 > 2); 1 and 2 tie; column 3 is padding
    probs, labels = preference_probs(rewards, scores, mask)
    s = torch.sigmoid
    expected = [
        s(torch.tensor(2.0)),
        s(torch.tensor(1.0)),
        s(torch.tensor(-2.0)),
        s(torch.tensor(-1.0)),
    ]
    assert probs.tolist() == pytest.approx([e.item() for e in expected])
    assert labels.tolist() == [1.0, 1.0, 0.0, 0.0]


def test_both_orientations_match_top_label_calibration():
    g = torch.Generator().manual_seed(3)
    rewards = torch.randn(64, 2, generator=g) * 2
    scores = torch.tensor([[1.0, 0.0]]).expand(64, 2)
    probs, labels = preference_probs(rewards, scores, torch.ones(64, 2, dtype=torch.bool))
    both = calibration_errors(probs, labels)
    # top-label view: confidence max(p, 1 - p), correct when the more likely item is preferred
    p = probs[:64]
    conf = torch.maximum(p, 1 - p)
    top = calibration_errors(conf, (p > 0.5).long())
    # mirrored bins carry the same gap, so both views give the same weighted error
    assert both["ece"].item() == pytest.approx(top["ece"].item(), abs=1e-9)
    # the pitfall the module docstring warns about: preferred-first only is 1 - mean(p)
    naive = calibration_errors(p, torch.ones(64))
    assert naive["ece"].item() == pytest.approx(1 - p.double().mean().item(), abs=1e-9)


def test_reliability_diagram_writes_png(tmp_path):
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(200, generator=g)
    labels = (torch.rand(200, generator=g) < probs).long()
    bins = calibration_errors(probs, labels)
    path = reliability_diagram(bins, tmp_path / "plots" / "rm.png", title="round 1 RM")
    assert path == tmp_path / "plots" / "rm.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
