"""The real command line: `apo-train` with Hydra overrides, single-process and 2-process DDP;
the help of every command, TAB completion, and what the command line imports before a game."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

#: the libraries that take seconds to import: only a game (or a step's work) may load them
HEAVY = ("torch", "lightning", "transformers", "deepspeed", "matplotlib", "peft")
STEPS = {
    "apo-generate": ("model: ???", "prompts: ???", "num_samples:", "max_retries:"),
    "apo-score": ("path: ???", "samples: ???", "sep:", "overlength:"),
    "apo-rejection-sample": ("input: ???", "top_n:", "golden_output:"),
    "apo-train-rm": ("comparisons: ???", "golden: null", "vocab_size:", "apo_coeff:"),
}


def command(name: str, *args: str, timeout: int = 300, **env: str) -> subprocess.CompletedProcess:
    exe = shutil.which(name) or str(Path(sys.executable).parent / name)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", **env}
    return subprocess.run(
        [exe, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def apo_train(*overrides: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return command("apo-train", *overrides, timeout=timeout)


def config_groups() -> dict[str, list[str]]:
    """Every packaged config group and its options, from the files."""
    root = ROOT / "configs"
    return {
        d.name: sorted(f.stem for f in d.glob("*.yaml"))
        for d in root.iterdir()
        if d.is_dir() and d.name not in ("hydra", "__pycache__")
    }


def test_help_says_what_it_does_and_lists_every_group():
    proc = apo_train("--help")
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout
    assert text.startswith("apo-train: play the Adversarial Preference Optimization game")
    assert "powered by Hydra" not in text
    described = dict(re.findall(r"^  (\w+) {2,}(\S.*)$", text, flags=re.MULTILINE))
    for group, options in config_groups().items():
        assert group in described, f"{group}: no one-line description in configs/hydra/help"
        assert f"{group}: {', '.join(options)}" in text
    assert "Examples:" in text and "apo-train experiment=tiny" in text
    assert "README.md" in text


def test_help_lists_the_options_of_a_users_config_dir():
    proc = apo_train("--config-dir", "examples/configs", "--help")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"^task: .*reverse, .*sort", proc.stdout, flags=re.MULTILINE)
    assert re.search(r"^experiment: .*reverse_tiny", proc.stdout, flags=re.MULTILINE)


@pytest.mark.parametrize("name", sorted(STEPS))
def test_step_help_shows_its_own_options_only(name: str):
    proc = command(name, "--help")
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout
    assert text.startswith(f"{name}: ")
    for key in STEPS[name]:
        assert key in text, f"{name} --help lacks {key!r}"
    for group in ("objective", "experiment", "hparams_search", "launcher", "task"):
        assert not re.search(rf"^{group}: ", text, flags=re.MULTILINE), f"{name} lists {group}"
    assert "Config groups" not in text and "powered by Hydra" not in text


def test_tab_completion_offers_the_options_of_a_group():
    line = "apo-train objective="
    proc = command("apo-train", "-sc", "query=bash", COMP_LINE=line, COMP_POINT=str(len(line)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = proc.stdout.split()
    assert got == [f"objective={o}" for o in config_groups()["objective"]]


def test_the_command_line_imports_no_heavy_library_before_a_game():
    """What `--help`, `--cfg job` and TAB completion import: every entry point's module, the
    package and the Python API, with none of the libraries that take seconds to load."""
    modules = [
        "apo",
        "apo.api",
        "apo.cluster",
        "apo.config",
        "apo.train",
        "apo.steps.generate",
        "apo.steps.score",
        "apo.steps.rejection_sample",
        "apo.steps.train_rm",
    ]
    code = f"import sys, {', '.join(modules)}; from apo import play; print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "[]"


def test_cfg_job_prints_the_config_without_playing(tmp_path: Path):
    proc = apo_train("--cfg", "job", "experiment=tiny", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "n_sft: 256" in proc.stdout and "_target_: apo.tasks.SortTask" in proc.stdout
    assert not (tmp_path / "run").exists()


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
