"""The game's structure: a phase added by registering one unit and naming it in the schedule,
the schedule a config gives, and the game state saved whole after every phase."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from apo import checkpoint
from apo.game import PHASES, GameLoop, phase
from apo.metrics import mean
from tests.conftest import compose_cfg

ROUND = ["generate", "rm_fit", "score", "reference", "policy_fit", "evaluate"]


@pytest.fixture
def counting_phase():
    """A phase outside the package: the mean RM score of the round's policy samples, as a round
    metric, and what it saw kept in the game state."""

    @phase("count_scored")
    def count_scored(game: GameLoop, r: int) -> None:
        recs = game.state.samples["policy"]
        game.state.extra.setdefault("seen", []).append([r, len(recs)])
        game.state.round_metrics["game/policy_samples_rm_mean"] = mean(
            [s for rec in recs for s in rec["rm_scores"]]
        )

    yield count_scored
    PHASES.pop("count_scored")


def test_a_registered_phase_plays_in_its_slot(tmp_path: Path, counting_phase):
    schedule = ROUND[:3] + ["count_scored"] + ROUND[3:]
    cfg = compose_cfg(
        [
            "experiment=tiny",
            "game.rounds=2",
            "game.save_weights=false",
            f"game.round_phases=[{','.join(schedule)}]",
        ],
        run_dir=tmp_path,
    )
    game = GameLoop(cfg)
    names = [(r, p.name) for r, p in game.schedule()]
    # round 0: the warm start and the first evaluation (the oracle needs no preparation); the
    # reference phase is left out for RJS, which reads no reference log-probs
    assert names[:2] == [(0, "warm_start"), (0, "evaluate")]
    assert names[2:] == [(r, p) for r in (1, 2) for p in schedule if p != "reference"]
    game.run()
    rounds = json.loads((tmp_path / "summary.json").read_text())["rounds"]
    assert "game/policy_samples_rm_mean" not in rounds[0]
    for r in (1, 2):
        scores = [
            row["rm_score"]
            for row in map(json.loads, (tmp_path / f"rounds/round_{r:02d}/samples.jsonl").open())
            if row["split"] == "policy"
        ]
        assert rounds[r]["game/policy_samples_rm_mean"] == pytest.approx(mean(scores))
        assert rounds[r]["time/count_scored_s"] >= 0.0
    saved = checkpoint.StateStore(tmp_path).load()
    assert saved["game"]["extra"]["seen"] == [[1, 32], [2, 32]]
    assert saved["done"] == [2, "evaluate"] and saved["finished"]


def test_unknown_phase_names_are_refused_before_playing(tmp_path: Path):
    cfg = compose_cfg(
        ["experiment=tiny", "game.round_phases=[generate,rm_fit,scoring]"], run_dir=tmp_path
    )
    with pytest.raises(ValueError, match=r"game.round_phases: unknown phases \['scoring'\]"):
        GameLoop(cfg).run()
    assert not (tmp_path / "state").exists()


def test_a_phase_name_is_registered_once():
    with pytest.raises(ValueError, match="already registered"):
        phase("score")(lambda game, r: None)


def test_every_phase_that_changes_weights_names_them():
    for name, p in PHASES.items():
        # the weights a game state saves (`Players.models`)
        assert set(p.changes) <= {"policy", "ref", "rm", "rm_base", "cost", "judge_rms"}, name
    assert PHASES["rm_fit"].changes == ("rm",) and PHASES["policy_fit"].changes == ("policy",)
    assert PHASES["cost_model"].changes == ("cost",) and PHASES["denoise"].changes == ()
    assert PHASES["judge_rms"].changes == ("judge_rms",)


def test_a_fit_frees_the_players_gathered_copies_before_it_starts(tmp_path: Path):
    cfg = compose_cfg(["experiment=tiny", "game.rounds=1"], run_dir=tmp_path)
    game = GameLoop(cfg)
    copies, seen = game.players.gathered, []
    copies.get(game.players.policy, lambda flag: flag)  # as a sampling prediction leaves it
    assert game.trainers.before_fit == copies.drop
    game.trainers.before_fit = lambda: (seen.append(len(copies)), copies.drop())
    game.play(0, "warm_start")  # the policy's SFT and the RM's base fit
    assert seen[:1] == [1] and len(seen) == 2
    assert len(copies) == 0
