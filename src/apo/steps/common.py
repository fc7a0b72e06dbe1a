"""What the step-by-step commands share: loading saved players, a prediction Trainer, the
DataModule paths the game uses, and reading prompts and sample sets from any of the formats
(APO reference samples/comparisons, or the game's own `samples.jsonl` / `eval_samples.jsonl`)."""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig

from apo.config import plain
from apo.data.adapters import DataFormatError, load_comparisons, load_samples
from apo.data.adapters.errors import Where, require_object, require_query_id, require_str
from apo.data.adapters.jsonio import read_records
from apo.data.datamodule import GameDataModule
from apo.data.game_data import GameData

log = logging.getLogger(__name__)


# ---- players --------------------------------------------------------------------------------
def model_dir(path: str | Path, player: str) -> Path:
    """A saved player: `path` itself, or `path/<player>` for a game round dir
    (`rounds/round_XX/{policy,rm}`)."""
    path = Path(path)
    for d in (path / player, path):
        if (d / "config.json").is_file():
            return d
        if (d / "member_0" / "config.json").is_file():  # an RM ensemble's export
            raise FileNotFoundError(f"{d} holds an RM ensemble: pass one member, {d}/member_<i>")
    raise FileNotFoundError(
        f"{path}: no saved {player} here (expected config.json in it or in {path / player}); "
        "pass a save_pretrained dir or a game round dir with game.save_weights=true"
    )


def load_tokenizer(d: Path) -> Any:
    from transformers import AutoTokenizer

    from apo.modules.backbones import TOKENIZER_FILES, CheckpointError, reading

    if not any((Path(d) / f).is_file() for f in TOKENIZER_FILES):
        raise CheckpointError(
            f"{d}: no tokenizer in it (none of {', '.join(TOKENIZER_FILES)}); the step commands "
            "read players saved with their tokenizer (save_pretrained of both)"
        )
    with reading("tokenizer", d, "tokenizer"):
        tok = AutoTokenizer.from_pretrained(str(d))
    for name in ("pad_token", "eos_token"):
        if getattr(tok, name) is None:
            raise ValueError(f"{d}: the tokenizer has no {name}; the game needs pad and eos")
    return tok


def load_policy(path: str | Path) -> tuple[Any, Any]:
    """`(causal LM, tokenizer)` from a saved policy (or a round dir)."""
    from transformers import AutoModelForCausalLM

    from apo.modules.backbones import reading

    d = model_dir(path, "policy")
    tok = load_tokenizer(d)
    with reading("model", d, "policy"):
        model = AutoModelForCausalLM.from_pretrained(str(d))
    gc = model.generation_config
    gc.pad_token_id = gc.pad_token_id if gc.pad_token_id is not None else tok.pad_token_id
    gc.eos_token_id = gc.eos_token_id if gc.eos_token_id is not None else tok.eos_token_id
    return model, tok


# ---- Trainers and data ----------------------------------------------------------------------
def make_trainer(cfg: DictConfig, settings: dict[str, Any] | None = None) -> L.Trainer:
    """A Trainer from `cfg.trainer` and `cfg.strategy`, as the game builds them (no logger)."""
    from apo.strategies import build_strategy

    tcfg = dict(plain(cfg.trainer))
    tcfg.update(settings or {})
    strategy, devices = build_strategy(cfg.strategy)
    if tcfg.get("devices") is None:
        tcfg["devices"] = devices
    return L.Trainer(**tcfg, strategy=strategy, logger=False, default_root_dir=os.getcwd())


def datamodule(
    tok: Any, cfg: DictConfig, data: GameData | None = None, seed: int = 0
) -> GameDataModule:
    bs = int(cfg.batch_size)
    sizes = {"sft": bs, "policy": bs, "rm": bs, "apo": bs, "predict": bs}
    data = data or GameData()
    return GameDataModule(data, tok, sizes, int(cfg.max_prompt_len), int(cfg.max_len), seed=seed)


def check_lengths(
    dm: GameDataModule, path: Path, sets: list[SampleSet], overlength: str
) -> list[SampleSet]:
    """Apply `overlength` to prompt + sample token counts over `max_len`: `truncate` (cut, as
    the game does; counted in the log), `skip` (drop the query, counted) or `error`."""
    if overlength not in ("truncate", "skip", "error"):
        raise ValueError(f"overlength must be truncate, skip or error, got {overlength!r}")
    kept, over = [], 0
    for s in sets:
        p = len(dm.prompt_ids(s.query))
        j = next(
            (j for j, t in enumerate(s.samples) if p + len(dm.enc.response(t)) > dm.enc.max_len),
            None,
        )
        if j is None:
            kept.append(s)
            continue
        over += 1
        if overlength == "error":
            n = p + len(dm.enc.response(s.samples[j]))
            raise s.where.error(
                f"query_id {s.query_id!r}: prompt + response is {n} tokens, over max_len="
                f"{dm.enc.max_len}; raise max_len or set overlength=truncate|skip",
                f"sample_{j}",
            )
        if overlength == "truncate":
            kept.append(s)
    if over:
        log.warning(
            "%s: %d of %d queries have a sequence over max_len=%d (%s)",
            path,
            over,
            len(sets),
            dm.enc.max_len,
            "cut" if overlength == "truncate" else "skipped",
        )
    if not kept:
        raise DataFormatError(path, "no query left after skipping sequences over max_len")
    return kept


# ---- reading prompts and sample sets ----------------------------------------------------------
@dataclass
class SampleSet:
    """One query with its samples (and their scores, when the file holds them)."""

    query_id: str
    query: str
    samples: list[str]
    scores: list[float] | None
    where: Where


