"""The real command line: `apo-train` with Hydra overrides, single-process and 2-process DDP."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT


def apo_train(*overrides: str, timeout: int = 300) -> subprocess.CompletedProcess:
    exe = shutil.which("apo-train") or str(Path(sys.executable).parent / "apo-train")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [exe, *overrides], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_cli_moves_run_dir_and_prints_table(tmp_path: Path):
    run = tmp_path / "cli run"
    proc = apo_train("experiment=tiny", "game.rounds=1", "game.apo_coeff=0", f"hydra.run.dir={run}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "policy/gold_reward" in out and "APO game finished" in out
    summary = json.loads((run / "summary.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == [0, 1]
    assert (run / ".hydra" / "config.yaml").exists()
    assert "apo_coeff: 0" in (run / ".hydra" / "config.yaml").read_text()


@pytest.mark.multiprocess
def test_ddp_two_processes(tmp_path: Path):
    run = tmp_path / "ddp"
    proc = apo_train("experiment=tiny", "strategy=ddp", f"hydra.run.dir={run}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in out
    summary = json.loads((run / "summary.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == [0, 1, 2]
    # rank 0 alone writes the round files; the samples of every rank were gathered into them
    rows = (run / "rounds" / "round_02" / "samples.jsonl").read_text().splitlines()
    assert len(rows) == (16 + 32) * 4
    assert len({json.loads(r)["prompt"] for r in rows}) == 16 + 32
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) >= 1


@pytest.mark.multiprocess
def test_ddp_for_one_player_only(tmp_path: Path):
    run = tmp_path / "mixed"
    proc = apo_train(
        "experiment=tiny", "game.rounds=1", "strategy@rm_strategy=ddp", f"hydra.run.dir={run}"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "MEMBER: 2/2" in proc.stdout + proc.stderr
    assert len(json.loads((run / "summary.json").read_text())["rounds"]) == 2
