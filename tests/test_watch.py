"""Watching a game: the progress lines of every phase, the live view on a terminal (a console
and a real pseudo-terminal), the trace a Ctrl-C leaves, and what TensorBoard shows of a real tiny
game (scalars, histograms, images, the HParams dashboard)."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict, read_write
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from apo.progress import GameWatch
from apo.train import train
from tests.conftest import ROOT, compose_cfg

#: a tiny DPO game: every phase a round can play, pairwise statistics on both players
OVERRIDES = ["experiment=tiny", "objective=dpo", "progress=lines"]
ROUND = ["generate", "rm_fit", "score", "reference", "policy_fit", "evaluate"]
SCHEDULE = [(0, "warm_start"), (0, "evaluate")] + [(r, p) for r in (1, 2) for p in ROUND]
ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][AB0-2]|\x1b[=>]")


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def watched(tmp_path_factory) -> tuple[Path, list[logging.LogRecord]]:
    """One tiny game played as `apo-train` plays it in a Hydra job (its HydraConfig installed,
    with this run dir as the job's output dir), its `apo.*` log collected."""
    run = tmp_path_factory.mktemp("watch") / "run"
    cfg = compose_cfg(OVERRIDES, run_dir=run, hydra_config=True)
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.runtime.output_dir = str(run)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.pop("hydra")
        cfg.game.save_weights = False
    handler, logger = Collect(), logging.getLogger("apo")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)  # setLevel, not `.level =`: it clears the loggers' caches
    try:
        train(cfg)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return run, handler.records


def _lines(records: list[logging.LogRecord]) -> list[str]:
    return [r.getMessage() for r in records if r.name == "apo.progress"]


# ---- the log lines -------------------------------------------------------------------------------
def test_the_plan_comes_first_then_one_line_per_phase_with_its_time(watched):
    run, records = watched
    lines = _lines(records)
    assert lines[0].startswith("APO game: 2 rounds, objective dpo, run dir")
    assert lines[1].startswith("APO game plan: round 0 warm_start → evaluate, then 2 rounds of ")
    assert "generate → rm_fit → score → reference → policy_fit → evaluate (14 phases)" in lines[1]
    assert f"run dir {run}" in lines[1] and "parameters" in lines[1]
    ended = [re.match(r"round (\d+) (\w+): (\d+\.\d) s(, |$)", line) for line in lines[2:]]
    assert all(ended), [line for line, m in zip(lines[2:], ended) if not m]
    assert [(int(m[1]), m[2]) for m in ended] == SCHEDULE
    by_phase = {(int(m[1]), m[2]): line for m, line in zip(ended, lines[2:])}
    assert re.search(
        r"rm/train \d+ steps in \d+\.\d s, loss \d\.\d{4}, \S+ tok/s", by_phase[1, "rm_fit"]
    )
    assert "policy/sft" in by_phase[0, "warm_start"] and "rm/base" in by_phase[0, "warm_start"]
    assert re.search(r"192 samples of 48 prompts, \S+ tok/s", by_phase[1, "generate"])
    assert "policy/gold_reward" in by_phase[2, "evaluate"]


# ---- TensorBoard ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def events(watched) -> EventAccumulator:
    run, _ = watched
    (f,) = (run / "tensorboard").glob("events.out.tfevents.*")
    ea = EventAccumulator(str(f), size_guidance={"scalars": 0, "histograms": 0, "images": 0})
    ea.Reload()
    return ea


TRL = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")


def test_step_scalars_of_every_fit(events):
    tags = set(events.Tags()["scalars"])
    for prefix in ("policy/sft", "rm/base", "rm/train", "policy/train"):
        for name in ("loss", "lr", "grad_norm"):
            assert f"{prefix}/{name}" in tags, (prefix, name)
        for name in ("tokens_per_s", "peak_memory_mb"):
            assert f"perf/{prefix}/{name}" in tags, (prefix, name)
    for name in (*TRL, "logps/chosen", "logps/rejected", "entropy", "kl"):
        assert f"policy/train/{name}" in tags, name
    assert "policy/sft/entropy" in tags
    for name in TRL:
        assert f"rm/train/{name}" in tags and f"rm/train/apo/{name}" in tags, name
    # the learning rate is the optimizer's, at every step of the player
    lr = events.Scalars("policy/train/lr")
    assert [e.value for e in lr] == pytest.approx([1e-4] * len(lr))  # objective.lr of dpo
    assert sorted(e.step for e in lr) == sorted(e.step for e in events.Scalars("policy/train/loss"))
    assert all(e.value > 0 for e in events.Scalars("perf/rm/train/tokens_per_s"))


