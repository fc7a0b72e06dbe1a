"""A task defined outside the package plugs in by config alone (`task._target_=...`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from omegaconf import open_dict

from apo.train import train
from tests.conftest import ROOT, compose_cfg


def test_user_task_module_plugs_in(tmp_path: Path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    cfg = compose_cfg(
        [
            "experiment=tiny",
            "task._target_=reverse_task.ReverseTask",
            "~task.edit_probs",
            "task.min_len=3",
            "task.max_len=5",
            "game.rounds=1",
        ],
        run_dir=tmp_path,
    )
    with open_dict(cfg):
        cfg.game.save_weights = False
    train(cfg)
    assert "reverse_task" in sys.modules
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == [0, 1]
    tok = json.loads((tmp_path / "tokenizer" / "tokenizer.json").read_text())
    assert "h" in tok["model"]["vocab"] and "9" not in tok["model"]["vocab"]
    # the oracle that scored the samples is the user's: every prompt ends with ':'
    rows = (tmp_path / "rounds" / "round_01" / "samples.jsonl").read_text().splitlines()
    assert rows and all(json.loads(r)["prompt"].endswith(":") for r in rows)
