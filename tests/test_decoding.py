"""Best-of-N decoding: the RM's pick among a prompt's samples (the game's metric and
`apo-generate best_of=N` are tested with their commands)."""

from __future__ import annotations

import pytest

from apo.decoding import best_of_n, lookahead_search


def test_best_of_n_picks_the_highest_score_of_each_group():
    assert best_of_n([0.1, 0.9, 0.3, 0.5, 0.5, 0.2], 3) == [1, 3]  # a tie: the first
    assert best_of_n([0.2, -1.0], 2) == [0]
    with pytest.raises(ValueError, match="not groups of 4"):
        best_of_n([0.1, 0.2, 0.3], 4)


def _toy(expand_log: list):
    """Tokens 1-3, responses of 2 tokens; the RM loves a first 3 and hates all that follows it."""
    first = {1: 1.0, 2: 5.0, 3: 10.0}

    def extend(prefixes, n):
        expand_log.append(len(prefixes))
        return [[(toks + [t], len(toks) + 1 >= 2) for t in (1, 2, 3)[:n]] for _, toks in prefixes]

    def score(prefixes):
        out = []
        for _, toks in prefixes:
            if len(toks) == 1:
                out.append(first[toks[0]])
            else:
                out.append(0.0 if toks[0] == 3 else float(sum(toks)))
        return out

    return extend, score


def test_lookahead_keeps_more_than_the_greedy_path():
    log: list[int] = []
    extend, score = _toy(log)
    greedy = lookahead_search(2, extend, score, beams=1, expand=3, max_new_tokens=2)
    assert [g[0] for g in greedy] == [3, 3]  # one beam follows the trap
    wide = lookahead_search(2, extend, score, beams=2, expand=3, max_new_tokens=2)
    assert wide == [[2, 3], [2, 3]]  # two beams keep [2] and find the better end
    assert score([(0, w) for w in wide]) > score([(0, g) for g in greedy])
    # step 1 extends the empty response of each prompt, step 2 the kept beams
    assert log[-2:] == [2, 4]
    with pytest.raises(ValueError, match="beams and expand"):
        lookahead_search(1, extend, score, beams=0, expand=3, max_new_tokens=2)


def test_lookahead_stops_at_the_token_budget_and_keeps_finished_responses():
    def extend(prefixes, n):  # every continuation adds 1 token and never ends on its own
        return [[(toks + [len(toks)], False)] * n for _, toks in prefixes]

    out = lookahead_search(1, extend, lambda ps: [float(len(t)) for _, t in ps], 2, 2, 3)
    assert out == [[0, 1, 2]]


def test_the_evaluation_reports_the_guided_decoding_beside_the_plain_policy(tmp_path):
    """`game.eval_lookahead`: a guided response per test prompt, judged, in every evaluation;
    the search climbs the RM above the plain samples' mean and leaves every other number of the
    game as it was (its models are copies, its draws apart from the game's stream)."""
    import json

    from apo.train import train
    from tests.conftest import compose_cfg

    base = ["experiment=tiny", "game.rounds=1", "game.save_weights=false"]
    rounds = {}
    for name, extra in (("plain", []), ("guided", ["game.eval_lookahead.beams=2"])):
        run = tmp_path / name
        train(compose_cfg([*base, *extra], run_dir=run))
        rounds[name] = json.loads((run / "summary.json").read_text())["rounds"]
    for plain, guided in zip(rounds["plain"], rounds["guided"]):
        assert "policy/lookahead_gold_reward" not in plain
        assert 0.0 <= guided["policy/lookahead_gold_reward"] <= 1.0
        assert 0 < guided["policy/lookahead_length"] <= 12
        assert guided["policy/lookahead_rm_reward"] > guided["policy/rm_reward"]
        for key in (
            "policy/gold_reward",
            "policy/kl",
            "rm/val/acc",
            "policy/best_of_n_gold_reward",
        ):
            assert plain[key] == guided[key], key
