"""The game on file data (HH-RLHF, ShareGPT DPO, the APO reference formats): seeded prompt
splits, the data-trained tokenizer, 1-round games judged by a test RM, and bad data files.
Records of the real data are never printed (content warning)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from apo.data.adapters import (
    DataFormatError,
    load_hh_rlhf,
    write_comparisons,
    write_golden,
    write_samples,
)
from apo.data.sources import PARTS, build_game_data, build_tokenizer
from apo.data.text_tokenizer import train_bpe_tokenizer
from apo.game import GameLoop
from apo.records import read_jsonl
from apo.report import build_report
from tests.conftest import DATA_DIR, compose_cfg

HH_TEST = DATA_DIR / "hh-rlhf" / "harmless-base" / "test.jsonl.gz"
DPO_DEMO = DATA_DIR / "llamafactory-dpo-en-demo" / "dpo_en_demo.json"

#: a 1-round game small enough for the default test run
TINY = [
    "experiment=tiny",
    "game.rounds=1",
    "game.save_weights=false",
    "data.tokenizer.vocab_size=300",
    "data.test_rm.max_epochs=1",
    "data.max_prompt_len=32",
    "data.max_len=48",
    "data.sizes.n_sft=48",
    "data.sizes.n_human_train=48",
    "data.sizes.n_human_val=24",
    "data.sizes.n_rm=8",
    "data.sizes.n_policy=8",
    "data.sizes.n_test=8",
    "data.sizes.n_test_rm=64",
]


def _need(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"real data file {path} is absent (set APO_DATA_DIR to the shared data dir)")
    return path


@pytest.fixture(scope="module")
def hh_items():
    return load_hh_rlhf(_need(HH_TEST))[0]


def _apo_files(tmp: Path, items, n_golden: int = 8) -> list[str]:
    """HH pairs rewritten in the APO formats: comparisons, plus golden answers and the queries
    of an RM split taken from the first `n_golden` prompts (kept out of the comparisons)."""
    rm_items, rest = items[:n_golden], items[n_golden:400]
    write_comparisons(tmp / "comparisons.json", rest)
    write_golden(tmp / "golden.json", {i: it.responses[0] for i, it in enumerate(rm_items)})
    write_samples(
        tmp / "rm_queries.jsonl",
        [
            {"query_id": i, "query": it.prompt, "samples": [it.responses[1]]}
            for i, it in enumerate(rm_items)
        ],
    )
    return [
        f"data.comparisons={tmp / 'comparisons.json'}",
        f"data.golden={tmp / 'golden.json'}",
        f"data.rm_queries={tmp / 'rm_queries.jsonl'}",
        "data.sizes.n_rm=0",
    ]


# ---- splits and tokenizer --------------------------------------------------------------------
def test_hh_splits_are_seeded_disjoint_and_sized(hh_items):
    cfg = compose_cfg(["data=hh_rlhf"])
    a, b = build_game_data(cfg, None), build_game_data(cfg, None)
    assert (a.rm_prompts, a.test_prompts, a.sft) == (b.rm_prompts, b.test_prompts, b.sft)
    other = build_game_data(compose_cfg(["data=hh_rlhf", "seed=1"]), None)
    assert other.test_prompts != a.test_prompts
    sizes = cfg.data.sizes
    assert len(a.sft) == sizes.n_sft and len(a.rm_prompts) == sizes.n_rm
    assert len(a.policy_prompts) == sizes.n_policy and len(a.test_prompts) == sizes.n_test
    assert a.meta["prompts"] == len({it.prompt for it in hh_items})
    assert sum(a.meta[f"n_{p}"] for p in PARTS) == a.meta["prompts"]  # n_test_rm took the rest
    game_rm = {it.prompt for it in a.human_train + a.human_val}
    parts = [
        {p for p, _ in a.sft},
        {it.prompt for it in a.human_train},
        {it.prompt for it in a.human_val},
        set(a.rm_prompts),
        set(a.policy_prompts),
        set(a.test_prompts),
    ]
    assert sum(map(len, parts)) == len(set().union(*parts))  # disjoint by prompt
    assert not game_rm & {it.prompt for it in a.test_rm_pairs}
    # golden answers and demonstrations are the chosen responses
    chosen = {it.prompt: it.responses[0] for it in reversed(hh_items)}
    assert all(a.golden[p] == chosen[p] for p in a.rm_prompts)
    assert all(r == chosen[p] for p, r in a.sft)


def test_bpe_tokenizer_round_trips_the_data(hh_items, tmp_path):
    data = build_game_data(compose_cfg(["data=hh_rlhf"]), None)
    tok = build_tokenizer(compose_cfg(["data=hh_rlhf"]), None, data)
    assert len(tok) == 1024
    for it in hh_items[:50]:
        for text in (it.prompt, *it.responses):
            assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    tok.save_pretrained(str(tmp_path))
    from transformers import AutoTokenizer

    back = AutoTokenizer.from_pretrained(str(tmp_path))
    assert back("Human: hi")["input_ids"] == tok("Human: hi")["input_ids"]
    with pytest.raises(ValueError, match="vocab_size must be at least 260"):
        train_bpe_tokenizer(["abc"], vocab_size=100)


# ---- 1-round games ---------------------------------------------------------------------------
def _check_no_oracle_run(run: Path) -> dict:
    summary = json.loads((run / "summary.json").read_text())
    rounds = summary["rounds"]
    assert [r["round"] for r in rounds] == [0, 1]
    for r in rounds:
        assert "policy/gold_reward" not in r and "rm/val/oracle_acc" not in r
        for key in ("policy/test_rm_reward", "rm/val/acc", "rm/onpolicy/test_rm_acc", "policy/kl"):
            assert math.isfinite(r[key]), (key, r[key])
    assert "policy/win_rate_vs_prev" not in rounds[0]
    assert 0.0 <= rounds[1]["policy/win_rate_vs_prev"] <= 1.0
    assert math.isfinite(rounds[1]["game/rm_best_test_rm_reward"])
    assert 0.0 <= summary["data"]["test_rm_val_acc"] <= 1.0
    rows = read_jsonl(run / "rounds" / "round_01" / "eval_samples.jsonl")
    assert rows and all("test_rm_score" in row and "oracle_reward" not in row for row in rows)
    # the win rate is recomputable from the written test-RM scores of both rounds
    prev = read_jsonl(run / "rounds" / "round_00" / "eval_samples.jsonl")
    means = lambda rs: {  # noqa: E731
        p: sum(x["test_rm_score"] for x in rs if x["prompt"] == p)
        / sum(1 for x in rs if x["prompt"] == p)
        for p in {x["prompt"] for x in rs}
    }
    now, before = means(rows), means(prev)
    wins = [1.0 if now[p] > before[p] else 0.5 if now[p] == before[p] else 0.0 for p in now]
    assert rounds[1]["policy/win_rate_vs_prev"] == pytest.approx(sum(wins) / len(wins))
    assert (run / "test_rm" / "config.json").is_file()
    return summary


def test_hh_game_one_round_judged_by_test_rm(tmp_path):
    _need(HH_TEST)
    run = tmp_path / "run"
    GameLoop(compose_cfg(["data=hh_rlhf", *TINY], run_dir=run)).run()
    summary = _check_no_oracle_run(run)
    assert summary["data"]["source"] == "hh_rlhf" and summary["data"]["records_skipped"] == 9
    assert summary["data"]["over_budget"] > 0  # cut, as the game does, and counted
    # apo-report falls back to the test RM's reward and still writes its tables and plots
    path, text = build_report(run, tmp_path / "report")
    assert "**policy/test_rm_reward**" in text and "policy/gold_reward" not in text
    assert (tmp_path / "report" / "policy_test_rm_reward.png").is_file()


def test_sharegpt_game_one_round(tmp_path):
    _need(DPO_DEMO)
    run = tmp_path / "run"
    GameLoop(compose_cfg(["data=sharegpt_dpo", *TINY], run_dir=run)).run()
    assert _check_no_oracle_run(run)["data"]["source"] == "sharegpt_dpo"


def test_apo_files_game_one_round_with_golden_files(tmp_path, hh_items):
    run = tmp_path / "run"
    overrides = _apo_files(tmp_path, hh_items)
    cfg = compose_cfg(["data=apo_files", *TINY, *overrides], run_dir=run)
    loop = GameLoop(cfg)
    # the RM split and its golden answers come from the golden and query files
    assert loop.dm.data.golden == {it.prompt: it.responses[0] for it in hh_items[:8]}
    loop.run()
    assert _check_no_oracle_run(run)["data"]["source"] == "apo_files"


def test_test_rm_is_reused_after_a_restart(tmp_path):
    """A second GameLoop on the same run dir loads the saved test RM instead of refitting it."""
    _need(HH_TEST)
    run = tmp_path / "run"
    cfg = compose_cfg(["data=hh_rlhf", *TINY], run_dir=run)
    first = GameLoop(cfg).judge.prepare()
    second = GameLoop(cfg).judge.prepare()
    assert "test_rm_fit_s" in first and "test_rm_load_s" in second
    assert second["test_rm_val_acc"] == first["test_rm_val_acc"]
    assert not list(run.glob(".test_rm*"))  # no temporary dir left behind


# ---- bad data --------------------------------------------------------------------------------
def test_sizes_larger_than_the_file_name_the_file(tmp_path):
    _need(DPO_DEMO)
    cfg = compose_cfg(["data=sharegpt_dpo", "data.sizes.n_sft=1000"])
    with pytest.raises(DataFormatError, match=r"dpo_en_demo\.json: data\.sizes ask for"):
        build_game_data(cfg, None)
    with pytest.raises(ValueError, match=r"parts \['test'\] need at least one prompt"):
        build_game_data(compose_cfg(["data=sharegpt_dpo", "data.sizes.n_test=0"]), None)


def test_missing_data_file_is_named(tmp_path):
    cfg = compose_cfg(["data=hh_rlhf", f"data.root={tmp_path}"])
    with pytest.raises(DataFormatError, match=r"test\.jsonl\.gz: no such file"):
        build_game_data(cfg, None)
    with pytest.raises(ValueError, match="set data.comparisons"):
        build_game_data(compose_cfg(["data=apo_files", "data.comparisons=''"]), None)


def test_apo_files_bad_inputs_name_file_line_and_field(tmp_path, hh_items):
    overrides = _apo_files(tmp_path, hh_items)
    # a malformed line in the comparisons file
    bad = tmp_path / "bad.jsonl"
    good = json.dumps({"text": ["q<sep>a", "q<sep>b"], "scores": [1, 0]})
    bad.write_text(good + "\n" + '{"text": ["q<sep>a"' + "\n")
    cfg = compose_cfg(["data=apo_files", f"data.comparisons={bad}"])
    with pytest.raises(DataFormatError, match=r"bad\.jsonl, line 2: malformed JSON"):
        build_game_data(cfg, None)
    # a NaN score
    bad.write_text(good + "\n" + '{"text": ["r<sep>a", "r<sep>b"], "scores": [1, NaN]}\n')
    with pytest.raises(DataFormatError, match=r"line 2, field 'scores\[1\]'.*finite number"):
        build_game_data(cfg, None)
    # a query of the RM split without a golden answer
    write_golden(tmp_path / "golden.json", {0: hh_items[0].responses[0]})
    cfg = compose_cfg(["data=apo_files", *TINY, *overrides])
    with pytest.raises(DataFormatError, match=r"rm_queries\.jsonl, line 2, field 'query_id'.*'1'"):
        build_game_data(cfg, None)
    # golden answers need their queries, and the RM split then comes from the files
    with pytest.raises(ValueError, match="data.golden needs data.rm_queries"):
        build_game_data(compose_cfg([*TINY, "data=apo_files", *overrides[:2]]), None)
    _apo_files(tmp_path, hh_items)
    with pytest.raises(ValueError, match="n_rm must be 0"):
        build_game_data(compose_cfg(["data=apo_files", *overrides, "data.sizes.n_rm=4"]), None)


def test_texts_over_their_budgets_error_skip_or_count(tmp_path):
    """Prompts over data.max_prompt_len, responses over data.max_len and golden answers or
    demonstrations over policy.generation.max_new_tokens: an error naming part, item and field,
    dropped, or cut and counted; never cut silently."""
    _need(HH_TEST)
    run = tmp_path / "run"
    with pytest.raises(
        DataFormatError,
        match=r"test\.jsonl\.gz, field '(prompt|demonstration|golden|responses\[\d\])': "
        r"\w+ item \d+: .*over (data\.max_prompt_len|data\.max_len|policy\.generation)",
    ):
        GameLoop(compose_cfg(["data=hh_rlhf", *TINY, "data.overlength=error"], run_dir=run))
    wide = ["data.max_prompt_len=160", "data.max_len=256", "policy.generation.max_new_tokens=96"]
    wide += [f"{p}.backbone.max_position_embeddings=256" for p in ("policy", "rm")]
    cfg = compose_cfg(["data=hh_rlhf", *TINY, *wide, "data.overlength=skip"], run)
    loop = GameLoop(cfg)
    data, enc, rm = loop.dm.data, loop.dm.enc, loop.dm.encoders["rm"]
    assert data.meta["skipped_over_budget"] == data.meta["over_budget"] > 0
    assert 0 < len(data.human_train) < 48
    for it in data.human_train:
        assert rm.prompt_length(it.prompt) <= 160
        p = loop.dm.prompt_ids(it.prompt, "rm")
        assert all(len(p) + len(rm.response(r)) <= 256 for r in it.responses)
    for _, r in data.sft:
        assert len(enc.response(r)) <= 96
    kept = GameLoop(compose_cfg(["data=hh_rlhf", *TINY, *wide], run)).dm.data
    assert len(kept.human_train) > len(data.human_train)  # truncate keeps them, counted
    assert kept.meta["over_budget"] == data.meta["over_budget"]


def test_apo_files_sft_from_a_samples_file(tmp_path, hh_items):
    """An apo-rejection-sample output (samples format) replaces the chosen demonstrations."""
    sft = [{"query_id": i, "query": f"Q{i}?", "samples": [f"A{i}.", f"B{i}."]} for i in range(5)]
    write_samples(tmp_path / "sft.jsonl", sft)
    overrides = _apo_files(tmp_path, hh_items)
    cfg = compose_cfg(["data=apo_files", *TINY, *overrides, f"data.sft={tmp_path / 'sft.jsonl'}"])
    data = build_game_data(cfg, None)
    assert data.sft == [(f"Q{i}?", f"{x}{i}.") for i in range(5) for x in "AB"]


@pytest.mark.slow
def test_data_and_tokenizer_are_the_same_in_every_process():
    """Every rank of a multi-process game builds its own data and BPE tokenizer: they must not
    depend on the process (hash seed), or the ranks would train different models."""
    import subprocess
    import sys

    _need(HH_TEST)
    code = (
        "import hashlib\n"
        "from tests.conftest import compose_cfg\n"
        "from apo.data.sources import build_game_data, build_tokenizer\n"
        "cfg = compose_cfg(['data=hh_rlhf'])\n"
        "d = build_game_data(cfg, None)\n"
        "t = build_tokenizer(cfg, None, d)\n"
        "print(hashlib.sha1(t.backend_tokenizer.to_str().encode()).hexdigest())\n"
        "print(hashlib.sha1(repr((d.sft, d.human_train, d.golden, d.test_prompts)).encode()).hexdigest())\n"
    )
    root = Path(__file__).resolve().parents[1]
    outs = [
        subprocess.run(
            [sys.executable, "-c", code],
            cwd=root,
            env={**os.environ, "PYTHONHASHSEED": seed, "OMP_NUM_THREADS": "1"},
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        ).stdout.split()
        for seed in ("1", "2")
    ]
    assert len(outs[0]) == 2 and outs[0] == outs[1]
