"""Failing loudly and finishing cleanly in real games: every sharded engine resumes a game
killed in a fit, and a blow-up stops with a named error, then resumes at a lower rate."""

from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from apo import checkpoint
from tests.conftest import ROOT
from tests.test_resume import _cmd, _env, _kill_during, _play, _progress, _strip, _summary
from tests.test_strategies import ENGINES, HALF_BATCH, TOL_ENGINE

#: a 1-round tiny game whose policy fit is long enough to be killed in, on 2 processes
SHARDED = (
    "experiment=tiny",
    "game.rounds=1",
    "policy.round.max_epochs=6",
    "tensorboard_flush_secs=1",
    *HALF_BATCH,
)


def _final(run: Path, player: str) -> dict[str, torch.Tensor]:
    return load_file(run / "final" / player / "model.safetensors")


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.parametrize("engine", ENGINES)
def test_sharded_game_killed_in_its_policy_fit_resumes(engine: str, tmp_path: Path):
    """SIGKILL in round 1's policy fit, then `resume=true`: the RM is not fitted again before
    it is exported, so its full weights come from the gathered shards, not from a kept copy."""
    full, run = tmp_path / "full", tmp_path / "run"
    _play(full, f"strategy={engine}", base=SHARDED)
    _kill_during(run, (1, "score"), f"strategy={engine}", base=SHARDED)
    _play(run, f"strategy={engine}", "resume=true", base=SHARDED)
    for player in ("policy", "rm"):
        a, b = _final(run, player), _final(full, player)
        assert a.keys() == b.keys()
        diff = max(float((a[k] - b[k]).abs().max()) for k in a)
        assert diff < TOL_ENGINE, (engine, player, diff)
    got, want = _strip(_summary(run)), _strip(_summary(full))
    assert [sorted(r) for r in got] == [sorted(r) for r in want]
    for g, w in zip(got, want, strict=True):
        for key in ("rm/val/acc", "policy/gold_reward", "policy/length", "steps/policy"):
            assert g[key] == pytest.approx(w[key], abs=1e-6), (engine, key)
        assert g["policy/kl"] == pytest.approx(w["policy/kl"], abs=1e-3)


@pytest.mark.slow
def test_a_blow_up_stops_named_and_resumes_at_a_lower_rate(tmp_path: Path):
    """`objective.lr=1e8` makes round 1's policy fit diverge (a non-finite gradient): the game
    stops with an error that names the fit and its step, the state stays before that fit, and
    the same game continues with `objective.lr=1e-3 resume_allow=[objective.lr]` — ending exactly
    as the game played at 1e-3 from the start, with the change recorded. (At 1e3 the tiny policy
    used to break its log-probs down; with today's libraries it collapses to a finite, valid
    policy instead, which is no blow-up to stop.)"""
    base = ("experiment=tiny", "game.rounds=2", "game.save_weights=false")
    run, ref = tmp_path / "run", tmp_path / "ref"
    proc = subprocess.run(
        _cmd(run, "objective.lr=1e8", base=base),
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 1
    assert "DivergenceError: policy fit of round 1, step" in proc.stderr
    assert "non-finite gradient" in proc.stderr
    assert "The game state stays after round 1 score" in proc.stderr
    assert _progress(run) == (1, "score")
    _play(run, "objective.lr=1e-3", "resume=true", "resume_allow=[objective.lr]", base=base)
    _play(ref, "objective.lr=1e-3", base=base)
    assert _strip(_summary(run)) == _strip(_summary(ref))
    changes = json.loads((run / "summary.json").read_text())["config_changes"]
    assert changes == [{"after": [1, "score"], "changed": {"objective.lr": [1e8, 0.001]}}]
    assert checkpoint.StateStore(run).load()["game"]["config_changes"] == changes


def test_a_kl_far_below_zero_is_a_breakdown_whatever_the_guard_says():
    from apo.guards import BROKEN_KL, DivergenceError, check_limits

    guard = {"max_kl": None, "min_entropy": None, "action": "warn"}
    with pytest.raises(DivergenceError, match="round 2 evaluation: policy/kl=.*broke down"):
        check_limits({"policy/kl": BROKEN_KL - 1.0}, guard, 2)
    assert check_limits({"policy/kl": 0.5, "policy/entropy": 1.0}, guard, 2) == []
    crossed = check_limits({"policy/kl": 9.0}, {**guard, "max_kl": 5.0}, 1)
    assert crossed == ["policy/kl=9 above game.guard.max_kl=5.0"]


def test_an_rm_at_chance_on_the_policys_samples_is_reported_every_round(caplog):
    from types import SimpleNamespace

    from apo.guards import GuardStop, check_health

    keys = SimpleNamespace(reward="policy/gold_reward", onpolicy_acc="rm/onpolicy/acc")
    guard = {"min_warm_start": 0.8, "min_onpolicy_acc": 0.55, "action": "warn"}
    # the transfer experiment's rle games: 0.60 after the warm start, 0.38 after round 3
    assert check_health({"rm/onpolicy/acc": 0.60}, guard, keys, r=3) == []
    with caplog.at_level(logging.WARNING, logger="apo.guards"):
        (msg,) = check_health(
            {"rm/onpolicy/acc": 0.38, "game/warm_start_ratio": 0.1}, guard, keys, 3
        )
    # a later round judges the round's RM, not the warm start again
    assert msg.startswith("round 3's RM ranks the policy's own samples at rm/onpolicy/acc=0.380")
    assert "align on noise" in msg and "round 3: " + msg in caplog.text
    with pytest.raises(GuardStop, match=r"round 3 evaluation: round 3's RM .*0\.380") as stop:
        check_health({"rm/onpolicy/acc": 0.38}, {**guard, "action": "stop"}, keys, 3)
    assert stop.value.rewind_before == "policy_fit"
