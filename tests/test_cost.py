"""A constrained game (`game.cost`): the sort task's cost oracle and its annotators, the cost
model's loss, the multiplier's update and the combined reward, and a game that plays them."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import open_dict

from apo.game import GameLoop
from apo.losses.cost import CostObjective
from apo.records import read_jsonl
from apo.rewards import constrained, lagrange_step, solved_lagrange
from apo.train import train
from apo.validation import ConfigError
from tests.conftest import compose_cfg, sort_task


def test_the_cost_oracle_and_its_annotators():
    task = sort_task(cost_pattern="9", cost_label_noise=0.0)
    assert task.cost("9123=", "1239") == 1.0 and task.cost("123=", "123") == 0.0
    rng = random.Random(0)
    assert all(task.label_cost("1=", "19", rng) for _ in range(50))
    assert not any(task.label_cost("1=", "11", rng) for _ in range(50))
    noisy = sort_task(cost_pattern="9", cost_label_noise=0.2)
    rng = random.Random(1)
    wrong = sum(not noisy.label_cost("1=", "19", rng) for _ in range(4000)) / 4000
    assert wrong == pytest.approx(0.2, abs=0.02)
    assert sort_task().cost("123=", "9") is None  # the default task has no cost oracle
    with pytest.raises(NotImplementedError, match="no cost oracle"):
        sort_task().label_cost("1=", "9", rng)


def test_the_cost_models_loss_is_bce_over_the_valid_responses():
    logits = torch.tensor([[2.0, -1.0, 5.0], [0.5, 0.0, 0.0]])
    labels = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    loss, logs = CostObjective().loss(logits, labels, mask)
    x, y = torch.tensor([2.0, -1.0, 5.0, 0.5]), torch.tensor([1.0, 0.0, 0.0, 0.0])
    assert torch.allclose(loss, F.binary_cross_entropy_with_logits(x, y))
    assert logs["acc"].item() == pytest.approx(0.5)  # right on the first two, wrong on 5.0, 0.5
    assert not CostObjective().serves_apo


def test_the_multiplier_rises_while_the_constraint_is_broken_and_never_goes_below_zero():
    assert lagrange_step(0.0, mean_cost=0.5, limit=0.2, lr=2.0) == pytest.approx(0.6)
    assert lagrange_step(0.6, mean_cost=0.1, limit=0.2, lr=2.0) == pytest.approx(0.4)
    assert lagrange_step(0.1, mean_cost=0.0, limit=0.2, lr=2.0) == 0.0
    assert constrained([1.0, 2.0], [0.5, 0.0], 2.0) == [0.0, 2.0]
    with pytest.raises(ValueError, match="2 rewards but 1 costs"):
        constrained([1.0, 2.0], [0.5], 1.0)


def test_the_solved_multiplier_is_the_smallest_that_meets_the_limit():
    # two prompts whose best sample by reward costs 1; the free ones lose 1 and 3 of reward
    rewards, costs = [[2.0, 1.0], [4.0, 1.0]], [[1.0, 0.0], [1.0, 0.0]]
    assert solved_lagrange(rewards, costs, limit=1.0) == 0.0  # already within
    # one prompt must switch to its free sample: the cheaper switch, just above lambda = 1
    assert solved_lagrange(rewards, costs, limit=0.5) == pytest.approx(1.0, abs=1e-9)
    assert solved_lagrange(rewards, costs, limit=0.5) > 1.0
    assert solved_lagrange(rewards, costs, limit=0.0) == pytest.approx(3.0, abs=1e-9)
    # no multiplier reaches 0.1 when every sample of a prompt costs 1: the lowest reachable mean
    lam = solved_lagrange([[2.0, 1.0], [4.0, 1.0]], [[1.0, 0.0], [1.0, 1.0]], limit=0.1)
    assert lam == pytest.approx(1.0, abs=1e-9)
    with pytest.raises(ValueError, match="same shape"):
        solved_lagrange([[1.0, 2.0]], [[0.5]], 0.1)


def cfg_overrides(limit: float, lr: float) -> list[str]:
    return [
        "experiment=tiny",
        "game.rounds=2",
        "task.cost_pattern=9",
        f"game.cost.limit={limit}",
        f"game.cost.lr={lr}",
    ]


def test_a_constrained_game_moves_the_multiplier_and_shapes_the_rewards(tmp_path: Path):
    limit, lr = 0.1, 2.0
    run = tmp_path / "run"
    cfg = compose_cfg(cfg_overrides(limit, lr), run_dir=run)
    game = GameLoop(cfg)
    game.run()
    summary = json.loads((run / "summary.json").read_text())
    data, rounds = summary["data"], summary["rounds"]
    assert 0.0 < data["cost_labels_mean"] < 1.0 and 0.0 <= data["cost_model_val_acc"] <= 1.0
    assert rounds[0]["game/lagrange"] == 0.0
    lam = 0.0
    for r in rounds[1:]:
        lam = max(0.0, lam + lr * (r["game/samples_cost_model"] - limit))
        assert r["game/lagrange"] == pytest.approx(lam)
        assert 0.0 <= r["policy/cost"] <= 1.0 and 0.0 < r["policy/cost_model"] < 1.0
    assert lam > 0  # the tiny policy's samples hold 9s far more often than 10 %
    rows = read_jsonl(run / "rounds" / "round_01" / "samples.jsonl")
    assert all(0.0 < row["cost_score"] < 1.0 for row in rows)
    # the cost model's weights and the multiplier are saved with the game, and resumed
    resumed = compose_cfg(cfg_overrides(limit, lr), run_dir=run)
    with open_dict(resumed):
        resumed.resume = True
    again = GameLoop(resumed)
    again.resume_index(again.schedule())
    assert again.state.lagrange == pytest.approx(lam)
    mine, theirs = game.players.cost.state_dict(), again.players.cost.state_dict()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_a_solved_multiplier_meets_the_limit_on_each_rounds_samples(tmp_path: Path):
    run = tmp_path / "run"
    limit = 0.2
    over = [*cfg_overrides(limit, 2.0), "game.rounds=1", "game.cost.multiplier=solve"]
    game = GameLoop(compose_cfg(over, run_dir=run))
    game.run()
    rounds = json.loads((run / "summary.json").read_text())["rounds"]
    lam = rounds[1]["game/lagrange"]
    recs = game.state.samples["policy"]
    # the shaped reward's pick of every prompt holds the cost model's limit on average
    picks = [
        rec["cost_scores"][
            max(range(len(rec["rm_scores"])), key=lambda j: (rec["rm_scores"][j], -j))
        ]
        for rec in recs
    ]
    floor = sum(min(rec["cost_scores"]) for rec in recs) / len(recs)
    assert sum(picks) / len(picks) <= max(limit, floor) + 1e-6
    assert lam > 0  # the tiny policy's samples hold 9s far more often than 20 %


def test_a_constraint_on_a_task_without_a_cost_oracle_is_refused(tmp_path: Path):
    cfg = compose_cfg(["experiment=tiny", "game.cost.limit=0.1"], run_dir=tmp_path / "run")
    with pytest.raises(ConfigError, match="no cost oracle"):
        train(cfg)
    assert not (tmp_path / "run").exists()


def test_an_unconstrained_game_on_a_task_with_a_cost_oracle_reports_the_cost(tmp_path: Path):
    run = tmp_path / "run"
    train(compose_cfg(["experiment=tiny", "game.rounds=1", "task.cost_pattern=9"], run_dir=run))
    rounds = json.loads((run / "summary.json").read_text())["rounds"]
    rows = read_jsonl(run / "rounds" / "round_01" / "eval_samples.jsonl")
    assert rounds[1]["policy/cost"] == pytest.approx(
        sum("9" in row["response"] for row in rows) / len(rows)
    )
    assert "game/lagrange" not in rounds[1] and "policy/cost_model" not in rounds[1]


def test_a_fixed_cost_weight_trades_reward_for_cost_without_a_multiplier_step(tmp_path: Path):
    run = tmp_path / "run"
    over = ["experiment=tiny", "game.rounds=1", "task.cost_pattern=9", "game.cost.weight=0.7"]
    train(compose_cfg(over, run_dir=run))
    rounds = json.loads((run / "summary.json").read_text())["rounds"]
    assert [r["game/lagrange"] for r in rounds] == [0.7, 0.7]
    both = compose_cfg([*over, "game.cost.limit=0.2"], run_dir=tmp_path / "both")
    with pytest.raises(ConfigError, match="set one of them"):
        train(both)


def test_the_cost_judge_leaves_the_warm_start_as_it_is_without_one(tmp_path: Path):
    """A warm start cached by one game serves the other: they must be the same warm start."""
    base = ["experiment=tiny", "game.rounds=0", "task.cost_pattern=9"]
    runs = {}
    for name, extra in (("plain", []), ("constrained", ["game.cost.limit=0.2"])):
        run = tmp_path / name
        train(compose_cfg([*base, *extra], run_dir=run))
        runs[name] = json.loads((run / "summary.json").read_text())["rounds"][0]
    for key in ("policy/gold_reward", "policy/cost", "rm/val/acc", "rm/onpolicy/acc"):
        assert runs["plain"][key] == runs["constrained"][key], key
