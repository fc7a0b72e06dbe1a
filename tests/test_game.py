"""A real 2-round game on the tiniest config: files, metrics, TensorBoard, learning happened."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import open_dict
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from apo.judges import ORACLE_KEYS
from apo.records import read_jsonl
from apo.train import train


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    from tests.conftest import compose_cfg

    run = tmp_path_factory.mktemp("game") / "run"
    value = train(compose_cfg(["experiment=tiny"], run_dir=run))
    assert isinstance(value, float) and 0.0 <= value <= 1.0
    return run


def test_summary_has_every_round_and_key(tiny_run: Path):
    summary = json.loads((tiny_run / "summary.json").read_text())
    rounds = summary["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    for r in rounds:
        for key in ORACLE_KEYS.table:
            assert key in r, key
        assert 0.0 <= r["policy/gold_reward"] <= 1.0
        assert 0.0 <= r["rm/val/acc"] <= 1.0
        for key in ("rm/val/ece", "rm/val/ace", "rm/val/mce"):
            assert 0.0 <= r[key] <= 1.0
        assert r["rm/val/mce"] >= r["rm/val/ece"]
        assert r["rm/val/reward_std"] > 0.0
    assert rounds[0]["policy/kl"] == pytest.approx(0.0, abs=1e-4)  # round 0 policy is the reference
    assert rounds[2]["steps/rm"] > rounds[1]["steps/rm"] > rounds[0]["steps/rm"] > 0


def test_summary_counts_the_weights_each_rank_holds(tiny_run: Path):
    from safetensors.torch import load_file

    storage = json.loads((tiny_run / "summary.json").read_text())["param_storage_bytes"]
    assert sorted(storage) == ["policy", "ref", "rm", "rm_base"]
    assert all(len(per_rank) == 1 for per_rank in storage.values())  # one process
    # one process holds every player whole: its saved weights' size (fp32, no tied weights)
    for name in ("policy", "rm"):
        saved = load_file(tiny_run / "final" / name / "model.safetensors")
        assert storage[name][0] == sum(t.numel() * t.element_size() for t in saved.values())
    assert storage["ref"] == storage["policy"] and storage["rm_base"] == storage["rm"]


def test_best_of_n_is_the_judge_score_of_the_rms_pick_among_the_test_samples(tiny_run: Path):
    rounds = json.loads((tiny_run / "summary.json").read_text())["rounds"]
    for r in rounds:
        rows = read_jsonl(tiny_run / "rounds" / f"round_{r['round']:02d}" / "eval_samples.jsonl")
        by_prompt: dict[str, list[dict]] = {}
        for row in rows:
            by_prompt.setdefault(row["prompt"], []).append(row)
        picks = [max(rs, key=lambda x: x["rm_score"])["oracle_reward"] for rs in by_prompt.values()]
        assert r["policy/best_of_n_gold_reward"] == pytest.approx(sum(picks) / len(picks))


def test_per_round_files(tiny_run: Path):
    for r in range(3):
        d = tiny_run / "rounds" / f"round_{r:02d}"
        assert json.loads((d / "metrics.json").read_text())["round"] == r
        assert (d / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        for player in ("policy", "rm"):
            assert (d / player / "model.safetensors").exists()
            assert (d / player / "tokenizer.json").exists()
        test_rows = read_jsonl(d / "eval_samples.jsonl")
        assert len(test_rows) == 16 * 2  # n_test * eval_samples_per_prompt
    for r in (1, 2):
        rows = read_jsonl(tiny_run / "rounds" / f"round_{r:02d}" / "samples.jsonl")
        assert len(rows) == (16 + 32) * 4  # (n_rm + n_policy) * K
        assert {row["split"] for row in rows} == {"rm", "policy"}
        for row in rows:
            assert 0.0 <= row["oracle_reward"] <= 1.0 and isinstance(row["rm_score"], float)


def test_samples_are_regenerated_each_round(tiny_run: Path):
    def by_prompt(r):
        rows = read_jsonl(tiny_run / "rounds" / f"round_{r:02d}" / "samples.jsonl")
        out: dict[str, list[str]] = {}
        for row in rows:
            out.setdefault(row["prompt"], []).append(row["response"])
        return out

    one, two = by_prompt(1), by_prompt(2)
    assert one.keys() == two.keys()
    differing = sum(one[p] != two[p] for p in one)
    assert differing > len(one) // 2


def test_both_players_changed(tiny_run: Path):
    for player in ("policy", "rm"):
        start = load_file(tiny_run / "rounds" / "round_00" / player / "model.safetensors")
        end = load_file(tiny_run / "rounds" / "round_02" / player / "model.safetensors")
        assert start.keys() == end.keys()
        changed = [k for k in start if not (start[k] == end[k]).all()]
        assert len(changed) > len(start) // 2, f"{player}: only {changed} changed"


def test_tensorboard_events(tiny_run: Path):
    files = list((tiny_run / "tensorboard").glob("events.out.tfevents.*"))
    assert files
    tags: dict[str, list[int]] = {}
    texts = set()
    for f in files:
        ea = EventAccumulator(str(f), size_guidance={"scalars": 0, "tensors": 0})
        ea.Reload()
        for tag in ea.Tags()["scalars"]:
            tags.setdefault(tag, []).extend(e.step for e in ea.Scalars(tag))
        texts |= set(ea.Tags()["tensors"])
    assert sorted(tags["policy/gold_reward"]) == [0, 1, 2]
    assert sorted(tags["rm/onpolicy/acc"]) == [0, 1, 2]
    assert sorted(tags["rm/val/ece"]) == [0, 1, 2]
    for loss in ("rm/train/loss", "policy/train/loss", "policy/sft/loss", "rm/base/loss"):
        assert loss in tags, sorted(tags)
    # steps of one player keep counting across fits: no step is logged twice
    assert len(set(tags["rm/train/loss"])) == len(tags["rm/train/loss"])
    assert any(t.startswith("policy/samples") for t in texts)


def test_dpo_game_runs(tmp_path: Path):
    from tests.conftest import compose_cfg

    cfg = compose_cfg(
        ["experiment=tiny", "objective=dpo", "game.rounds=1", "game.apo_loss=diff"],
        run_dir=tmp_path,
    )
    with open_dict(cfg):
        cfg.game.save_weights = False
    train(cfg)
    rounds = json.loads((tmp_path / "summary.json").read_text())["rounds"]
    assert len(rounds) == 2 and rounds[1]["policy/kl"] != 0.0