def test_every_phase_reports_its_own_peak_memory(watched, events):
    run, _ = watched
    rounds = json.loads((run / "summary.json").read_text())["rounds"]
    # each phase's peak, the phase's own: reset as it starts (a process-wide high-water mark
    # would only ever grow); the evaluation reports the phases before it
    for r, name in SCHEDULE:
        key = f"perf/{name}/peak_rss_mb"
        if name != "evaluate":
            assert 100 < rounds[r][key] < 10_000, (r, key)
    assert "perf/evaluate/peak_rss_mb" not in rounds[1]
    assert "perf/rm_fit/peak_rss_mb_min" not in rounds[1]  # one process: no lowest rank
    assert len(events.Scalars("perf/rm_fit/peak_rss_mb")) == 2  # rounds 1 and 2


def test_round_histograms_and_reliability_images(events):
    hist = events.Tags()["histograms"]
    for name in ("test_samples", "val_chosen", "val_rejected"):
        assert [e.step for e in events.Histograms(f"rm/scores/{name}")] == [0, 1, 2], name
    assert [e.step for e in events.Histograms("rm/scores/policy_samples")] == [1, 2]
    assert "rm/scores/rm_samples" in hist
    images = events.Images("rm/val/reliability")
    assert [e.step for e in images] == [0, 1, 2]
    assert images[0].encoded_image_string[:8] == b"\x89PNG\r\n\x1a\n" and images[0].width > 100


def test_hparams_dashboard_holds_the_overrides_against_final_metrics(watched, events):
    run, _ = watched
    content = events.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
    metrics = {m.name.tag for m in experiment.experiment.metric_infos}
    assert {"policy/gold_reward", "rm/onpolicy/acc", "rm/val/acc"} <= metrics
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = {k: v.string_value for k, v in start.session_start_info.hparams.items()}
    assert hparams == {"experiment": "tiny", "objective": "dpo"}  # progress=lines is not one
    assert yaml.safe_load((run / "tensorboard" / "hparams.yaml").read_text()) == {
        "experiment": "tiny",
        "objective": "dpo",
    }


def test_hparams_outside_hydra_are_the_values_that_differ_from_the_defaults(tmp_path):
    from apo.logger import game_hparams

    cfg = compose_cfg(["experiment=tiny", "objective=dpo", "progress=off"], run_dir=tmp_path)
    got = game_hparams(cfg, None)
    assert got["objective.name"] == "dpo" and got["game.rounds"] == 2
    assert got["data.sizes.n_sft"] == 256
    assert not any(k.startswith(("run_dir", "progress")) for k in got)
    assert "seed" not in got  # the same as the default


def test_sweep_jobs_are_named_by_their_overrides(tmp_path):
    from hydra.types import RunMode

    from apo.logger import run_name

    job = OmegaConf.create(
        {"mode": RunMode.MULTIRUN, "job": {"override_dirname": "c=logs/x,objective=dpo"}}
    )
    assert run_name(tmp_path, job) == "c=logs_x,objective=dpo"
    assert run_name(tmp_path, None) == ""
    # a game that wrote events keeps their directory, whatever the job is named now
    (tmp_path / "tensorboard" / "objective=rjs").mkdir(parents=True)
    (tmp_path / "tensorboard" / "objective=rjs" / "events.out.tfevents.1.x").write_bytes(b"")
    assert run_name(tmp_path, job) == "objective=rjs"


# ---- the live view -------------------------------------------------------------------------------
def test_rich_view_renders_phase_and_round_on_a_terminal_console(tmp_path):
    import lightning as L
    from rich.console import Console

    from apo.game import GameLoop

    cfg = compose_cfg(["experiment=tiny", "game.rounds=1", "progress=rich"], run_dir=tmp_path)
    with open_dict(cfg):
        cfg.game.save_weights = False
    L.seed_everything(cfg.seed, verbose=False)
    game = GameLoop(cfg)
    out = io.StringIO()
    game.watch.console = Console(file=out, force_terminal=True, width=150, height=40)
    assert game.watch.mode == "rich"
    game.run()
    text = ANSI.sub("", out.getvalue())
    assert "APO game · " in text and "round 1/1" in text
    for name in ("warm_start", "generate", "rm_fit", "score", "policy_fit", "evaluate"):
        assert f"▶ {name}" in text, name
    assert "✓ rm_fit" in text and "policy/gold_reward" in text


