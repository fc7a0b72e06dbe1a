"""`apo-report` on synthetic sweep directories built here from fake summaries."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from PIL import Image

from apo.report import build_report, find_jobs, main, mean_se, metric_table, win_rates

# gold reward of the last round (round 2) per (apo_coeff, seed); round r is scaled by r / 2
FINAL = {
    ("0", 0): 0.50,
    ("0", 1): 0.60,
    ("0", 2): 0.55,
    ("1.0", 0): 0.70,
    ("1.0", 1): 0.80,
    ("1.0", 2): 0.90,
}


def _job(root: Path, num: int, apo: str, seed: int, rounds: int | None = 3, test=None) -> Path:
    d = root / str(num)
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text(
        yaml.safe_dump([f"game.apo_coeff={apo}", f"seed={seed}", "objective=rjs"])
    )
    (d / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"game": {"rounds": 2}, "seed": seed}))
    if rounds is None:
        return d
    final = FINAL[(apo, seed)]
    summary = [
        {
            "round": r,
            "policy/gold_reward": final * r / 2,
            "rm/onpolicy/acc": 0.5 + 0.1 * r,
            "rm/val/acc": 0.7,
            "rm/val/ece": 0.05,
        }
        for r in range(rounds)
    ]
    (d / "summary.json").write_text(json.dumps({"rounds": summary}))
    last = d / "rounds" / f"round_{rounds - 1:02d}"
    last.mkdir(parents=True)
    rows = [
        {"prompt": p, "response": "x", "oracle_reward": v, "rm_score": v * 3 - 1}
        for p, v in (test or {"a=": final, "b=": final, "c=": 0.5}).items()
    ]
    (last / "eval_samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (last / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (last / "calibration.json").write_text(
        json.dumps(
            {"counts": [0, 4, 6], "confidence": [None, 0.4, 0.8], "accuracy": [None, 0.5, 0.7]}
        )
    )
    return d


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    root = tmp_path / "sweep"
    for i, (apo, seed) in enumerate(FINAL):
        _job(root, i, apo, seed)
    (root / "multirun.yaml").write_text("{}")
    return root


def test_mean_and_standard_error_by_hand():
    m, se, n = mean_se([0.7, 0.8, 0.9])
    # sample variance = (0.01 + 0 + 0.01) / 2 = 0.01; se = sqrt(0.01 / 3)
    assert (m, n) == (pytest.approx(0.8), 3) and se == pytest.approx(math.sqrt(0.01 / 3))
    assert math.isnan(mean_se([0.4])[1]) and mean_se([])[2] == 0


def test_settings_that_do_not_change_results_do_not_split_groups(tmp_path: Path):
    d = _job(tmp_path / "s", 0, "0", 0)
    (d / ".hydra" / "overrides.yaml").write_text(
        yaml.safe_dump(
            ["game.apo_coeff=0", "seed=0", "game.warm_start_cache=/x", "hydra.run.dir=/y"]
        )
    )
    assert find_jobs(tmp_path / "s")[0].group == "game.apo_coeff=0"


def test_table_numbers(sweep: Path):
    table = metric_table(find_jobs(sweep), "policy/gold_reward")
    apo, base = table["game.apo_coeff=1.0 objective=rjs"], table["game.apo_coeff=0 objective=rjs"]
    assert apo[2][0] == pytest.approx(0.8) and apo[2][2] == 3
    assert base[2][0] == pytest.approx(0.55)
    assert base[2][1] == pytest.approx(math.sqrt(((0.05**2) * 2 / 2) / 3))
    assert apo[0][0] == pytest.approx(0.0)


def test_win_rate_against_baseline(sweep: Path):
    wins = win_rates(find_jobs(sweep), "game.apo_coeff=0")
    # every seed: prompts a, b won (0.7..0.9 > 0.5..0.6), prompt c tied -> (1 + 1 + 0.5) / 3
    m, _, n = wins["game.apo_coeff=1.0 objective=rjs"]
    assert m == pytest.approx(2.5 / 3) and n == 3
    assert "game.apo_coeff=0 objective=rjs" not in wins


def test_report_files_and_images(sweep: Path, capsys):
    assert main([str(sweep)]) == 0
    printed = capsys.readouterr().out
    assert "0.800 ± 0.058" in printed  # apo group, round 2: 0.8 ± sqrt(0.01 / 3)
    out = sweep / "report"
    text = (out / "report.md").read_text()
    assert "**policy/gold_reward**" in text and "Win rate" in text
    for name in (
        "policy_gold_reward.png",
        "rm_onpolicy_acc.png",
        "reliability.png",
        "reward_histograms.png",
    ):
        with Image.open(out / name) as im:
            im.verify()
            assert im.format == "PNG" and im.size[0] > 100
        assert f"({name})" in text


def test_partial_sweep_lists_unfinished_jobs(tmp_path: Path):
    root = tmp_path / "partial"
    _job(root, 0, "0", 0)
    _job(root, 1, "1.0", 0, rounds=None)  # still running: no summary yet
    _job(root, 2, "1.0", 1, rounds=2)  # stopped after round 1 of 2
    path, text = build_report(root)
    assert "no summary yet" in text and "incomplete: 2 of 3 rounds" in text
    table = metric_table(find_jobs(root), "policy/gold_reward")
    assert table["game.apo_coeff=1.0 objective=rjs"][1][2] == 1  # the partial job's rounds count
    # only complete jobs are compared
    assert win_rates(find_jobs(root), "game.apo_coeff=0") == {}
    assert path.exists()


def test_missing_directory_is_a_clear_error(tmp_path: Path, capsys):
    assert main([str(tmp_path / "nope")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no run directories"):
        find_jobs(tmp_path / "empty")
