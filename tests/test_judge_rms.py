"""More RMs the policy is aligned on (`game.judges`): the combined reward, the config checks, and
games where each judge learns its own pairs, is standardised on them and shapes the reward."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from apo.data.adapters import write_comparisons
from apo.data.game_data import ListwiseItem
from apo.game import GameLoop, judge_rms
from apo.metrics import mean, pairwise_agreement
from apo.records import read_jsonl
from apo.rewards import weighted
from apo.train import train
from apo.validation import ConfigError
from tests.conftest import compose_cfg, sort_task


def test_the_combined_reward_adds_each_judges_weighted_score():
    assert weighted([1.0, 2.0], [(0.5, [2.0, -2.0]), (-1.0, [1.0, 0.0])]) == [1.0, 1.0]
    assert weighted([1.0, 2.0], []) == [1.0, 2.0]
    t = weighted(torch.tensor([1.0, 2.0]), [(2.0, torch.tensor([0.5, 1.0]))])
    assert torch.equal(t, torch.tensor([2.0, 4.0]))
    with pytest.raises(ValueError, match="2 rewards but 1 judge scores"):
        weighted([1.0, 2.0], [(1.0, [1.0])])


def shorter_is_better(path: Path, n: int = 600) -> Path:
    """Comparisons on the sort task's prompts that prefer the golden answer to itself with
    three digits more: a judge that learns them prefers short answers."""
    task, rng = sort_task(), random.Random(0)
    items = []
    for _ in range(n):
        prompt = task.sample_prompt(rng)
        gold = task.golden(prompt)
        longer = gold + "".join(rng.choice("0123456789") for _ in range(3))
        items.append(ListwiseItem(prompt, [gold, longer], [1.0, 0.0]))
    write_comparisons(path, items)
    return path


def overrides(pairs: Path, weight: float = 1.0) -> list[str]:
    return [
        "experiment=tiny",
        "game.rounds=1",
        "rm.warmup.max_epochs=3",
        f"+game.judges.short={{weight: {weight}, pairs: '{pairs}'}}",
        "+game.judges.human={weight: 0.5, pairs: human, margin: 0.5}",
    ]


def test_judges_learn_their_own_pairs_and_shape_the_policys_reward(tmp_path: Path):
    pairs = shorter_is_better(tmp_path / "short.jsonl")
    run = tmp_path / "run"
    game = GameLoop(compose_cfg(overrides(pairs), run_dir=run))
    game.run()
    summary = json.loads((run / "summary.json").read_text())
    data, rounds = summary["data"], summary["rounds"]
    # each judge learnt its own pairs: the file's 90 % (split by prompt), the game's human pairs
    assert 500 <= data["judge_short_pairs"] <= 580
    assert data["judge_human_pairs"] == len(game.dm.data.human_train)
    assert data["judge_short_val_acc"] > 0.9  # "shorter is better" is easy to learn
    # the human judge is measured on the game's held-out human pairs (the tiny data leave it
    # near chance, as they leave the game's RM)
    human_val = game.dm.data.human_val
    scores = judge_rms.standardised(
        game, [{"prompt": it.prompt, "texts": it.responses} for it in human_val]
    )["human"]
    assert data["judge_human_val_acc"] == pairwise_agreement(
        scores, [it.scores for it in human_val]
    )
    # standardised on its own validation responses: mean 0, std 1 there
    val = judge_rms.load_pairs(game.cfg, judge_rms.specs(game.cfg)[1], ([], []))[1]
    z = judge_rms.standardised(game, [{"prompt": it.prompt, "texts": it.responses} for it in val])
    flat = [x for row in z["short"] for x in row]
    assert mean(flat) == pytest.approx(0.0, abs=1e-4)
    assert mean([x * x for x in flat]) == pytest.approx(1.0, abs=1e-3)
    for r in rounds:
        assert {"policy/judge_short", "policy/judge_human"} <= set(r)
    assert "game/samples_judge_short" in rounds[1]
    # the policy's reward is the RM's score plus each judge's weighted standardised score
    rows = read_jsonl(run / "rounds" / "round_01" / "samples.jsonl")
    recs = game.state.samples["policy"] + game.state.samples["rm"]
    raw = game.trainers.predict(
        "rm",
        game.players.rm_module(),
        game.dm.listwise_loader(game.dm.sample_items(recs, "rm"), "score"),
    )
    rm_raw = {
        (rec["prompt"], t): s
        for rec, o in zip(recs, raw)
        for t, s in zip(rec["texts"], o["rewards"])
    }
    for row in rows:
        expected = rm_raw[(row["prompt"], row["response"])]
        expected += 1.0 * row["judge_short"] + 0.5 * row["judge_human"]
        assert row["rm_score"] == pytest.approx(expected, abs=1e-4)
    # the judges' weights and standardisation are saved with the game, and resumed
    cfg = compose_cfg(overrides(pairs), run_dir=run)
    with open_dict(cfg):
        cfg.resume = True
    again = GameLoop(cfg)
    again.resume_index(again.schedule())
    assert again.state.judge_rms == game.state.judge_rms
    mine, theirs = game.players.judge_rms.state_dict(), again.players.judge_rms.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert again.dm.data.meta["judge_short_val_acc"] == data["judge_short_val_acc"]


def test_a_judge_of_weight_zero_leaves_the_game_as_it_is(tmp_path: Path):
    """Judges are built and fitted apart from the game's random stream."""
    pairs = shorter_is_better(tmp_path / "short.jsonl", n=100)
    base = ["experiment=tiny", "game.rounds=1"]
    plain = tmp_path / "plain"
    train(compose_cfg(base, run_dir=plain))
    judged = tmp_path / "judged"
    train(
        compose_cfg([*base, f"+game.judges.short={{weight: 0, pairs: '{pairs}'}}"], run_dir=judged)
    )
    a, b = (json.loads((p / "summary.json").read_text())["rounds"] for p in (plain, judged))
    for r in (0, 1):
        for key in ("policy/gold_reward", "rm/val/acc", "rm/onpolicy/acc", "policy/kl"):
            assert a[r][key] == b[r][key], (r, key)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("{pairs: human}", "game.judges.j.weight: a finite number"),
        ("{weight: 1, pairs: human, loss: hinge}", "game.judges.j.loss='hinge'"),
        ("{weight: 1, pairs: human, margins: 1}", "game.judges.j: unknown keys \\['margins'\\]"),
        ("{weight: 1, pairs: human, val_fraction: 1}", "game.judges.j.val_fraction=1.0"),
        ("{weight: 1, pairs: no/such/file.jsonl}", "game.judges.j.pairs: no comparisons file at"),
    ],
)
def test_a_bad_judge_is_refused_before_any_work(tmp_path: Path, entry: str, message: str):
    run = tmp_path / "run"
    cfg = compose_cfg(["experiment=tiny", f"+game.judges.j={entry}"], run_dir=run)
    with pytest.raises(ConfigError, match=message):
        train(cfg)
    assert not run.exists()


