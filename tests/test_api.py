"""The Python API: `apo.play` as a notebook calls it, in a fresh interpreter with no logging set
up, and what it leaves alone when the caller has set logging up."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

from apo.api import game_log

#: what Lightning prints at every Trainer unless it is quietened (banners, tips, model summary)
LIGHTNING_NOISE = (
    "GPU available",
    "TPU available",
    "HPU available",
    "LOCAL_RANK",
    "Trainer",
    "Tip:",
    "| Name",
    "Epoch 0",
)


def test_play_returns_the_summary_and_prints_the_games_log(tmp_path: Path):
    run = tmp_path / "run"
    code = (
        "import json\n"
        "from apo import play\n"
        f"result = play(['experiment=tiny', 'game.rounds=1'], run_dir={str(run)!r})\n"
        "print('RESULT', json.dumps(result))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    (line,) = [x for x in out.splitlines() if x.startswith("RESULT ")]
    result = json.loads(line[len("RESULT ") :])
    assert [r["round"] for r in result["rounds"]] == [0, 1]
    assert result["table"].splitlines()[0].split()[:2] == ["round", "rm/val/acc"]
    assert result["rounds"] == json.loads((run / "summary.json").read_text())["rounds"]
    assert (run / ".hydra" / "overrides.yaml").read_text().split() == [
        "-",
        "experiment=tiny",
        "-",
        "game.rounds=1",
    ]
    # the game's own log lines, on stdout, in apo-train's format
    assert "[apo.game.loop][INFO] - APO game finished" in out
    assert "[apo.game.outputs][INFO] - round 1:" in out
    noise = [n for n in LIGHTNING_NOISE if n in out + proc.stderr]
    assert not noise, f"Lightning noise in the output: {noise}\n{(out + proc.stderr)[-3000:]}"


def test_game_log_uses_the_callers_handlers_when_there_are_some(caplog):
    """Under pytest (as with `logging.basicConfig()`) the root logger has handlers: the game's
    lines go there, at INFO, and nothing is left behind."""
    logger = logging.getLogger("apo")
    before = (list(logger.handlers), logger.level)
    with game_log():
        assert logger.handlers == before[0]
        logging.getLogger("apo.game.loop").info("a game line")
    assert (list(logger.handlers), logger.level) == before
    assert [r.getMessage() for r in caplog.records if r.name == "apo.game.loop"] == ["a game line"]