def _apo_train(*overrides: str, **kwargs) -> subprocess.Popen:
    exe = shutil.which("apo-train") or str(Path(sys.executable).parent / "apo-train")
    env = {
        **os.environ,
        "PYTHONWARNINGS": "ignore",
        "PYTHONFAULTHANDLER": "1",
        "OMP_NUM_THREADS": "1",
        "TERM": "xterm",
    }
    # a shell's background job (`make test &`, CI) inherits SIGINT ignored, and Python keeps it
    # so; the child gets the default disposition, so that Python's Ctrl-C handler is installed
    return subprocess.Popen(
        [exe, *overrides], cwd=ROOT, env=env, preexec_fn=_default_sigint, **kwargs
    )


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_auto_is_the_live_view_in_a_pseudo_terminal(tmp_path):
    import fcntl
    import pty
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 45, 160, 0, 0))
    run = tmp_path / "run"
    proc = _apo_train(
        "experiment=tiny",
        "game.rounds=1",
        "game.save_weights=false",
        f"hydra.run.dir={run}",
        stdin=slave,
        stdout=slave,
        stderr=slave,
    )
    os.close(slave)
    chunks, deadline = [], time.monotonic() + 300
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                chunks.append(os.read(master, 65536))
            except OSError:  # the child closed the terminal
                break
        elif proc.poll() is not None:
            break
    os.close(master)
    assert proc.wait(timeout=60) == 0
    text = ANSI.sub("", b"".join(chunks).decode(errors="replace"))
    assert "progress rich" in text and "APO game · " in text and "round 1/1" in text
    assert "▶ policy_fit" in text and "APO game finished" in text


def test_ctrl_c_leaves_a_trace_naming_the_phase(tmp_path):
    run = tmp_path / "run"
    proc = _apo_train(
        "experiment=tiny",
        "policy.warmup.max_epochs=2000",
        "progress=lines",
        "progress_every_s=0.5",
        f"hydra.run.dir={run}",
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line)
            if "round 0 warm_start: policy/sft step" in line:
                proc.send_signal(signal.SIGINT)
                break
        try:
            rest, _ = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            # where it hangs: faulthandler (PYTHONFAULTHANDLER) prints every thread's stack
            proc.send_signal(signal.SIGABRT)
            rest, _ = proc.communicate(timeout=30)
            pytest.fail("the game did not stop within 120 s of Ctrl-C:\n" + rest[-6000:])
    finally:
        proc.kill()
    text = "".join(seen) + rest
    assert proc.returncode == 1, text[-3000:]
    assert re.search(
        r"round 0 warm_start: interrupted by Ctrl-C after \d+\.\d s, at policy/sft step \d+/16000",
        text,
    ), text[-3000:]
    assert "no phase had finished" in text
    progress = json.loads((run / "state" / "progress.json").read_text())
    assert progress["interrupted"] == {"round": 0, "phase": "warm_start", "by": "SIGINT"}


@pytest.fixture
def python_sigint():
    """Python's own Ctrl-C handler, as in a terminal (a background job inherits SIGINT ignored)."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def _watch() -> GameWatch:
    return GameWatch(OmegaConf.create({"progress": "lines", "progress_every_s": 1.0}), None)


def test_ctrl_c_stops_at_the_next_step_not_where_it_lands(python_sigint, capfd):
    watch = _watch()
    with watch._ctrl_c_noted():
        watch.start("policy/sft", 10)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)  # the step's work goes on: nothing is raised in the middle of it
        with pytest.raises(KeyboardInterrupt, match="stopped at the step after it arrived"):
            watch.advance(1)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert "Ctrl-C: the game stops after this step" in capfd.readouterr().err


def test_a_second_ctrl_c_stops_at_once(python_sigint):
    watch = _watch()
    with watch._ctrl_c_noted():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
    assert watch.ctrl_c


def test_ctrl_c_without_a_step_stops_after_the_grace_period(python_sigint, monkeypatch):
    monkeypatch.setattr("apo.progress.CTRL_C_GRACE_S", 0.3)
    watch = _watch()
    t0 = time.perf_counter()
    with watch._ctrl_c_noted(), pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(10)  # a long step that never reaches `advance`
    assert 0.25 < time.perf_counter() - t0 < 5
