"""The built-in task: oracle, golden answers, annotators, tokenizer and splits."""

from __future__ import annotations

import random

import pytest
from transformers import AutoTokenizer

from apo.data.game_data import build_task_data
from tests.conftest import sort_task


def test_oracle_partial_credit():
    t = sort_task()
    assert t.golden("3817=") == "1378"
    assert t.reward("3817=", "1378") == 1.0
    assert t.reward("3817=", "1387") == pytest.approx(0.5)  # two of four positions
    assert t.reward("3817=", "137") == pytest.approx(0.75)  # dropped digit: 3 of max(4, 3)
    assert t.reward("3817=", "13788") == pytest.approx(0.8)  # extra digit: 4 of 5
    assert t.reward("3817=", "") == 0.0


def test_noisy_responses_are_imperfect_but_close():
    t = sort_task(edit_probs=(0.0, 1.0))
    rng = random.Random(0)
    rewards = [
        t.reward(p, t.noisy_response(p, rng)) for p in (t.sample_prompt(rng) for _ in range(300))
    ]
    assert all(0.0 <= r <= 1.0 for r in rewards)
    assert 0.5 < sum(rewards) / len(rewards) < 1.0
    assert sum(r == 1.0 for r in rewards) < len(rewards) * 0.2


def test_annotators_follow_noisy_bradley_terry():
    t = sort_task(annotator_beta=4.0)
    rng = random.Random(1)
    # R(a) - R(b) = 0.5 -> P(a preferred) = sigmoid(2) = 0.881
    picks = [t.annotate("3817=", "1378", "1387", rng) for _ in range(4000)]
    assert sum(picks) / len(picks) == pytest.approx(0.881, abs=0.02)


def test_tokenizer_saves_standard_files_and_round_trips(tmp_path):
    tok = sort_task().build_tokenizer()
    tok.save_pretrained(tmp_path)
    assert (tmp_path / "tokenizer.json").exists()
    again = AutoTokenizer.from_pretrained(tmp_path)
    ids = again("3817=1378", add_special_tokens=False)["input_ids"]
    assert len(ids) == 9 and again.decode(ids) == "3817=1378"
    assert again.eos_token_id == tok.eos_token_id and again.pad_token_id == tok.pad_token_id


def test_splits_are_disjoint_and_deterministic():
    kw = dict(n_sft=50, n_human_train=40, n_human_val=10, n_rm=20, n_policy=30, n_test=10)
    a = build_task_data(sort_task(), seed=3, **kw)
    b = build_task_data(sort_task(), seed=3, **kw)
    c = build_task_data(sort_task(), seed=4, **kw)
    assert a.policy_prompts == b.policy_prompts and a.sft == b.sft
    assert a.policy_prompts != c.policy_prompts
    groups = [
        [p for p, _ in a.sft],
        [i.prompt for i in a.human_train],
        [i.prompt for i in a.human_val],
        a.rm_prompts,
        a.policy_prompts,
        a.test_prompts,
    ]
    flat = [p for g in groups for p in g]
    assert len(flat) == len(set(flat)) == 160
    assert all(a.golden[p] == sort_task().golden(p) for p in a.rm_prompts)
    assert all(
        it.scores == [1.0, 0.0] and it.responses[0] != it.responses[1] for it in a.human_train
    )


def test_bad_task_arguments_are_named():
    with pytest.raises(ValueError, match="edit_probs"):
        sort_task(edit_probs=(0.5, 0.2))
    with pytest.raises(ValueError, match="min_len"):
        sort_task(min_len=5, max_len=3)
    with pytest.raises(ValueError, match="n_rm"):
        build_task_data(sort_task(), 0, 1, 1, 1, 0, 1, 1)
