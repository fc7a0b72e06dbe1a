"""Resuming a game: the state saved at phase boundaries, SIGKILL mid-fit, `resume=true`."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import open_dict
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from apo import checkpoint
from apo.train import train
from tests.conftest import ROOT, compose_cfg

#: a tiny game whose round fits are long enough to be killed in, flushing TensorBoard each second
LONG = [
    "experiment=tiny",
    "rm.round.max_epochs=30",
    "policy.round.max_epochs=80",
    "tensorboard_flush_secs=1",
]
TIMING = ("time/", "perf/")


def _strip(rounds: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in rounds]


def _summary(run: Path) -> list[dict]:
    return json.loads((run / "summary.json").read_text())["rounds"]


def _progress(run: Path) -> tuple[int, str] | None:
    path = run / checkpoint.STATE_DIR / checkpoint.PROGRESS_FILE
    if not path.exists():
        return None
    p = json.loads(path.read_text())
    return p["round"], p["phase"]


def _event_bytes(run: Path) -> int:
    return sum(p.stat().st_size for p in (run / "tensorboard").glob("events.out.tfevents.*"))


def _scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar event of every event file, in file order: tag -> [(step, value)]."""
    out: dict[str, list[tuple[int, float]]] = {}
    for f in sorted((run / "tensorboard").glob("events.out.tfevents.*")):
        ea = EventAccumulator(str(f), size_guidance={"scalars": 0})
        ea.Reload()
        for tag in ea.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in ea.Scalars(tag))
    return out


def _cmd(run: Path, *overrides: str, base: tuple[str, ...] = tuple(LONG)) -> list[str]:
    exe = shutil.which("apo-train") or str(Path(sys.executable).parent / "apo-train")
    return [exe, *base, f"hydra.run.dir={run}", *overrides]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}


