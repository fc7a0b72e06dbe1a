"""A task defined outside the package plugs in by its own config file in a user's config
directory (`examples/configs/task/reverse.yaml`), exactly as the README shows it."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from omegaconf import OmegaConf

from tests.conftest import ROOT, compose_cfg

USER_CONFIGS = ROOT / "examples" / "configs"
SEARCH_PATH = f"hydra.searchpath=[file://{USER_CONFIGS}]"


def readme_command() -> str:
    """The command of the README's "Your own configs and tasks" section (its first bash block)."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Your own configs and tasks") :]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.DOTALL).group(1)
    (line,) = [x for x in block.splitlines() if x.strip() and not x.startswith("#")]
    return line


def test_the_readme_command_runs_as_printed(tmp_path: Path):
    line = readme_command()
    assert line.startswith("PYTHONPATH=examples .venv/bin/apo-train ")
    env_part, exe, *args = shlex.split(line)
    # the printed command with this test's venv (the same console script when run by `make
    # test`) and a run dir of its own, so that the test writes nothing into logs/
    env = {**os.environ, env_part.split("=")[0]: env_part.split("=", 1)[1]}
    exe = str(Path(sys.executable).parent / Path(exe).name)
    run = tmp_path / "run"
    proc = subprocess.run(
        [exe, *args, f"hydra.run.dir={run}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == [0, 1, 2]
    # the task that played is the user's: its tokenizer and its prompts
    tok = json.loads((run / "tokenizer" / "tokenizer.json").read_text())
    assert "h" in tok["model"]["vocab"] and "9" not in tok["model"]["vocab"]
    rows = (run / "rounds" / "round_01" / "samples.jsonl").read_text().splitlines()
    assert rows and all(json.loads(r)["prompt"].endswith(":") for r in rows)
    task = OmegaConf.load(run / ".hydra" / "config.yaml").task
    assert OmegaConf.to_container(task) == OmegaConf.to_container(
        OmegaConf.load(USER_CONFIGS / "task" / "reverse.yaml")
    )


def test_a_users_task_gets_its_own_keys_only():
    cfg = compose_cfg([SEARCH_PATH, "task=reverse", "task.max_len=5"])
    assert dict(cfg.task) == {
        "_target_": "reverse_task.ReverseTask",
        "min_len": 3,
        "max_len": 5,
        "annotator_beta": 8.0,
    }


def test_a_users_experiment_builds_on_a_packaged_one():
    cfg = compose_cfg([SEARCH_PATH, "experiment=reverse_tiny"])
    tiny = compose_cfg(["experiment=tiny"])
    assert cfg.task._target_ == "reverse_task.ReverseTask" and "edit_probs" not in cfg.task
    assert cfg.game.rounds == 1
    assert cfg.data.sizes == tiny.data.sizes and cfg.policy.backbone == tiny.policy.backbone
