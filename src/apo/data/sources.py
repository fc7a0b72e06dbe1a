"""Where a game's data comes from, chosen by `cfg.data.source`: the oracle task (`data=task`) or
preference files (`data=hh_rlhf`, `data=apo_files`, `data=sharegpt_dpo`, and `data=preference`:
TRL's formats in a local Hugging Face dataset).

File data is split by prompt, deterministically by seed, into the game's parts: `sft` (the
chosen responses are the warm-start demonstrations), `human_train` / `human_val` (the RM's human
pairs), `rm` (prompts whose chosen response, or a golden file's answer, is the golden answer),
`policy`, `test`, and `test_rm` (pairs kept out of the game for the test RM, which also learns
from the pairs of the sft/rm/policy/test parts, never from the game RM's train or val pairs).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from transformers import PreTrainedTokenizerBase

from apo.config import plain
from apo.data.adapters import (
    DataFormatError,
    golden_from_chosen,
    load_comparisons,
    load_golden,
    load_hh_rlhf,
    load_preference,
    load_samples,
    load_sharegpt,
    split_prompts,
)
from apo.data.adapters.jsonio import read_records
from apo.data.game_data import GameData, ListwiseItem, build_task_data
from apo.data.text_tokenizer import train_bpe_tokenizer

log = logging.getLogger(__name__)

SOURCES = ("task", "hh_rlhf", "apo_files", "sharegpt_dpo", "preference")
#: the prompt-disjoint parts of file data, in cut order (`sizes.n_<part>` prompts each)
PARTS = ("sft", "human_train", "human_val", "rm", "policy", "test", "test_rm")
#: parts whose pairs train the test RM by default (all but the game RM's own human pairs)
TEST_RM_PARTS = ("sft", "rm", "policy", "test", "test_rm")
#: the project directory (configs/, src/); relative data roots are taken from here
PROJECT_DIR = Path(__file__).resolve().parents[3]


def has_oracle(cfg: DictConfig) -> bool:
    return cfg.data.source == "task"


def data_root(dcfg: DictConfig) -> Path:
    """`data.root`, else `$APO_DATA_DIR`, else `../shared/data` beside the project."""
    root = dcfg.get("root") or os.environ.get("APO_DATA_DIR") or "../shared/data"
    root = Path(root).expanduser()
    return root if root.is_absolute() else (PROJECT_DIR / root).resolve()


def data_path(dcfg: DictConfig, key: str, required: bool = True) -> Path | None:
    value = dcfg.get(key)
    if not value:
        if required:
            raise ValueError(f"data={dcfg.source}: set data.{key} to a file")
        return None
    path = Path(value).expanduser()
    return path if path.is_absolute() else data_root(dcfg) / path


def build_game_data(cfg: DictConfig, task: Any) -> GameData:
    """The game's data from the source `cfg.data.source` names, a pure function of it and the seed."""
    d = cfg.data
    source = d.source
    if source == "task":
        return build_task_data(task, seed=cfg.seed, **plain(d.sizes))
    if source not in SOURCES:
        raise ValueError(f"unknown data.source {source!r}; known: {list(SOURCES)}")
    meta: dict[str, Any] = {}
    rm_golden: dict[str, str] | None = None
    sft: list[tuple[str, str]] | None = None
    if source == "hh_rlhf":
        path = data_path(d, "path")
        items, report = load_hh_rlhf(path)
        meta.update({"records": report.records, "records_skipped": report.n_skipped})
        if report.n_skipped:
            log.info("%s", report)
    elif source == "sharegpt_dpo":
        path = data_path(d, "path")
        items = load_sharegpt(path)
    elif source == "preference":
        path = data_path(d, "path")
        items = load_preference(path, d.split, d.format)
        meta.update(
            {"records": len(items), "conversational": sum(it.messages is not None for it in items)}
        )
    else:
        path = data_path(d, "comparisons")
        items = load_comparisons(path, sep=d.sep)
        rm_golden = _golden_files(d)
        sft_path = data_path(d, "sft", required=False)
        if sft_path is not None:
            sft = [(r["query"], s) for r in load_samples(sft_path) for s in r["samples"]]
    data = split_file_data(items, plain(d.sizes), cfg.seed, path, rm_golden=rm_golden)
    if sft is not None:
        data.sft = sft
    data.messages = {it.prompt: it.messages for it in items if it.messages is not None}
    data.meta = {"source": source, "file": str(path), **meta, **data.meta}
    return data