def _format(path: Path, first: Any) -> str:
    if not isinstance(first, dict):
        raise DataFormatError(path, "expected JSON objects as records", line=1)
    if "text" in first:
        return "comparisons"
    if "response" in first and "prompt" in first:
        return "game"
    if "query" in first:
        return "samples"
    raise DataFormatError(
        path,
        f"unknown record format (keys {sorted(first)}); expected APO samples (query_id, query, "
        "sample_0, ...), APO comparisons (text, scores) or the game's round samples (prompt, "
        "response, rm_score)",
    )


def read_sample_sets(path: str | Path, need_scores: bool = False) -> list[SampleSet]:
    """Sample sets from APO samples or comparisons files or the game's round sample files.

    Game rows are grouped by (split, prompt) in file order; their `query_id` is
    `<split>/<n>` and their scores the `rm_score` column. Empty game responses are skipped
    (counted in the log): the APO formats have no empty samples."""
    path = Path(path)
    records = read_records(path)
    kind = _format(path, records[0][1])
    if kind == "samples":
        wheres = [w for w, _ in records]
        out = [
            SampleSet(r["query_id"], r["query"], r["samples"], None, w)
            for r, w in zip(load_samples(path), wheres)
        ]
    elif kind == "comparisons":
        items = load_comparisons(path)
        out = []
        for i, ((where, raw), it) in enumerate(zip(records, items)):
            qid = str(raw["query_id"]) if "query_id" in raw else str(i)
            out.append(SampleSet(qid, it.prompt, it.responses, it.scores, where))
    else:
        out = _game_rows(path, records, need_scores)
    first: dict[str, SampleSet] = {}
    for s in out:
        if s.query_id in first:
            raise s.where.error(
                f"duplicate query_id {s.query_id!r}; first seen at "
                f"{first[s.query_id].where.describe()}",
                "query_id",
            )
        first[s.query_id] = s
    if need_scores and any(s.scores is None for s in out):
        raise DataFormatError(
            path,
            "expected scored samples (APO comparisons with scores, or the game's rows with "
            "rm_score); found unscored samples: score them with apo-score first",
        )
    return out


def _game_rows(
    path: Path, records: list[tuple[Where, Any]], need_scores: bool = False
) -> list[SampleSet]:
    groups: dict[tuple[str, str], SampleSet] = {}
    empty = 0
    for where, raw in records:
        rec = require_object(raw, where)
        prompt = require_str(rec, "prompt", where, non_empty=True)
        response = require_str(rec, "response", where)
        split = str(rec.get("split", "test"))
        score = rec.get("rm_score")
        if score is None and need_scores:
            raise where.error("missing; expected the RM's score of the response", "rm_score")
        if score is not None and (
            isinstance(score, bool)
            or not isinstance(score, int | float)
            or not math.isfinite(score)
        ):
            raise where.expected("rm_score", "a finite number", score)
        key = (split, prompt)
        if key not in groups:
            groups[key] = SampleSet(f"{split}/{len(groups)}", prompt, [], [], where)
        s = groups[key]
        if not response.strip():
            empty += 1
            continue
        s.samples.append(response)
        if score is None:
            s.scores = None
        elif s.scores is not None:
            s.scores.append(float(score))
    if empty:
        log.warning("%s: skipped %d empty responses", path, empty)
    out = [s for s in groups.values() if s.samples]
    if not out:
        raise DataFormatError(path, "no non-empty response in the file")
    return out


def read_queries(path: str | Path) -> list[tuple[str, str]]:
    """`(query_id, query)` pairs: from records with `query_id` and `query` (APO samples files,
    with or without samples), or the distinct prompts of comparisons or game sample files."""
    path = Path(path)
    records = read_records(path)
    first = records[0][1]
    if isinstance(first, dict) and "text" in first:
        return [(s.query_id, s.query) for s in read_sample_sets(path)]
    if isinstance(first, dict) and "response" in first:
        # every prompt of a game file, numbered as `read_sample_sets` numbers them
        keys: dict[tuple[str, str], None] = {}
        for where, raw in records:
            rec = require_object(raw, where)
            prompt = require_str(rec, "prompt", where, non_empty=True)
            keys.setdefault((str(rec.get("split", "test")), prompt), None)
        return [(f"{split}/{i}", prompt) for i, (split, prompt) in enumerate(keys)]
    out, seen = [], {}
    for where, raw in records:
        rec = require_object(raw, where)
        qid = require_query_id(rec, "query_id", where)
        query = require_str(rec, "query", where, non_empty=True)
        if qid in seen:
            raise where.error(
                f"duplicate query_id {qid!r}; first seen at {seen[qid].describe()}", "query_id"
            )
        seen[qid] = where
        out.append((qid, query))
    return out


def load_rm(path: str | Path, pooling: str) -> tuple[Any, Any, Path]:
    """`(scoring RewardModule, its tokenizer, its dir)` of an RM dir or a game round dir."""
    from transformers import AutoModelForSequenceClassification

    from apo.game.players import reward_module
    from apo.modules.backbones import reading

    d = model_dir(path, "rm")
    tok = load_tokenizer(d)
    with reading("rm.path", d, "reward model"):
        model = AutoModelForSequenceClassification.from_pretrained(str(d))
    return reward_module(model, pooling, tok.eos_token_id), tok, d


def rm_rewards(
    cfg: DictConfig, rm: Any, dm: GameDataModule, queries: list[str], samples: list[list[str]]
) -> list[list[float]]:
    """The RM's reward of every sample of every query (gathered over ranks, in query order)."""
    from apo.distributed import predict_gathered

    items = [
        dm.text_item(i, q, ss, [0.0] * len(ss)) for i, (q, ss) in enumerate(zip(queries, samples))
    ]
    out = predict_gathered(make_trainer(cfg), rm, dm.listwise_loader(items, "score"))
    return [o["rewards"] for o in out]
