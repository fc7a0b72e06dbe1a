"""The step-by-step commands on small files: generate -> score -> rejection-sample -> train-rm,
on tiny saved players and on a real game's round dir, and every kind of bad input (each a clear
error naming the file, line and field, and no output written)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from transformers import AutoModelForSequenceClassification, LlamaConfig

from apo.data.adapters import DataFormatError, load_comparisons, load_golden, load_samples
from apo.data.text_tokenizer import train_bpe_tokenizer
from apo.game import GameLoop
from apo.modules.backbones import build_causal_lm, build_sequence_classifier
from apo.records import read_jsonl
from apo.steps.generate import generate
from apo.steps.rejection_sample import rejection_sample
from apo.steps.score import score
from apo.steps.train_rm import train_rm
from apo.train import CONFIG_MODULE
from tests.conftest import compose_cfg

QUESTIONS = [f"\n\nHuman: what is {a} plus {b}?\n\nAssistant:" for a in range(6) for b in range(4)]
ANSWERS = [f"It is {a + b}." for a in range(6) for b in range(4)]
TINY_RM = [
    "rm.backbone.hidden_size=32",
    "rm.backbone.intermediate_size=64",
    "rm.backbone.num_hidden_layers=1",
    "rm.backbone.num_attention_heads=2",
    "rm.backbone.num_key_value_heads=2",
]


def step_cfg(name: str, overrides: list[str]):
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


def _backbone() -> LlamaConfig:
    return LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )


@pytest.fixture(scope="module")
def players(tmp_path_factory) -> Path:
    """A dir shaped like a game round dir: `policy/` and `rm/`, tiny, randomly initialised."""
    d = tmp_path_factory.mktemp("players")
    tok = train_bpe_tokenizer(QUESTIONS + ANSWERS, vocab_size=300)
    for name, model in (
        ("policy", build_causal_lm(_backbone(), tok, 0)),
        ("rm", build_sequence_classifier(_backbone(), tok, 1)),
    ):
        model.save_pretrained(str(d / name))
        tok.save_pretrained(str(d / name))
    return d


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture
def queries(tmp_path) -> Path:
    return _jsonl(
        tmp_path / "queries.jsonl",
        [{"query_id": f"q{i}", "query": q} for i, q in enumerate(QUESTIONS[:6])],
    )


def _generate(players: Path, prompts: Path, out: Path, *extra: str) -> list[dict]:
    return generate(
        step_cfg(
            "generate",
            [
                f"model={players}",
                f"prompts={prompts}",
                f"output={out}",
                "num_samples=3",
                "generation.max_new_tokens=8",
                *extra,
            ],
        )
    )


# ---- the chain -------------------------------------------------------------------------------
def test_generate_score_rejection_sample_train_rm_chain(tmp_path, players, queries):
    samples = tmp_path / "samples.jsonl"
    _generate(players, queries, samples)
    recs = load_samples(samples, k=3)
    assert [r["query_id"] for r in recs] == [f"q{i}" for i in range(6)]
    assert [r["query"] for r in recs] == QUESTIONS[:6]
    first = samples.read_bytes()
    _generate(players, queries, samples)  # same seed, same samples
    assert samples.read_bytes() == first
    _generate(players, queries, samples, "seed=1")
    assert samples.read_bytes() != first

    scored = tmp_path / "scored.json"
    items = score(
        step_cfg("score", [f"rm.path={players}", f"samples={samples}", f"output={scored}"])
    )
    back = load_comparisons(scored)
    assert [it.prompt for it in back] == QUESTIONS[:6]
    assert [it.responses for it in back] == [r["samples"] for r in load_samples(samples)]
    assert all(math.isfinite(s) for it in back for s in it.scores)
    assert [s for it in back for s in it.scores] == pytest.approx(
        [s for it in items for s in it.scores]
    )
    assert [r["query_id"] for r in json.loads(scored.read_text())] == [f"q{i}" for i in range(6)]
    # the scores are the RM's: the same sequence scored alone gives the same reward
    from apo.game.players import reward_module
    from apo.steps.common import datamodule, load_tokenizer

    cfg = step_cfg("score", [f"rm.path={players}", "samples=x", "output=y"])
    tok = load_tokenizer(players / "rm")
    model = AutoModelForSequenceClassification.from_pretrained(str(players / "rm"))
    rm = reward_module(model, cfg.rm.pooling, tok.eos_token_id)
    dm = datamodule(tok, cfg)
    seq = dm.text_item(0, back[0].prompt, back[0].responses[1:2], [0.0])["seqs"][0]
    with torch.no_grad():
        alone = rm(torch.tensor([seq]), torch.ones(1, len(seq), dtype=torch.long))
    assert float(alone) == pytest.approx(back[0].scores[1], abs=1e-5)

    best, golden = tmp_path / "best.jsonl", tmp_path / "golden.jsonl"
    rejection_sample(
        step_cfg(
            "rejection_sample",
            [f"input={scored}", f"output={best}", "top_n=2", f"golden_output={golden}"],
        )
    )
    kept = load_samples(best, k=2)
    for it, rec in zip(back, kept):
        order = sorted(range(3), key=lambda j: -it.scores[j])
        assert rec["samples"] == [it.responses[order[0]], it.responses[order[1]]]
    assert load_golden(golden) == {r["query_id"]: r["samples"][0] for r in kept}

    base_dir, apo_dir = tmp_path / "rm_base", tmp_path / "rm_apo"
    common = [f"comparisons={scored}", f"val={scored}", "fit.max_epochs=2", *TINY_RM]
    base = train_rm(step_cfg("train_rm", [*common, f"output={base_dir}"]))
    assert base["apo_items"] == 0 and "rm/train/loss_apo" not in base
    assert 0.0 <= base["rm/val/acc"] <= 1.0
    apo = train_rm(
        step_cfg(
            "train_rm",
            [
                *common,
                f"output={apo_dir}",
                f"init={players}",
                f"golden={golden}",
                f"samples={samples}",
                "game.apo_coeff=0.5",
            ],
        )
    )
    assert apo["apo_items"] == 6 and math.isfinite(apo["rm/train/loss_apo"])
    for d in (base_dir, apo_dir):
        model = AutoModelForSequenceClassification.from_pretrained(str(d))
        assert model.config.num_labels == 1
        assert json.loads((d / "train_metrics.json").read_text())["human_items"] == 6
    # APO training started from the given RM and moved it
    start = AutoModelForSequenceClassification.from_pretrained(str(players / "rm"))
    moved = AutoModelForSequenceClassification.from_pretrained(str(apo_dir))
    assert not torch.equal(start.score.weight, moved.score.weight)
    assert start.config.vocab_size == moved.config.vocab_size


def test_commands_read_a_game_round_dir(tmp_path):
    """A real 1-round game's saved round: its policy generates, its RM scores, and its own
    samples.jsonl (with rm_score) is rejection-sampled per split and prompt."""
    run = tmp_path / "run"
    GameLoop(compose_cfg(["experiment=tiny", "game.rounds=1"], run_dir=run)).run()
    rd = run / "rounds" / "round_01"
    out = tmp_path / "gen.jsonl"
    recs = _generate(rd, rd / "eval_samples.jsonl", out, "max_prompt_len=32")
    prompts = list(dict.fromkeys(r["prompt"] for r in read_jsonl(rd / "eval_samples.jsonl")))
    assert [r["query"] for r in recs] == prompts
    assert [r["query_id"] for r in recs] == [f"test/{i}" for i in range(len(prompts))]
    scored = tmp_path / "scored.jsonl"
    score(step_cfg("score", [f"rm.path={rd}", f"samples={out}", f"output={scored}"]))
    assert len(load_comparisons(scored)) == len(prompts)
    best = tmp_path / "best.jsonl"
    kept = rejection_sample(
        step_cfg("rejection_sample", [f"input={rd / 'samples.jsonl'}", f"output={best}"])
    )
    rows = [r for r in read_jsonl(rd / "samples.jsonl") if r["response"].strip()]
    for rec in kept:
        split, _ = rec["query_id"].split("/")
        mine = [r for r in rows if r["split"] == split and r["prompt"] == rec["query"]]
        top = max(mine, key=lambda r: r["rm_score"])
        assert rec["samples"][0] == top["response"]
    assert {r["query_id"].split("/")[0] for r in kept} == {"rm", "policy"}


def test_generate_best_of_n_keeps_the_rms_pick_of_each_group_of_draws(tmp_path, players, queries):
    """best_of=3, num_samples=2: the 6 draws of a seed, scored by the RM, best of each 3."""
    draws, best = tmp_path / "draws.jsonl", tmp_path / "best.jsonl"
    _generate(players, queries, draws, "num_samples=6")
    scored = score(
        step_cfg(
            "score", [f"rm.path={players}", f"samples={draws}", f"output={tmp_path / 's.json'}"]
        )
    )
    recs = _generate(players, queries, best, "num_samples=2", "best_of=3", f"rm.path={players}")
    for rec, item in zip(recs, scored):
        picks = [max(range(g, g + 3), key=lambda j: (item.scores[j], -j)) for g in (0, 3)]
        assert rec["samples"] == [item.responses[j] for j in picks]
    assert [r["samples"] for r in load_samples(best)] == [r["samples"] for r in recs]


def test_generate_lookahead_finds_responses_the_rm_scores_higher(tmp_path, players, queries):
    plain, guided = tmp_path / "plain.jsonl", tmp_path / "guided.jsonl"
    _generate(players, queries, plain, "num_samples=4")
    extra = ("num_samples=2", "lookahead.beams=2", "lookahead.expand=3", "lookahead.chunk=3")
    recs = _generate(players, queries, guided, *extra, f"rm.path={players}")
    assert all(len(r["samples"]) == 2 and all(t.strip() for t in r["samples"]) for r in recs)
    again = _generate(players, queries, tmp_path / "again.jsonl", *extra, f"rm.path={players}")
    assert again == recs  # a seed's search is reproducible

    def mean_score(path: Path) -> float:
        out = tmp_path / f"{path.stem}_scored.json"
        items = score(step_cfg("score", [f"rm.path={players}", f"samples={path}", f"output={out}"]))
        return sum(s for it in items for s in it.scores) / sum(len(it.scores) for it in items)

    assert mean_score(guided) > mean_score(plain)


def test_generate_best_of_n_needs_an_rm(tmp_path, players, queries):
    out = tmp_path / "x.jsonl"
    with pytest.raises(ValueError, match="need rm.path"):
        _generate(players, queries, out, "best_of=2")
    assert not out.exists()


# ---- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("lines", "match"),
    [
        (['{"query_id": 1, "query": "a"}', '{"query_id": 2, "query": '], "line 2: malformed JSON"),
        (['{"query_id": 1}'], "line 1, field 'query': missing"),
        (['{"query_id": [1], "query": "a"}'], "line 1, field 'query_id': expected a string or"),
        (['{"query_id": 1, "query": "  "}'], "line 1, field 'query': expected a non-empty string"),
        (['{"query_id": 1, "query": "a"}', '{"query_id": "1", "query": "b"}'], "line 2, field"),
        (["", "  "], "the file holds no records"),
    ],
)
def test_generate_bad_prompts(tmp_path, players, lines, match):
    prompts = _jsonl(tmp_path / "prompts.jsonl", lines)
    out = tmp_path / "out.jsonl"
    with pytest.raises(DataFormatError, match=r"prompts\.jsonl(, |: )" + match):
        _generate(players, prompts, out)
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def _samples_file(path: Path, samples: list[list[str]]) -> Path:
    rows = [
        {"query_id": i, "query": QUESTIONS[i], **{f"sample_{j}": s for j, s in enumerate(ss)}}
        for i, ss in enumerate(samples)
    ]
    return _jsonl(path, rows)


def test_score_bad_samples_leave_the_old_output(tmp_path, players):
    out = tmp_path / "scored.jsonl"
    out.write_text("old\n")

    def run(f, *o):
        return score(step_cfg("score", [f"rm.path={players}", f"samples={f}", f"output={out}", *o]))

    empty = _samples_file(tmp_path / "s.jsonl", [["It is 1.", "It is 2."], ["It is 3.", " "]])
    with pytest.raises(
        DataFormatError, match=r"s\.jsonl, line 2, field 'sample_1': expected a non-empty string"
    ):
        run(empty)
    gap = _jsonl(
        tmp_path / "g.jsonl", [{"query_id": 0, "query": "q", "sample_0": "a", "sample_2": "b"}]
    )
    with pytest.raises(DataFormatError, match=r"g\.jsonl, line 1, field 'sample_1': missing"):
        run(gap)
    single = _samples_file(tmp_path / "one.jsonl", [["It is 1."]])
    with pytest.raises(DataFormatError, match=r"one\.jsonl, line 1, field 'sample_1'.*at least 2"):
        run(single)
    long = _samples_file(
        tmp_path / "long.jsonl", [["It is 1.", "It is 2."], ["It is 3.", "It is 4. " * 40]]
    )
    with pytest.raises(
        DataFormatError, match=r"long\.jsonl, line 2, field 'sample_1'.*over max_len=128"
    ):
        run(long, "overlength=error")
    assert out.read_text() == "old\n"
    items = run(long, "overlength=skip")
    assert [it.prompt for it in items] == [QUESTIONS[0]] and len(load_comparisons(out)) == 1
    # truncate (the game's rule) keeps the query and scores the cut sequence
    assert len(run(long, "overlength=truncate")) == 2


def test_rejection_sample_bad_scores(tmp_path):
    out = tmp_path / "best.jsonl"

    def run(f, *o):
        return rejection_sample(step_cfg("rejection_sample", [f"input={f}", f"output={out}", *o]))

    nan = tmp_path / "nan.jsonl"
    nan.write_text(
        '{"text": ["q<sep>a", "q<sep>b"], "scores": [1.0, 0.5]}\n'
        '{"text": ["r<sep>a", "r<sep>b"], "scores": [1.0, NaN]}\n'
    )
    with pytest.raises(
        DataFormatError, match=r"nan\.jsonl, line 2, field 'scores\[1\]': expected a finite number"
    ):
        run(nan)
    typed = _jsonl(
        tmp_path / "typed.jsonl", [{"text": ["q<sep>a", "q<sep>b"], "scores": [1, "high"]}]
    )
    with pytest.raises(
        DataFormatError, match=r"field 'scores\[1\]': expected a finite number, found string"
    ):
        run(typed)
    rows = [
        {"split": "policy", "prompt": "p", "response": "a", "rm_score": 0.1},
        {"split": "policy", "prompt": "p", "response": "b", "rm_score": None},
    ]
    with pytest.raises(DataFormatError, match=r"rows\.jsonl, line 2, field 'rm_score': missing"):
        run(_jsonl(tmp_path / "rows.jsonl", rows))
    unscored = _samples_file(tmp_path / "u.jsonl", [["a", "b"]])
    with pytest.raises(DataFormatError, match="score them with apo-score first"):
        run(unscored)
    unknown = _jsonl(tmp_path / "x.jsonl", [{"foo": 1}])
    with pytest.raises(DataFormatError, match="unknown record format"):
        run(unknown)
    with pytest.raises(ValueError, match="top_n must be at least 1"):
        run(nan, "top_n=0")
    assert not out.exists()


def test_train_rm_bad_inputs_leave_the_old_model(tmp_path, players):
    comparisons = tmp_path / "c.jsonl"
    comparisons.write_text('{"text": ["q<sep>a", "q<sep>b"], "scores": [1, 0], "query_id": 0}\n')
    out = tmp_path / "rm"
    out.mkdir()
    (out / "keep.txt").write_text("old")

    def run(*o):
        return train_rm(
            step_cfg("train_rm", [f"comparisons={comparisons}", f"output={out}", *TINY_RM, *o])
        )

    golden = _jsonl(tmp_path / "golden.jsonl", [{"query_id": 0, "golden": "It is 1."}])
    samples = _samples_file(tmp_path / "s.jsonl", [["It is 2."], ["It is 3."]])
    with pytest.raises(
        DataFormatError, match=r"s\.jsonl, line 2, field 'query_id': query_id '1' has no golden"
    ):
        run(f"golden={golden}", f"samples={samples}")
    with pytest.raises(ValueError, match="needs both golden= .* and samples="):
        run(f"golden={golden}")
    one = _jsonl(tmp_path / "one.jsonl", [{"text": ["q<sep>a"], "scores": [1]}])
    with pytest.raises(
        DataFormatError, match=r"one\.jsonl, line 1, field 'text': expected at least 2 texts"
    ):
        run(f"comparisons={one}")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataFormatError, match=r"empty\.jsonl: the file holds no records"):
        run(f"comparisons={empty}")
    with pytest.raises(DataFormatError, match=r"no such file"):
        run(f"comparisons={tmp_path / 'missing.jsonl'}")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    # the same output dir is replaced whole by a good run
    run("fit.max_epochs=1")
    assert not (out / "keep.txt").exists() and (out / "config.json").is_file()


# ---- the console scripts ----------------------------------------------------------------------
@pytest.mark.slow
def test_console_scripts_chain_and_errors(tmp_path, players, queries):
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def cli(name: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(bin_dir / name), *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )

    r = cli(
        "apo-generate",
        f"model={players / 'policy'}",
        f"prompts={queries}",
        "output=s.jsonl",
        "num_samples=2",
        "generation.max_new_tokens=6",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    r = cli("apo-score", f"rm.path={players / 'rm'}", "samples=s.jsonl", "output=c.jsonl")
    assert r.returncode == 0, r.stderr[-2000:]
    r = cli("apo-rejection-sample", "input=c.jsonl", "output=best.jsonl")
    assert r.returncode == 0, r.stderr[-2000:]
    r = cli("apo-train-rm", "comparisons=c.jsonl", "output=rm_out", *TINY_RM)
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(load_samples(tmp_path / "best.jsonl", k=1)) == 6
    assert (tmp_path / "rm_out" / "model.safetensors").is_file()
    # nothing but the outputs: no Hydra run dir or log file in the working dir
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "best.jsonl",
        "c.jsonl",
        "queries.jsonl",
        "rm_out",
        "s.jsonl",
    ]
    (tmp_path / "bad.jsonl").write_text('{"text": ["q<sep>a", "q<sep>b"], "scores": [1, null]}\n')
    r = cli("apo-rejection-sample", "input=bad.jsonl", "output=out.jsonl")
    assert r.returncode != 0 and "bad.jsonl, line 1, field 'scores[1]'" in r.stderr
    assert not (tmp_path / "out.jsonl").exists()