def _golden_files(d: DictConfig) -> dict[str, str] | None:
    """`{query: golden}` joining `data.golden` (`query_id`, `golden`) with the queries of
    `data.rm_queries` (a samples file: `query_id`, `query`, ...), or None without a golden file."""
    golden_path = data_path(d, "golden", required=False)
    if golden_path is None:
        return None
    queries_path = data_path(d, "rm_queries", required=False)
    if queries_path is None:
        raise ValueError(
            "data=apo_files: data.golden needs data.rm_queries, a samples file "
            "({query_id, query, sample_0, ...}) naming the queries of the golden answers"
        )
    golden = load_golden(golden_path)
    out: dict[str, str] = {}
    for (where, _), rec in zip(read_records(queries_path), load_samples(queries_path)):
        if rec["query_id"] not in golden:
            raise where.error(
                f"query_id {rec['query_id']!r} has no golden answer in {golden_path}", "query_id"
            )
        out[rec["query"]] = golden[rec["query_id"]]
    return out


def split_file_data(
    items: list[ListwiseItem],
    sizes: dict[str, int | None],
    seed: int,
    path: Path | str,
    rm_golden: dict[str, str] | None = None,
) -> GameData:
    """Cut the distinct prompts of `items` into `PARTS` with `sizes` (`n_<part>` prompts each;
    `n_test_rm: null` takes the rest). With `rm_golden` the RM split is those prompts (their
    items are kept out of every other part) and `n_rm` must be 0."""
    unknown = sorted(set(sizes) - {f"n_{p}" for p in PARTS})
    if unknown:
        raise ValueError(f"data.sizes: unknown keys {unknown}; known: {[f'n_{p}' for p in PARTS]}")
    if rm_golden is not None:
        if sizes.get("n_rm"):
            raise ValueError("data.sizes.n_rm must be 0 when the golden answers come from files")
        items = [it for it in items if it.prompt not in rm_golden]
    prompts = {it.prompt for it in items}
    n = len(prompts)
    counts = {p: sizes.get(f"n_{p}", 0) for p in PARTS}
    rest = [p for p, c in counts.items() if c is None]
    if len(rest) > 1:
        raise ValueError(f"data.sizes: only one part may take the rest (null), got {rest}")
    if rest:
        counts[rest[0]] = max(n - sum(c for c in counts.values() if c is not None), 0)
    need = [p for p in ("human_train", "human_val", "policy", "test") if counts[p] <= 0]
    if rm_golden is None and counts["rm"] <= 0:
        need.append("rm")
    if need or any(c < 0 for c in counts.values()):
        raise ValueError(f"data.sizes: parts {need} need at least one prompt, got {counts}")
    if sum(counts.values()) > n:
        raise DataFormatError(
            path,
            f"data.sizes ask for {sum(counts.values())} distinct prompts ({counts}) but the file "
            f"holds {n} usable ones; lower data.sizes",
        )
    parts = split_prompts(items, {p: c / n for p, c in counts.items()}, seed)
    try:
        chosen = golden_from_chosen(parts["sft"])
        golden = rm_golden if rm_golden is not None else golden_from_chosen(parts["rm"])
    except ValueError as e:
        raise DataFormatError(path, str(e)) from None
    distinct = lambda its: list(dict.fromkeys(it.prompt for it in its))  # noqa: E731
    return GameData(
        sft=list(chosen.items()),
        human_train=parts["human_train"],
        human_val=parts["human_val"],
        rm_prompts=list(golden),
        golden=golden,
        policy_prompts=distinct(parts["policy"]),
        test_prompts=distinct(parts["test"]),
        meta={f"n_{p}": len(distinct(parts[p])) for p in PARTS} | {"prompts": n},
        test_rm_pairs=[it for p in TEST_RM_PARTS for it in parts[p]],
    )


def training_texts(data: GameData) -> list[str]:
    """The texts a data-trained tokenizer learns from: everything the players train on."""
    texts = [t for p, r in data.sft for t in (p, r)]
    texts += [t for it in data.human_train for t in (it.prompt, *it.responses)]
    texts += [t for p, g in data.golden.items() for t in (p, g)]
    return texts + data.policy_prompts


def build_tokenizer(cfg: DictConfig, task: Any, data: GameData) -> PreTrainedTokenizerBase:
    """The task's tokenizer for `data=task`; for file data a byte-level BPE trained on the
    game's training texts (`data.tokenizer.vocab_size`, `min_frequency`)."""
    if has_oracle(cfg):
        return task.build_tokenizer()
    t = cfg.data.tokenizer
    return train_bpe_tokenizer(
        training_texts(data), vocab_size=int(t.vocab_size), min_frequency=int(t.min_frequency)
    )