def _play(run: Path, *overrides: str, base: tuple[str, ...] = tuple(LONG)) -> None:
    proc = subprocess.run(
        _cmd(run, *overrides, base=base),
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def _kill_during(
    run: Path,
    after: tuple[int, str],
    *overrides: str,
    sig: int = signal.SIGKILL,
    base: tuple[str, ...] = tuple(LONG),
) -> int:
    """Start a game and send `sig` to its whole process group in the fit that follows phase
    `after` (once the state says `after` finished and the fit's first losses reach
    TensorBoard); return the game's exit status."""
    proc = subprocess.Popen(
        _cmd(run, *overrides, base=base),
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while _progress(run) != after:
            assert proc.poll() is None, f"the game ended before {after}"
            assert time.monotonic() < deadline, f"no {after} in {run}"
            time.sleep(0.05)
        seen = _event_bytes(run)
        while _event_bytes(run) <= seen:
            assert proc.poll() is None and time.monotonic() < deadline
            assert _progress(run) == after, f"the fit after {after} ended before it was seen"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, sig)
        code = proc.wait(timeout=600)
    # stopped inside the fit: the state still ends at `after`
    assert _progress(run) == after
    return code


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("resume") / "full"
    _play(run)
    return run


def _assert_same_game(resumed: Path, full: Path) -> None:
    assert _strip(_summary(resumed)) == _strip(_summary(full))
    for r in range(3):
        d, e = (run / "rounds" / f"round_{r:02d}" for run in (resumed, full))
        names = ["eval_samples.jsonl"] + (["samples.jsonl"] if r else [])
        for name in names:
            assert (d / name).read_text() == (e / name).read_text(), f"round {r} {name}"
        m = json.loads((d / "metrics.json").read_text())
        assert _strip([m]) == _strip([json.loads((e / "metrics.json").read_text())])
    for player in ("policy", "rm"):
        a = load_file(resumed / "rounds" / "round_02" / player / "model.safetensors")
        b = load_file(full / "rounds" / "round_02" / player / "model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), player
    assert json.loads((resumed / "state" / "progress.json").read_text())["finished"] is True
    # TensorBoard: every step once, with the uninterrupted game's values
    got, want = _scalars(resumed), _scalars(full)
    for loss in ("rm/train/loss", "policy/train/loss", "rm/base/loss", "policy/sft/loss"):
        steps = [s for s, _ in got[loss]]
        assert len(steps) == len(set(steps)), f"{loss}: steps logged twice"
    for tag, events in want.items():
        if not tag.startswith(TIMING):
            assert sorted(got[tag]) == sorted(events), tag


@pytest.mark.slow
def test_sigkill_in_rm_fit_then_resume(full_run: Path, tmp_path: Path):
    run = tmp_path / "run"
    _kill_during(run, (1, "generate"))
    # the killed fit had logged round-1 RM steps; the resume must drop them, not add to them
    assert _scalars(run)["rm/train/loss"]
    assert not (run / "rounds" / "round_01").exists()
    _play(run, "resume=true")
    _assert_same_game(run, full_run)


@pytest.mark.slow
def test_sigkill_in_policy_fit_then_resume(full_run: Path, tmp_path: Path):
    run = tmp_path / "run"
    _kill_during(run, (2, "score"))  # RJS plays no reference phase
    killed = _scalars(run)["policy/train/loss"]
    round1_steps = _summary(full_run)[1]["steps/policy"]
    assert max(s for s, _ in killed) >= round1_steps  # the round-2 fit was under way
    _play(run, "resume=true")
    _assert_same_game(run, full_run)
    # resuming a finished game plays nothing and writes no TensorBoard events
    events = sorted(p.name for p in (run / "tensorboard").iterdir())
    before = (run / "summary.json").read_text()
    proc = subprocess.run(
        _cmd(run, "resume=true"), cwd=ROOT, env=_env(), capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "was already finished" in proc.stdout + proc.stderr
    assert "policy/gold_reward" in proc.stdout + proc.stderr
    assert sorted(p.name for p in (run / "tensorboard").iterdir()) == events
    assert (run / "summary.json").read_text() == before


@pytest.mark.slow
def test_sigterm_in_policy_fit_exits_non_zero_then_resumes(full_run: Path, tmp_path: Path):
    """A preempted game (SIGTERM, as SLURM and the shell send it) is not a success: it stops at
    the next batch with exit status 143, notes the unfinished phase, and resumes exactly."""
    run = tmp_path / "run"
    code = _kill_during(run, (1, "score"), sig=signal.SIGTERM)
    assert code == 128 + signal.SIGTERM
    progress = json.loads((run / "state" / "progress.json").read_text())
    assert progress["interrupted"] == {"round": 1, "phase": "policy_fit", "by": "SIGTERM"}
    _play(run, "resume=true")
    _assert_same_game(run, full_run)


# ---- in-process: refusing, reprinting, extending ------------------------------------------------
def _game(run: Path, *overrides: str) -> list[dict]:
    cfg = compose_cfg(["experiment=tiny", *overrides], run_dir=run)
    with open_dict(cfg):
        cfg.game.save_weights = False
    train(cfg)
    return _summary(run)


@pytest.mark.slow
def test_run_dir_rules_and_more_rounds(tmp_path: Path):
    one = _game(tmp_path / "a", "game.rounds=1")
    with pytest.raises(FileExistsError, match="resume=true"):
        _game(tmp_path / "a", "game.rounds=1")
    with pytest.raises(ValueError, match=r"game\.apo_coeff: saved 1\.0, now 0\.5"):
        _game(tmp_path / "a", "game.rounds=1", "game.apo_coeff=0.5", "resume=true")
    assert _game(tmp_path / "a", "game.rounds=1", "resume=true") == one
    # a finished game plays on when resumed with more rounds, as if it had been one game
    more = _game(tmp_path / "a", "game.rounds=2", "resume=true")
    assert _strip(more) == _strip(_game(tmp_path / "b", "game.rounds=2"))


# ---- the state files ------------------------------------------------------------------------------
def _draws() -> tuple:
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


def test_state_round_trip_and_rng(tmp_path: Path):
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    store = checkpoint.StateStore(tmp_path)
    w0 = {"a": torch.arange(6.0).view(2, 3)}
    w1 = {"b": torch.ones(2)}
    state = {"done": [0, "warm_start"], "loop": {"steps": {"rm": 3}}, "samples": [{"p": [1, 2]}]}
    store.save({**state, "rng": [checkpoint.rng_state()]}, {"policy": w0, "rm": w1}, "r00-ws")
    expected = _draws()
    loaded = checkpoint.StateStore(tmp_path).load()
    assert loaded["done"] == [0, "warm_start"] and loaded["samples"] == [{"p": [1, 2]}]
    assert torch.equal(loaded["weights"]["policy"]["a"], w0["a"])
    checkpoint.restore_rng_states(loaded["rng"])
    assert _draws() == expected  # the generators continue where the saved ones stood
    # a phase that changes one player writes only its weights; the others stay referenced
    (store.path / ".game_state.pt.leftover").write_bytes(b"half a file")
    store.save({**state, "done": [1, "rm_fit"], "rng": []}, {"rm": {"b": torch.zeros(2)}}, "r01")
    # the round-0 state is kept beside (the states of this round and the last are), so its
    # weight files stay too; the leftover temporary file of a killed save is gone
    assert sorted(p.name for p in store.path.iterdir()) == [
        "game_state.pt",
        "history",
        "policy-r00-ws.pt",
        "progress.json",
        "rm-r00-ws.pt",
        "rm-r01.pt",
    ]
    again = checkpoint.StateStore(tmp_path).load()
    assert torch.equal(again["weights"]["policy"]["a"], w0["a"])
    assert torch.equal(again["weights"]["rm"]["b"], torch.zeros(2))
    (store.path / "rm-r01.pt").unlink()
    with pytest.raises(FileNotFoundError, match="rm-r01.pt"):
        checkpoint.StateStore(tmp_path).load()


def test_rewind_to_the_state_before_a_phase(tmp_path: Path):
    """A guard that rejects a round's policy fit puts the state saved before it back; states
    and weight files of older rounds than the last are dropped as the game goes on."""
    store = checkpoint.StateStore(tmp_path)
    w = lambda v: {"x": torch.full((3,), float(v))}  # noqa: E731
    store.save({"done": [0, "warm_start"], "i": 0}, {"policy": w(0), "rm": w(0)}, "r00-warm_start")
    for r in (1, 2):
        store.save({"done": [r, "rm_fit"], "i": 10 * r}, {"rm": w(10 * r)}, f"r{r:02d}-rm_fit")
        store.save({"done": [r, "score"], "i": 10 * r + 1}, {}, f"r{r:02d}-score")
        store.save(
            {"done": [r, "policy_fit"], "i": 10 * r + 2},
            {"policy": w(10 * r + 2)},
            f"r{r:02d}-policy_fit",
        )
    # round 0's state is dropped, its policy weights are still named by round 1's states
    assert not (store.path / "history" / "r00-warm_start.pt").exists()
    assert (store.path / "policy-r00-warm_start.pt").exists()
    done = store.rewind((2, "policy_fit"))
    assert done == (2, "score")
    state = checkpoint.StateStore(tmp_path).load()
    assert state["i"] == 21 and torch.equal(state["weights"]["policy"]["x"], w(12)["x"])
    assert torch.equal(state["weights"]["rm"]["x"], w(20)["x"])
    assert not (store.path / "policy-r02-policy_fit.pt").exists()
    assert json.loads((store.path / "progress.json").read_text())["phase"] == "score"
    with pytest.raises(ValueError, match="no state kept before round 1 rm_fit"):
        store.rewind((1, "rm_fit"))


@pytest.mark.slow
def test_sigkill_while_saving_leaves_a_whole_state(tmp_path: Path):
    """A process saving big states in a loop is killed at a random moment: the state on disk
    is always one whole save (its weights carry the save's number)."""
    script = textwrap.dedent(
        f"""
        import torch
        from apo.checkpoint import StateStore
        store = StateStore({str(tmp_path)!r})
        for i in range(10**6):
            w = {{"x": torch.full((1_000_000,), float(i))}}
            store.save({{"done": [i, "evaluate"], "i": i}}, {{"policy": w, "rm": w}}, f"r{{i}}")
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], env=_env())
    try:
        deadline = time.monotonic() + 60
        while _progress(tmp_path) is None or _progress(tmp_path)[0] < 2:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(random.uniform(0.0, 0.3))
    finally:
        proc.kill()
        proc.wait()
    state = checkpoint.StateStore(tmp_path).load()
    i = state["i"]
    assert i >= 2 and state["done"] == [i, "evaluate"]
    for name in ("policy", "rm"):
        assert torch.equal(state["weights"][name]["x"], torch.full((1_000_000,), float(i)))


@pytest.mark.slow
@pytest.mark.multiprocess
def test_ddp_sigkill_in_policy_fit_then_resume(tmp_path: Path):
    """Both ranks of a 2-process game are killed in round 1's policy fit; both resume from the
    state rank 0 saved, and the game ends as the uninterrupted 2-process one does."""
    full, run = tmp_path / "full", tmp_path / "run"
    _play(full, "strategy=ddp", "game.rounds=1")
    _kill_during(run, (1, "score"), "strategy=ddp", "game.rounds=1")
    _play(run, "strategy=ddp", "game.rounds=1", "resume=true")
    assert _strip(_summary(run)) == _strip(_summary(full))
    for name in ("samples.jsonl", "eval_samples.jsonl"):
        assert (run / "rounds" / "round_01" / name).read_text() == (
            full / "rounds" / "round_01" / name
        ).read_text()
    steps = [s for s, _ in _scalars(run)["policy/train/loss"]]
    assert len(steps) == len(set(steps)) and sorted(steps) == sorted(
        s for s, _ in _scalars(full)["policy/train/loss"]
    )


def test_a_refused_resume_truncates_only_regular_log_files(tmp_path: Path):
    """A root handler writing to a device (/dev/null reports size 0) is never "truncated back
    to nothing", which would delete the device; a new log file is, an existing one is cut back."""
    import logging

    from apo.train import _log_files, _truncate

    new, old = tmp_path / "new.log", tmp_path / "old.log"
    old.write_text("kept\n")
    handlers = [logging.FileHandler(p, delay=True) for p in (os.devnull, new, old)]
    root = logging.getLogger()
    for h in handlers:
        root.addHandler(h)
    try:
        sizes = _log_files()
        assert os.devnull not in sizes and sizes[str(new)] == 0 and sizes[str(old)] == 5
        new.write_text("written by the refused run\n")
        with old.open("a") as f:
            f.write("and here\n")
        _truncate(sizes)
    finally:
        for h in handlers:
            root.removeHandler(h)
            h.close()
    assert os.path.exists(os.devnull) and not os.path.isfile(os.devnull)
    assert not new.exists() and old.read_text() == "kept\n"
