"""Every policy objective, with and without mixture sampling, plays a real 1-round game."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import open_dict

from apo.game import GameLoop
from apo.losses.policy import POLICY_OBJECTIVES
from tests.conftest import compose_cfg

OBJECTIVES = sorted(set(POLICY_OBJECTIVES) - {"sft"})


@pytest.mark.parametrize("mixture", [0.0, 0.5])
@pytest.mark.parametrize("objective", OBJECTIVES)
def test_one_round_per_objective(objective: str, mixture: float, tmp_path):
    cfg = compose_cfg(
        [
            "experiment=tiny",
            f"objective={objective}",
            f"objective.mixture={mixture}",
            "data.sizes.n_sft=64",
            "data.sizes.n_human_train=64",
        ],
        run_dir=tmp_path,
    )
    with open_dict(cfg):
        cfg.game.save_weights = False
    game = GameLoop(cfg)
    game.phase_warm_start(0)
    assert game.policy.generation["mixture"] == mixture
    before = {k: v.detach().clone() for k, v in game.policy.model.named_parameters()}
    ref_before = {k: v.detach().clone() for k, v in game.policy.ref_model.named_parameters()}
    game.play_round(1)
    fit = game.last_fit["policy"]
    assert "policy/train/loss" in fit and math.isfinite(fit["policy/train/loss"])
    changed = [k for k, v in game.policy.model.named_parameters() if not torch.equal(v, before[k])]
    assert len(changed) > len(before) // 2
    # the reference stays frozen whatever the objective
    assert all(torch.equal(v, ref_before[k]) for k, v in game.policy.ref_model.named_parameters())
    lr = cfg.objective.get("lr") or cfg.policy.optimizer.lr
    assert fit["lr"] == pytest.approx(lr)
    assert game.dm.policy_select == POLICY_OBJECTIVES[objective].selection(
        game.policy.objective_kwargs
    )
