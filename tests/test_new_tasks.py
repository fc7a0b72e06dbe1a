"""The built-in tasks of other shapes than sorting (run-length expansion, word translation):
their oracles, golden answers and annotators worked by hand, token budgets sized from their
texts, and the warm-start health check in a real (starved) game."""

from __future__ import annotations

import json
import logging
import random
import re
from pathlib import Path

import pytest
from hydra.utils import get_class
from omegaconf import OmegaConf

from apo.data.game_data import build_task_data
from apo.data.sizing import resolve_sizes
from apo.guards import GuardStop
from apo.train import CONFIG_DIR, train
from tests.conftest import compose_cfg


def task(name: str, **overrides):
    node = OmegaConf.to_container(OmegaConf.load(Path(CONFIG_DIR) / "task" / f"{name}.yaml"))
    return get_class(node.pop("_target_"))(**{**node, **overrides})


# ---- run-length expansion ---------------------------------------------------------------------
def test_rle_golden_and_oracle_by_hand():
    t = task("rle")
    assert t.golden("a3b1c2=") == "aaabcc"
    assert t.reward("a3b1c2=", "aaabcc") == 1.0
    # one letter short in the first run shifts the rest: a a | b~a c~b | c = 3 of 6 positions
    assert t.reward("a3b1c2=", "aabcc") == pytest.approx(3 / 6)
    assert t.reward("a3b1c2=", "aaabc") == pytest.approx(5 / 6)
    assert t.reward("a3b1c2=", "") == 0.0
    assert t.reward("a3b1c2=", "aaabccx") == pytest.approx(6 / 7)
    assert len(t.golden("a4b4c4d4=")) > len("a4b4c4d4=")  # longer than its prompt


def test_rle_prompts_have_one_expansion_and_noise_is_imperfect():
    t, rng = task("rle"), random.Random(0)
    prompts = [t.sample_prompt(rng) for _ in range(300)]
    for p in prompts:
        runs = t.runs(p)
        assert 2 <= len(runs) <= 4 and all(1 <= n <= 4 for _, n in runs)
        assert all(a != b for (a, _), (b, _) in zip(runs, runs[1:]))  # neighbours differ
    noisy = [t.reward(p, t.noisy_response(p, rng)) for p in prompts]
    assert 0.5 < sum(noisy) / len(noisy) < 0.95 and min(noisy) < 1.0 and max(noisy) == 1.0
    with pytest.raises(ValueError, match="max_count"):
        task("rle", max_count=12)


def test_rle_annotators_follow_the_oracle_noisily():
    t, rng = task("rle", annotator_beta=8.0), random.Random(1)
    p, good, bad = "a3b1c2=", "aaabcc", "abc"
    picks = [t.annotate(p, good, bad, rng) for _ in range(2000)]
    # P(good > bad) = sigmoid(8 * (1 - 3/6)) = sigmoid(4)
    assert sum(picks) / len(picks) == pytest.approx(1 / (1 + 2.718281828**-4), abs=0.03)