def test_a_bad_record_in_a_judges_file_names_file_record_and_field(tmp_path: Path):
    path = tmp_path / "bad.jsonl"
    path.write_text(
        json.dumps({"text": ["1=<sep>1", "1=<sep>11"], "scores": [1, 0]})
        + "\n"
        + json.dumps({"text": ["2=<sep>2", "2=<sep>22"], "scores": [1]})
        + "\n"
    )
    cfg = compose_cfg(
        ["experiment=tiny", f"+game.judges.j={{weight: 1, pairs: '{path}'}}"],
        run_dir=tmp_path / "run",
    )
    with pytest.raises(Exception, match=r"bad.jsonl.*(record 2|line 2).*scores"):
        train(cfg)
    assert not (tmp_path / "run").exists()


def _first_step(run: Path, tag: str) -> float:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(next((run / "tensorboard").glob("events.out.tfevents.*"))))
    ea.Reload()
    return ea.Scalars(tag)[0].value


def test_an_online_fit_is_rewarded_with_the_judges_too(tmp_path: Path):
    """The first RLOO step samples the same rollouts with or without the judge's weight (both
    games are the same up to it): the same gold reward, another reward."""
    pairs = shorter_is_better(tmp_path / "short.jsonl", n=100)
    base = ["experiment=tiny", "game.rounds=1", "objective=rloo", "game.save_weights=false"]
    runs = {}
    for weight in (0.0, 3.0):
        runs[weight] = run = tmp_path / f"w{weight}"
        judge = f"+game.judges.short={{weight: {weight}, pairs: '{pairs}'}}"
        train(compose_cfg([*base, judge], run_dir=run))
    gold = [_first_step(runs[w], "policy/train/gold_reward") for w in (0.0, 3.0)]
    reward = [_first_step(runs[w], "policy/train/rm_reward") for w in (0.0, 3.0)]
    assert gold[0] == gold[1]
    assert abs(reward[1] - reward[0]) > 1e-3
