"""Every policy objective, with and without mixture sampling, plays a real 1-round game."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf, open_dict

from apo.game import GameLoop
from apo.losses.objectives import POLICY_OBJECTIVES
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
    game.play(0, "warm_start")
    plan = game.plan.round(1)
    assert plan.sampling.mixture == mixture
    assert plan.policy.name == objective
    assert plan.policy.options == OmegaConf.to_container(cfg.objective.loss)
    policy, ref = game.players.policy, game.players.ref
    before = {k: v.detach().clone() for k, v in policy.named_parameters()}
    ref_before = {k: v.detach().clone() for k, v in ref.named_parameters()}
    game.play_round(1)
    fit = game.state.last_fit["policy"]
    assert "policy/train/loss" in fit and math.isfinite(fit["policy/train/loss"])
    changed = [k for k, v in policy.named_parameters() if not torch.equal(v, before[k])]
    assert len(changed) > len(before) // 2
    # the reference stays frozen whatever the objective
    assert all(torch.equal(v, ref_before[k]) for k, v in ref.named_parameters())
    lr = cfg.objective.get("lr") or cfg.policy.optimizer.lr
    assert fit["lr"] == pytest.approx(lr)
    # reference log-probs exist exactly for the objectives that read them, one row per prompt
    # with one value per selected sample
    ref_logps = game.state.ref_logps
    if plan.policy.needs_reference:
        selected = plan.policy.select(game.state.samples["policy"])
        assert [len(r) for r in ref_logps] == [len(s["responses"]) for s in selected]
    else:
        assert ref_logps is None