# ---- word translation ------------------------------------------------------------------------
def test_translate_golden_oracle_and_tokenizer_by_hand():
    t = task("translate")
    src = t.source[:3]
    prompt = " ".join(src) + " ="
    golden = t.golden(prompt)
    assert golden.split() == [w for s in src for w in t.lexicon[s]]
    assert t.reward(prompt, golden) == 1.0
    words = golden.split()
    assert t.reward(prompt, " ".join(words[1:])) <= (len(words) - 1) / len(words)
    assert t.reward(prompt, " ".join([*words[:-1], "nope"])) == pytest.approx(
        (len(words) - 1) / len(words)
    )
    tok = t.build_tokenizer()
    ids = tok(golden, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(words) and tok.unk_token_id not in ids  # one token per word
    assert tok.decode(ids) == golden
    assert tok(prompt, add_special_tokens=False)["input_ids"][-1] == tok.convert_tokens_to_ids("=")


def test_translate_lexicon_is_fixed_by_its_seed_and_answers_are_longer():
    a, b, c = task("translate"), task("translate"), task("translate", lexicon_seed=1)
    assert a.lexicon == b.lexicon and a.lexicon != c.lexicon
    assert all(1 <= len(v) <= 3 for v in a.lexicon.values())
    rng = random.Random(0)
    prompts = [a.sample_prompt(rng) for _ in range(200)]
    longer = sum(len(a.golden(p).split()) > len(p.split()) - 1 for p in prompts)
    assert longer > 100
    noisy = [a.reward(p, a.noisy_response(p, rng)) for p in prompts]
    assert 0.4 < sum(noisy) / len(noisy) < 0.95


# ---- sizing from the task ------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["sort", "rle", "translate"])
def test_budgets_sized_from_the_task_cover_its_longest_texts(name):
    cfg = compose_cfg([f"task={name}", "data.sizes.n_sft=400", "data.sizes.n_human_train=300"])
    t = get_class(cfg.task._target_)(**{k: v for k, v in cfg.task.items() if k != "_target_"})
    data = build_task_data(t, seed=0, **cfg.data.sizes)
    tok = t.build_tokenizer()
    derived = resolve_sizes(cfg, data, tok)
    assert set(derived) == {
        "data.max_prompt_len",
        "policy.generation.max_new_tokens",
        "data.max_len",
    }
    n = lambda s: len(tok(s, add_special_tokens=False)["input_ids"])  # noqa: E731
    longest_answer = max(n(data.golden[p]) for p in data.rm_prompts)
    longest_demo = max(n(r) for _, r in data.sft)
    assert cfg.policy.generation.max_new_tokens >= max(longest_answer, longest_demo) + 1
    assert cfg.data.max_prompt_len >= 1 + max(n(p) for p in data.test_prompts)
    # every sequence fits: a sample cut at its budget (eos appended), a golden answer, and the
    # longest compared response the RM reads (rle's noisy ones can outgrow every golden answer)
    longest_heard = max(n(r) for it in data.human_train + data.human_val for r in it.responses)
    room = max(cfg.policy.generation.max_new_tokens, longest_heard + 1)
    assert cfg.data.max_len == cfg.data.max_prompt_len + room + 1


def test_sizing_covers_a_human_pair_longer_than_every_golden_answer():
    # rle, seed 1: a noisy compared response of 18 tokens while the longest golden answer or
    # demonstration has 16 (the experiment's games of that seed stopped on it before the fix)
    cfg = compose_cfg(["task=rle", "seed=1"])
    t = get_class(cfg.task._target_)(**{k: v for k, v in cfg.task.items() if k != "_target_"})
    data = build_task_data(t, seed=1, **cfg.data.sizes)
    tok = t.build_tokenizer()
    n = lambda s: len(tok(s, add_special_tokens=False)["input_ids"])  # noqa: E731
    said = max([n(r) for _, r in data.sft] + [n(data.golden[p]) for p in data.rm_prompts])
    heard = max(n(r) for it in data.human_train + data.human_val for r in it.responses)
    assert heard > said + 1  # the case: the compared responses are the longest texts
    resolve_sizes(cfg, data, tok)
    assert cfg.data.max_len >= cfg.data.max_prompt_len + heard + 1


def test_set_budgets_are_kept(tmp_path):
    cfg = compose_cfg(["task=rle", "data.max_prompt_len=16", "data.max_len=40"])
    t = get_class(cfg.task._target_)(**{k: v for k, v in cfg.task.items() if k != "_target_"})
    data = build_task_data(
        t, seed=0, n_sft=50, n_human_train=20, n_human_val=10, n_rm=5, n_policy=5, n_test=5
    )
    derived = resolve_sizes(cfg, data, t.build_tokenizer())
    assert derived == {"policy.generation.max_new_tokens": 23}
    assert (cfg.data.max_prompt_len, cfg.data.max_len) == (16, 40)


# ---- the warm start's health ----------------------------------------------------------------------
def test_health_warning_fires_on_a_starved_warm_start(tmp_path, caplog):
    """One SFT epoch of a one-layer player does not learn the task: round 0 says so (the policy's
    score against its demonstrations'), and with `game.guard.action=stop` the game stops."""
    starved = ["experiment=tiny", "game.rounds=0", "game.save_weights=false"]
    with caplog.at_level(logging.INFO):
        train(compose_cfg([*starved, "progress=lines"], run_dir=tmp_path / "warn"))
    assert "warm start: the warm-started policy scores" in caplog.text
    assert "did not learn the task" in caplog.text
    # the numbers are in the progress output whether or not they warn
    line = next(m for m in caplog.messages if m.startswith("round 0 evaluate:"))
    ratio = re.search(r"warm start at (\d+)% of its demonstrations' (0\.\d{4})", line)
    summary = json.loads((tmp_path / "warn" / "summary.json").read_text())
    r0 = summary["rounds"][0]
    assert ratio and int(ratio[1]) == round(100 * r0["game/warm_start_ratio"]) < 80
    assert float(ratio[2]) == pytest.approx(r0["game/demo_reward"], abs=1e-4)
    with pytest.raises(GuardStop, match=r"warm start: .* of its demonstrations'"):
        train(compose_cfg([*starved, "game.guard.action=stop"], run_dir=tmp_path / "stop"))
