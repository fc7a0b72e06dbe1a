"""Label denoising by preference strength (`rm.denoise`): the rules on hand-made strengths, the
adaptive margin in the RM loss, and a game that flips pairs, reports it and resumes with it."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import open_dict

from apo.data.collate import ListwiseCollator
from apo.data.game_data import ListwiseItem
from apo.game import GameLoop
from apo.judges import TEST_RM_OBJECTIVE
from apo.losses.denoise import DENOISE_RULES, adaptive_margins, contradicted
from tests.conftest import compose_cfg

STRENGTH = [0.5, -2.0, -0.1, 1.0, -0.5]


def test_the_most_contradicted_pairs_are_flipped_or_dropped():
    assert contradicted(STRENGTH, 0.4) == [1, 4]  # 2 of 5 pairs, lowest first
    assert contradicted(STRENGTH, 1.0) == [1, 4, 2]  # never a pair the RM agrees with
    assert contradicted(STRENGTH, 0.0) == []
    assert DENOISE_RULES["flip"](STRENGTH, 0.4).flipped == (1, 4)
    assert DENOISE_RULES["flip"](STRENGTH, 0.4).dropped == ()
    assert DENOISE_RULES["drop"](STRENGTH, 0.4).dropped == (1, 4)
    assert DENOISE_RULES["soften"](STRENGTH, 0.4).softened == (1, 4)
    assert DENOISE_RULES["none"](STRENGTH, 0.4) == DENOISE_RULES["drop"](STRENGTH, 0.0)
    with pytest.raises(ValueError, match="rm.denoise.fraction"):
        contradicted(STRENGTH, 1.5)


def test_adaptive_margins_grow_with_strength_and_skip_contradicted_pairs():
    assert adaptive_margins(STRENGTH, 0.5) == [0.25, 0.0, 0.0, 0.5, 0.0]
    with pytest.raises(ValueError, match="adaptive_margin"):
        adaptive_margins(STRENGTH, -1.0)


@pytest.mark.parametrize("weighting", ["per_part", "reference"])
def test_a_per_item_margin_enters_each_pairs_loss(weighting: str):
    objective = replace(TEST_RM_OBJECTIVE, margin=0.1, weighting=weighting)
    r = torch.tensor([[1.0, 0.5], [0.0, 0.3], [2.0, -1.0]])
    scores = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    mask = torch.ones(3, 2)
    margin = torch.tensor([0.0, 0.4, 1.0])
    loss, _ = objective.loss(r, scores, mask, human_margin=margin)
    gaps = torch.tensor([0.5, -0.3, -3.0])  # chosen minus rejected, per item
    expected = F.softplus(-(gaps - 0.1 - margin)).mean()
    assert torch.allclose(loss, expected)
    assert torch.allclose(objective.loss(r, scores, mask)[0], F.softplus(-(gaps - 0.1)).mean())


@pytest.mark.parametrize("weighting", ["per_part", "reference"])
def test_label_smoothing_mixes_each_pairs_loss_with_its_reversed_loss(weighting: str):
    objective = replace(TEST_RM_OBJECTIVE, margin=0.0, weighting=weighting)
    r = torch.tensor([[1.0, 0.5], [0.0, 0.3]])
    scores = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    eps = torch.tensor([0.0, 0.5])
    loss, _ = objective.loss(r, scores, torch.ones(2, 2), human_smoothing=eps)
    d = torch.tensor([0.5, -0.3])
    expected = ((1 - eps) * F.softplus(-d) + eps * F.softplus(d)).mean()
    assert torch.allclose(loss, expected)
    # eps 0 everywhere is the plain loss
    plain, _ = objective.loss(r, scores, torch.ones(2, 2))
    zero, _ = objective.loss(r, scores, torch.ones(2, 2), human_smoothing=torch.zeros(2))
    assert torch.allclose(plain, zero)


def test_the_collator_carries_margins_when_items_have_them():
    item = {"index": 0, "prompt_len": 1, "seqs": [[1, 2], [1, 3]], "scores": [1.0, 0.0]}
    collate = ListwiseCollator(pad_id=0)
    assert "margin" not in collate([item, {**item, "index": 1}])
    batch = collate([item, {**item, "index": 1, "margin": 0.7, "smoothing": 0.5}])
    assert torch.allclose(batch["margin"], torch.tensor([0.0, 0.7]))
    assert torch.allclose(batch["smoothing"], torch.tensor([0.0, 0.5]))


def test_a_game_flips_the_contradicted_pairs_reports_them_and_resumes_with_them(
    tmp_path: Path, caplog
):
    run = tmp_path / "run"
    overrides = [
        "experiment=tiny",
        "game.rounds=0",
        "rm.denoise.rule=flip",
        "rm.denoise.fraction=0.25",
        "rm.denoise.adaptive_margin=0.5",
    ]
    game = GameLoop(compose_cfg(overrides, run_dir=run))
    with caplog.at_level("INFO", logger="apo"):
        game.run()
    line = next(r.getMessage() for r in caplog.records if "round 0 denoise" in r.getMessage())
    assert f"flip {len(game.state.denoised['flipped'])} of " in line and "mislabeled" in line
    # the pairs before denoising: the annotators' labels of the warm-started policy's samples
    original = [ListwiseItem(**p) for p in game.state.human_pairs["human_train"]]
    meta = json.loads((run / "summary.json").read_text())["data"]
    flipped = game.state.denoised["flipped"]
    assert meta["denoise_flipped"] == len(flipped) > 0
    assert len(flipped) <= 0.25 * meta["denoise_pairs"] and meta["denoise_dropped"] == 0
    assert 0.0 <= meta["denoise_precision"] <= 1.0
    assert 0.0 < meta["denoise_mislabeled_rate"] < 1.0
    now = game.dm.data.human_train
    assert [it.responses for it in now] == [it.responses for it in original]
    for i, (a, b) in enumerate(zip(original, now)):
        assert b.scores == (a.scores[::-1] if i in flipped else a.scores)
    assert any(it.margin > 0 for it in now) and all(it.margin >= 0 for it in now)
    assert all(now[i].margin == 0 for i in flipped)  # contradicted pairs get no margin
    # a resumed game re-applies the saved decision to the same pairs
    cfg = compose_cfg(overrides, run_dir=run)
    with open_dict(cfg):
        cfg.resume = True
    again = GameLoop(cfg)
    again.resume_index(again.schedule())
    assert again.dm.data.human_train == now


def test_a_softened_game_smooths_the_contradicted_pairs_labels(tmp_path: Path):
    overrides = ["experiment=tiny", "game.rounds=0", "rm.denoise.rule=soften"]
    game = GameLoop(compose_cfg(overrides, run_dir=tmp_path / "run"))
    game.run()
    softened = game.state.denoised["softened"]
    now = game.dm.data.human_train
    assert softened and all(now[i].smoothing == 0.5 for i in softened)
    assert sum(it.smoothing > 0 for it in now) == len(softened)
    original = [ListwiseItem(**p) for p in game.state.human_pairs["human_train"]]
    assert [it.scores for it in now] == [it.scores for it in original]  # labels kept
