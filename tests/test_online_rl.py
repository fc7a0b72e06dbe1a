"""Online RL for the policy (RLOO, GRPO, PPO) in real tiny games: every objective plays a round
with and without APO, the RM stays frozen during the RL fit and moves in its own fit, PPO's
value model learns, and 2 DDP processes play a round."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from apo.game import GameLoop
from apo.game.online import online_fit
from apo.train import train
from tests.conftest import compose_cfg
from tests.test_cli import apo_train

ONLINE = ["rloo", "grpo", "ppo"]


@pytest.mark.parametrize("c_apo", [0.0, 1.0])
@pytest.mark.parametrize("objective", ONLINE)
def test_one_round_per_online_objective(tmp_path: Path, objective: str, c_apo: float):
    run = tmp_path / "run"
    train(
        compose_cfg(
            [
                "experiment=tiny",
                f"objective={objective}",
                f"game.apo_coeff={c_apo}",
                "game.rounds=1",
                "game.save_weights=false",
            ],
            run_dir=run,
        )
    )
    rounds = json.loads((run / "summary.json").read_text())["rounds"]
    assert len(rounds) == 2 and math.isfinite(rounds[1]["policy/kl"])
    assert rounds[1]["steps/policy"] > rounds[0]["steps/policy"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(next((run / "tensorboard").glob("events.out.tfevents.*"))))
    ea.Reload()
    tags = set(ea.Tags()["scalars"])
    for name in ("rm_reward", "gold_reward", "kl", "entropy", "advantage_mean", "advantage_std"):
        assert f"policy/train/{name}" in tags, name
    if objective != "rloo":
        assert "policy/train/clip_frac" in tags
    if objective == "ppo":
        assert "policy/train/value_loss" in tags
    # no round files of reference log-probs: an online fit computes them itself
    assert "time/reference_s" not in rounds[1]
    # apo-report draws the over-optimisation picture from the RL steps
    from apo.report import build_report

    _, text = build_report(run)
    assert (run / "report" / "overoptimization.png").read_bytes()[:4] == b"\x89PNG"
    assert "Over-optimisation of the online RL fits" in text


def _round_game(tmp_path: Path, objective: str) -> GameLoop:
    """A 2-round tiny game played up to round 1's policy fit."""
    game = GameLoop(
        compose_cfg(
            ["experiment=tiny", f"objective={objective}", "game.save_weights=false"],
            run_dir=tmp_path / "run",
        )
    )
    game.play(0, "warm_start")
    for name in ("generate", "rm_fit", "score"):
        game.play(1, name)
    return game


def _params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_the_rm_is_frozen_during_the_rl_fit_and_moves_in_its_own(tmp_path: Path):
    game = _round_game(tmp_path, "grpo")
    rm_before, policy_before = _params(game.players.rm), _params(game.players.policy)
    game.play(1, "policy_fit")
    rm_after = _params(game.players.rm)
    assert _same(rm_before, rm_after)
    assert not _same(policy_before, _params(game.players.policy))
    assert all(p.requires_grad for p in game.players.rm.parameters())  # trainable again
    base = _params(game.players.rm_base)
    game.play(2, "generate")
    game.play(2, "rm_fit")  # from the base RM (game.rm_init: base), then fitted
    moved = _params(game.players.rm)
    assert not _same(moved, base) and not _same(moved, rm_after)


def test_ppo_value_model_learns_on_a_fixed_batch(tmp_path: Path):
    """The critic's loss on one rollout falls as it is fitted to that rollout's returns."""
    game = _round_game(tmp_path, "ppo")
    module, loader = online_fit(game, 1, game.plan.round(1))
    batch = next(iter(loader))
    ro = module.rollout(batch)
    _, ret, _ = module.advantages(ro)
    m = ro["loss_mask"][:, 1:].bool()
    opt = torch.optim.Adam(module.critic.model.parameters(), lr=1e-3)
    from apo.losses.rl import clipped_value_loss

    losses = []
    for _ in range(30):
        v = module._values(ro["ids"], ro["att"], ro["loss_mask"])
        loss = clipped_value_loss(v, ro["old_values"], ret, m, clip=None)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.slow
@pytest.mark.multiprocess
def test_online_rl_under_ddp_with_two_processes(tmp_path: Path):
    run = tmp_path / "ddp"
    proc = apo_train(
        "experiment=tiny",
        "objective=grpo",
        "strategy=ddp",
        "game.rounds=1",
        f"hydra.run.dir={run}",
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "MEMBER: 2/2" in proc.stdout + proc.stderr
    rounds = json.loads((run / "summary.json").read_text())["rounds"]
    assert len(rounds) == 2 and rounds[1]["steps/policy"] > rounds[0]["steps/policy"]
