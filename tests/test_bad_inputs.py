"""Bad input at every entry point gets a clear error before any work is done: the error's type,
a message that names the key, file, record or field at fault, and nothing partial left behind.

Real files and real commands: configs composed as `apo-train` composes them and played with
`train(cfg)`, data and checkpoint files written here, the step commands called as their
console scripts call them, and two runs of the real `apo-train` command line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import InstantiationException

from apo.data.adapters import DataFormatError
from apo.modules.backbones import CheckpointError
from apo.report import main as report_main
from apo.steps.generate import generate
from apo.steps.rejection_sample import rejection_sample
from apo.steps.score import score
from apo.steps.train_rm import train_rm
from apo.tasks import SortTask
from apo.train import train
from apo.validation import ConfigError
from tests.conftest import DATA_DIR, ROOT, compose_cfg
from tests.test_steps import QUESTIONS, players, step_cfg  # noqa: F401 (fixture)

HH = DATA_DIR / "hh-rlhf" / "harmless-base" / "test.jsonl.gz"
#: file data within the tiny players' 64 positions
FILE_BUDGETS = ["data.max_prompt_len=32", "data.max_len=48"]


class DigitsOnlyTask(SortTask):
    """The sort task with a tokenizer that cannot spell its own `=`: a broken task."""

    alphabet = "0123456789"


# ---- apo-train: the config ----------------------------------------------------------------------
#: (overrides, error type, what the message must name)
CONFIG_CASES = [
    (["game.rounds=-1"], ConfigError, r"game\.rounds=-1: .*greater than or equal to 0"),
    (["game.rounds=abc"], ConfigError, r"game\.rounds='abc': .*valid integer"),
    (["game.rounds=1.5"], ConfigError, r"game\.rounds=1\.5"),
    (["game.samples_per_prompt=0"], ConfigError, r"game\.samples_per_prompt=0"),
    (["objective=dpo", "game.samples_per_prompt=1"], ConfigError, r"samples_per_prompt=1: .*dpo"),
    (["objective=lipo", "game.samples_per_prompt=1"], ConfigError, r"samples_per_prompt=1"),
    (["objective.lr=abc"], ConfigError, r"objective\.lr='abc': .*number"),
    (["objective=dpo", "objective.lr=-1e-4"], ConfigError, r"objective\.lr=-0\.0001"),
    (["objective.mixture=1.5"], ConfigError, r"objective\.mixture=1\.5"),
    (["game.apo_coeff=-1"], ConfigError, r"game\.apo_coeff=-1"),
    (["game.apo_loss=hinge"], ConfigError, r"game\.apo_loss='hinge'"),
    (["game.rm_loss=nope"], ConfigError, r"game\.rm_loss='nope': must be one of"),
    (["game.rm_kl_coeff=-0.5"], ConfigError, r"game\.rm_kl_coeff=-0\.5"),
    (["game.rm_margin=-1"], ConfigError, r"game\.rm_margin=-1"),
    (["game.eval_samples_per_prompt=0"], ConfigError, r"game\.eval_samples_per_prompt=0"),
    (["+game.apo_coef=1"], ConfigError, r"game\.apo_coef=1: unknown key"),
    (["game.guard.action=halt"], ConfigError, r"game\.guard\.action='halt'"),
    (["game.guard.max_kl=-1"], ConfigError, r"game\.guard\.max_kl=-1"),
    (["objective=dpo", "objective.loss.beta=0"], ConfigError, r"objective\.loss\.beta=0"),
    (["objective=dpo", "objective.loss.label_smoothing=0.7"], ConfigError, r"label_smoothing"),
    (["objective=dpo", "objective.loss.pairs=every"], ConfigError, r"objective\.loss\.pairs"),
    (["objective=ipo", "objective.loss.beta=-2"], ConfigError, r"objective\.loss\.beta=-2"),
    (["objective.loss.top_n=0"], ConfigError, r"objective\.loss\.top_n=0"),
    (["objective.loss.top_n=9"], ConfigError, r"objective\.loss\.top_n=9: more than the 4"),
    (["+objective.loss.gamma=1"], ConfigError, r"objective\.loss\.gamma=1: unknown key"),
    (["objective=rrhf", "objective.loss.sft_weight=-1"], ConfigError, r"sft_weight=-1"),
    (["policy.generation.max_new_tokens=0"], ConfigError, r"max_new_tokens=0"),
    (["policy.generation.temperature=0"], ConfigError, r"policy\.generation\.temperature=0"),
    (["policy.generation.top_p=1.5"], ConfigError, r"policy\.generation\.top_p=1\.5"),
    (["policy.optimizer.lr=abc"], ConfigError, r"policy\.optimizer\.lr='abc'"),
    (["rm.optimizer.lr=0"], ConfigError, r"rm\.optimizer\.lr=0"),
    (["rm.pooling=mean"], ConfigError, r"rm\.pooling='mean'"),
    (["rm.batch_size=0"], ConfigError, r"rm\.batch_size=0"),
    (["policy.sft_batch_size=-4"], ConfigError, r"policy\.sft_batch_size=-4"),
    (["rm.calibration_bins=0"], ConfigError, r"rm\.calibration_bins=0"),
    (["policy.lora.r=0"], ConfigError, r"policy\.lora\.r=0"),
    (["policy.prompt_template='Q: A:'"], ConfigError, r"prompt_template=.*placeholder"),
    (["data.sizes.n_sft=-1"], ConfigError, r"data\.sizes=.*>= 0"),
    (["data.overlength=drop"], ConfigError, r"data\.overlength='drop'"),
    (["data.max_len=128"], ConfigError, r"(policy|rm): .*tokens .*max_position_embeddings=64"),
    (
        ["data.max_len=40", "data.max_prompt_len=48"],
        ConfigError,
        r"data\.max_len=40: below data\.max_prompt_len",
    ),
    (["data.max_prompt_len=1"], ConfigError, r"data\.max_prompt_len=1"),
    (["strategy.devices=2"], ConfigError, r"strategy\.devices=2: strategy auto runs one"),
    (
        ["strategy=deepspeed_stage_3", "+strategy.zero.stage3_max_live=9"],
        ConfigError,
        r"strategy\.zero.*zero\.stage3_max_live: unknown",
    ),
    (
        ["strategy=deepspeed_stage_3", "strategy.zero.reduce_bucket_size=1.5"],
        ConfigError,
        r"strategy\.zero.*reduce_bucket_size: expected auto, null or a positive integer, got 1\.5",
    ),
    (["policy.round.max_epochs=x"], ConfigError, r"policy\.round\.max_epochs='x'"),
    (["+trainer.max_epoch=2"], ConfigError, r"trainer\.max_epoch: not a Lightning Trainer"),
    (["+rm.warmup.max_stepz=3"], ConfigError, r"rm\.warmup\.max_stepz: not a Lightning"),
    (["trainer.gradient_clip_val=-1"], ConfigError, r"trainer\.gradient_clip_val=-1"),
    (["trainer.accumulate_grad_batches=0"], ConfigError, r"accumulate_grad_batches=0: .*>= 1"),
    (
        ["objective=ppo", "trainer.accumulate_grad_batches=2"],
        ConfigError,
        r"trainer\.accumulate_grad_batches=2: objective=ppo steps its optimizer itself",
    ),
    (
        ["objective=grpo", "+policy.round.accumulate_grad_batches=2"],
        ConfigError,
        r"policy\.round\.accumulate_grad_batches=2: objective=grpo",
    ),
    (["resume=maybe"], ConfigError, r"resume='maybe'"),
    (["tensorboard_flush_secs=0"], ConfigError, r"tensorboard_flush_secs=0"),
    (["seed=-1"], ConfigError, r"seed=-1"),
    (["+resume_allow=objective.lr"], Exception, r"resume_allow"),
]


@pytest.mark.parametrize(
    ("overrides", "error", "message"), CONFIG_CASES, ids=[" ".join(c[0]) for c in CONFIG_CASES]
)
def test_bad_config_is_refused_before_anything_runs(tmp_path, overrides, error, message):
    run = tmp_path / "run"
    with pytest.raises(error, match=message):
        train(compose_cfg(["experiment=tiny", *overrides], run_dir=run))
    assert not run.exists()


# ---- apo-train: what the config points at -------------------------------------------------------
def _game_error(tmp_path: Path, overrides: list[str], error, message: str) -> None:
    run = tmp_path / "run"
    with pytest.raises(error, match=message):
        train(compose_cfg(["experiment=tiny", *overrides], run_dir=run))
    assert not run.exists() or not any(run.iterdir()), sorted(run.rglob("*"))


def test_checkpoint_that_is_not_a_directory(tmp_path):
    _game_error(
        tmp_path,
        [f"policy.model_name_or_path={tmp_path / 'nowhere'}"],
        FileNotFoundError,
        r"policy\.model_name_or_path=.*nowhere.*not an existing directory",
    )


def test_hub_name_is_never_downloaded(tmp_path):
    _game_error(
        tmp_path,
        ["rm.model_name_or_path=gpt2"],
        FileNotFoundError,
        r"rm\.model_name_or_path='gpt2': not an existing directory.*no downloads",
    )


def test_bad_task_argument(tmp_path):
    _game_error(tmp_path, ["task.min_len=0"], InstantiationException, r"min_len")


def test_task_texts_the_tokenizer_cannot_spell(tmp_path):
    _game_error(
        tmp_path,
        [f"task._target_={__name__}.DigitsOnlyTask"],
        DataFormatError,
        r"task DigitsOnlyTask, field 'prompt': sft item 0: .* characters the tokenizer does not "
        r"know \(=\)",
    )


def test_golden_answers_over_max_new_tokens(tmp_path):
    _game_error(
        tmp_path,
        ["policy.generation.max_new_tokens=5"],
        DataFormatError,
        r"field '(demonstration|golden)': \w+ item \d+: \d+ tokens .* over "
        r"policy\.generation\.max_new_tokens=5",
    )


def test_prompts_over_max_prompt_len(tmp_path):
    _game_error(
        tmp_path,
        ["data.max_prompt_len=6", "policy.generation.max_new_tokens=12"],
        DataFormatError,
        r"field 'prompt': sft item \d+: \d+ tokens over data\.max_prompt_len=6",
    )


def test_unknown_round_phase(tmp_path):
    _game_error(
        tmp_path,
        ["game.round_phases=[generate,rm_fit,scoring]"],
        ValueError,
        r"game\.round_phases: unknown phases \['scoring'\]",
    )


def _need_hh() -> Path:
    if not HH.is_file():
        pytest.skip(f"real data file {HH} is absent (set APO_DATA_DIR to the shared data dir)")
    return HH


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d, r"is a directory; expected a JSON"),
        (lambda d: d / "missing.jsonl", r"missing\.jsonl: no such file"),
        (lambda d: _write(d / "bad.jsonl", '{"chosen": "a"\n'), r"bad\.jsonl, line 1: malformed"),
        (lambda d: _write(d / "gz.jsonl.gz", "not gzip"), r"gz\.jsonl\.gz.*"),
        (lambda d: _write(d / "e.jsonl", "\n\n"), r"e\.jsonl.*no record"),
    ],
    ids=["directory", "missing", "malformed", "not-gzip", "empty"],
)
def test_bad_data_files(tmp_path, make, message):
    path = make(tmp_path)
    _game_error(
        tmp_path,
        ["data=hh_rlhf", f"data.path={path}", "game.rounds=1", *FILE_BUDGETS],
        DataFormatError,
        message,
    )


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_comparisons_with_nan_scores(tmp_path):
    comp = _write(
        tmp_path / "c.jsonl",
        json.dumps({"text": ["q<sep>a", "q<sep>b"], "scores": [1.0, float("nan")]}) + "\n",
    )
    _game_error(
        tmp_path,
        ["data=apo_files", f"data.comparisons={comp}", *FILE_BUDGETS],
        DataFormatError,
        r"c\.jsonl, line 1, field 'scores",
    )


def test_golden_file_with_a_repeated_query_id(tmp_path):
    golden = _write(
        tmp_path / "g.jsonl",
        '{"query_id": 1, "golden": "a"}\n{"query_id": 1, "golden": "b"}\n',
    )
    comp = _write(
        tmp_path / "c.jsonl", json.dumps({"text": ["q<sep>a", "q<sep>b"], "scores": [1, 0]})
    )
    _game_error(
        tmp_path,
        [
            "data=apo_files",
            f"data.comparisons={comp}",
            f"data.golden={golden}",
            f"data.rm_queries={golden}",
            "data.sizes.n_rm=0",
            *FILE_BUDGETS,
        ],
        DataFormatError,
        r"g\.jsonl, line 2, field 'query_id': duplicate",
    )


def test_file_data_prompt_over_budget_with_overlength_error(tmp_path):
    _need_hh()
    _game_error(
        tmp_path,
        ["data=hh_rlhf", "data.overlength=error", "game.rounds=1", *FILE_BUDGETS],
        DataFormatError,
        r"test\.jsonl\.gz, field '\w+(\[\d\])?': \w+ item \d+: .*over",
    )


# ---- the step commands ---------------------------------------------------------------------------
def _no_output(out: Path) -> None:
    assert not out.exists() and not list(out.parent.glob(f".{out.name}*"))


@pytest.fixture
def broken_players(tmp_path, players):  # noqa: F811
    """Copies of the saved players with damage: a truncated weights file, no tokenizer."""
    truncated, untokenized = tmp_path / "truncated", tmp_path / "untokenized"
    for d in (truncated, untokenized):
        shutil.copytree(players / "policy", d / "policy")
    w = truncated / "policy" / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    for f in (untokenized / "policy").glob("tokenizer*"):
        f.unlink()
    return truncated, untokenized


def _queries(tmp_path: Path, rows: list[dict], name: str = "q.jsonl") -> Path:
    return _write(tmp_path / name, "".join(json.dumps(r) + "\n" for r in rows))


def test_generate_bad_inputs(tmp_path, players, broken_players):  # noqa: F811
    out = tmp_path / "out.jsonl"
    q = _queries(tmp_path, [{"query_id": i, "query": QUESTIONS[i]} for i in range(3)])

    def run(*overrides):
        return generate(step_cfg("generate", [f"output={out}", *overrides]))

    with pytest.raises(ValueError, match="num_samples must be at least 1"):
        run(f"model={players}", f"prompts={q}", "num_samples=0")
    with pytest.raises(DataFormatError, match=r"is a directory"):
        run(f"model={players}", f"prompts={tmp_path}")
    with pytest.raises(DataFormatError, match=r"missing\.jsonl: no such file"):
        run(f"model={players}", f"prompts={tmp_path / 'missing.jsonl'}")
    dup = _queries(
        tmp_path, [{"query_id": 1, "query": "a"}, {"query_id": 1, "query": "b"}], "d.jsonl"
    )
    with pytest.raises(DataFormatError, match=r"d\.jsonl, line 2, field 'query_id': duplicate"):
        run(f"model={players}", f"prompts={dup}")
    with pytest.raises(FileNotFoundError, match=r"no saved policy here"):
        run(f"model={tmp_path}", f"prompts={q}")
    truncated, untokenized = broken_players
    with pytest.raises(CheckpointError, match=r"truncated/policy'?: cannot load the policy"):
        run(f"model={truncated}", f"prompts={q}")
    with pytest.raises(CheckpointError, match=r"untokenized/policy: no tokenizer in it"):
        run(f"model={untokenized}", f"prompts={q}")
    _no_output(out)


def test_score_bad_inputs(tmp_path, players):  # noqa: F811
    out = tmp_path / "scored.jsonl"

    def run(samples, *overrides):
        return score(
            step_cfg(
                "score", [f"rm.path={players}", f"samples={samples}", f"output={out}", *overrides]
            )
        )

    one = _queries(tmp_path, [{"query_id": "a", "query": "q?", "sample_0": "x"}])
    with pytest.raises(DataFormatError, match=r"q\.jsonl, line 1, field 'sample_1': .* 1 sample"):
        run(one)
    bad = _write(tmp_path / "bad.json", '[{"query_id": "a", "query": "q?", "sample_0": }]')
    with pytest.raises(DataFormatError, match=r"bad\.json, line 1: malformed JSON"):
        run(bad)
    long = _queries(
        tmp_path, [{"query_id": "a", "query": "q?", "sample_0": "x " * 300, "sample_1": "y"}]
    )
    with pytest.raises(DataFormatError, match=r"field 'sample_0': query_id 'a'.*over max_len"):
        run(long, "overlength=error")
    with pytest.raises(ValueError, match=r"rm\.pooling must be one of"):
        run(
            _queries(
                tmp_path, [{"query_id": "a", "query": "q?", "sample_0": "x", "sample_1": "y"}]
            ),
            "rm.pooling=mean",
        )
    with pytest.raises(FileNotFoundError, match=r"no saved rm here"):
        score(step_cfg("score", [f"rm.path={tmp_path}", f"samples={one}", f"output={out}"]))
    _no_output(out)


def test_rejection_sample_bad_inputs(tmp_path):
    out = tmp_path / "best.jsonl"

    def run(path, *overrides):
        return rejection_sample(
            step_cfg("rejection_sample", [f"input={path}", f"output={out}", *overrides])
        )

    unscored = _queries(
        tmp_path, [{"query_id": "a", "query": "q?", "sample_0": "x", "sample_1": "y"}]
    )
    with pytest.raises(DataFormatError, match=r"expected scored samples"):
        run(unscored)
    dup = _write(
        tmp_path / "c.jsonl",
        json.dumps({"query_id": 7, "text": ["q<sep>a", "q<sep>b"], "scores": [1, 0]})
        + "\n"
        + json.dumps({"query_id": 7, "text": ["r<sep>a", "r<sep>b"], "scores": [1, 0]})
        + "\n",
    )
    # the input file is named, not the output file it would have been written to
    with pytest.raises(
        DataFormatError, match=r"c\.jsonl, line 2, field 'query_id': duplicate query_id '7'"
    ):
        run(dup)
    _no_output(out)


def test_train_rm_bad_inputs(tmp_path):
    out = tmp_path / "rm_out"
    comp = _write(
        tmp_path / "c.jsonl",
        "".join(
            json.dumps({"query_id": i, "text": [f"q{i}<sep>a", f"q{i}<sep>b"], "scores": [1, 0]})
            + "\n"
            for i in range(4)
        ),
    )

    def run(*overrides):
        return train_rm(step_cfg("train_rm", [f"comparisons={comp}", f"output={out}", *overrides]))

    golden = _write(tmp_path / "g.jsonl", '{"query_id": 9, "golden": "best"}\n')
    with pytest.raises(ValueError, match=r"needs both golden= .* and samples="):
        run(f"golden={golden}")
    samples = _queries(tmp_path, [{"query_id": 1, "query": "q1", "sample_0": "x"}])
    with pytest.raises(
        DataFormatError, match=r"q\.jsonl, line 1, field 'query_id': query_id '1' has no golden"
    ):
        run(f"golden={golden}", f"samples={samples}")
    nan = _write(
        tmp_path / "n.jsonl",
        json.dumps({"text": ["q<sep>a", "q<sep>b"], "scores": [1, "x"]}) + "\n",
    )
    with pytest.raises(DataFormatError, match=r"n\.jsonl, line 1, field 'scores"):
        train_rm(step_cfg("train_rm", [f"comparisons={nan}", f"output={out}"]))
    assert not out.exists() and not list(tmp_path.glob(".rm_out*"))


def test_report_bad_inputs(tmp_path, capsys):
    assert report_main([str(tmp_path / "nowhere")]) == 2
    assert "nowhere is not a directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert report_main([str(tmp_path / "empty")]) == 2
    assert "no run directories" in capsys.readouterr().err
    assert not (tmp_path / "empty" / "report").exists()


# ---- the real command line ---------------------------------------------------------------------
def _apo_train(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("apo-train") or str(Path(sys.executable).parent / "apo-train")
    return subprocess.run([exe, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_cli_bad_config_exits_non_zero_and_leaves_no_run_dir(tmp_path):
    run = tmp_path / "run"
    proc = _apo_train("game.rounds=-1", f"hydra.run.dir={run}")
    assert proc.returncode != 0
    assert "game.rounds=-1" in proc.stderr
    assert not run.exists()


def test_cli_refused_resume_leaves_the_run_dir_as_it_was(tmp_path):
    run = tmp_path / "run"
    first = _apo_train(
        "experiment=tiny", "game.rounds=1", "game.save_weights=false", f"hydra.run.dir={run}"
    )
    assert first.returncode == 0, first.stderr[-2000:]
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    proc = _apo_train(
        "experiment=tiny",
        "game.rounds=1",
        "game.save_weights=false",
        "game.apo_coeff=0.5",
        "resume=true",
        f"hydra.run.dir={run}",
    )
    assert proc.returncode != 0
    assert "game.apo_coeff: saved 1.0, now 0.5" in proc.stderr
    after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert after == before  # .hydra/ config and overrides, train.log, state: untouched
    assert "game.apo_coeff=0.5" not in (run / ".hydra" / "overrides.yaml").read_text()
