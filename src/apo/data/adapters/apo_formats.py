"""The APO reference formats: comparison items (`text`/`scores`), golden answers and policy
samples, each a JSON array or JSON Lines file, with loaders and writers that round-trip.

Texts are kept exactly as written (no stripping), so a file read and written back is unchanged.
An empty (whitespace-only) query, response, golden answer or sample is an error, in the loaders
and the writers alike: these files are produced by a pipeline, so an empty text means a failed
generation upstream, and skipping it would silently change an item's number of responses."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from apo.data.adapters.errors import (
    DataFormatError,
    Where,
    require_list,
    require_number,
    require_object,
    require_query_id,
    require_str,
)
from apo.data.adapters.jsonio import read_records, write_records
from apo.data.game_data import ListwiseItem

#: the reference's separator between query and response inside one `text` entry
DEFAULT_SEP = "<sep>"

_SAMPLE_KEY = re.compile(r"sample_(0|[1-9][0-9]*)")


# ---- comparisons ---------------------------------------------------------------------------
def load_comparisons(path: str | Path, sep: str = DEFAULT_SEP) -> list[ListwiseItem]:
    """`{"text": [query + sep + response, ...], "scores": [...], "query_id"?: ...}` records.

    Every text must hold `sep` exactly once, all texts of an item the same query, and there
    must be as many finite scores as texts, at least two. Other keys (the reference's `type`)
    are ignored; `query_id` is optional but must be a string or integer when present."""
    _check_sep(sep)
    return [
        _comparison(require_object(rec, where), where, sep) for where, rec in read_records(path)
    ]


def write_comparisons(
    path: str | Path,
    items: Sequence[ListwiseItem],
    sep: str = DEFAULT_SEP,
    query_ids: Sequence[str | int] | None = None,
) -> None:
    """Write `items` in the comparison format; `query_ids`, if given, one per item.

    Each record is checked with the loader's rules first, so a prompt or response that holds
    `sep`, an empty response or a non-finite score fails here and not when read back."""
    _check_sep(sep)
    path = Path(path)
    if query_ids is not None and len(query_ids) != len(items):
        raise ValueError(f"write_comparisons: {len(items)} items but {len(query_ids)} query_ids")
    if not items:
        raise DataFormatError(path, "no items to write")
    rows = []
    for i, it in enumerate(items):
        row: dict[str, Any] = {"text": [it.prompt + sep + r for r in it.responses]}
        row["scores"] = list(it.scores)
        if query_ids is not None:
            row["query_id"] = query_ids[i]
        where = Where(path, record=i)
        if len(it.responses) != len(it.scores):
            raise where.error(
                f"{len(it.responses)} responses but {len(it.scores)} scores", "scores"
            )
        parsed = _comparison(row, where, sep)
        row["scores"] = parsed.scores
        rows.append(row)
    write_records(path, rows)


def _comparison(rec: dict[str, Any], where: Where, sep: str) -> ListwiseItem:
    text = require_list(rec, "text", where)
    scores = require_list(rec, "scores", where)
    if len(text) < 2:
        raise where.error(f"expected at least 2 texts to compare, found {len(text)}", "text")
    if len(scores) != len(text):
        raise where.error(
            f"expected {len(text)} scores (one per text), found {len(scores)}", "scores"
        )
    if "query_id" in rec:
        require_query_id(rec, "query_id", where)
    prompt: str | None = None
    responses = []
    for i, t in enumerate(text):
        field = f"text[{i}]"
        if not isinstance(t, str):
            raise where.expected(field, "a string", t)
        n = t.count(sep)
        if n != 1:
            raise where.error(
                f"expected the separator {sep!r} exactly once (query{sep}response), found it "
                f"{n} times",
                field,
            )
        query, response = t.split(sep)
        if not query.strip():
            raise where.error(f"expected a non-empty query before {sep!r}, found none", field)
        if not response.strip():
            raise where.error(f"expected a non-empty response after {sep!r}, found none", field)
        if prompt is None:
            prompt = query
        elif query != prompt:
            at = next(
                (k for k, (x, y) in enumerate(zip(query, prompt)) if x != y),
                min(len(query), len(prompt)),
            )
            raise where.error(
                f"expected the same query as text[0], found a different one (they differ from "
                f"character {at} on)",
                field,
            )
        responses.append(response)
    values = [require_number(s, f"scores[{i}]", where) for i, s in enumerate(scores)]
    assert prompt is not None
    return ListwiseItem(prompt, responses, values)


# ---- golden answers ------------------------------------------------------------------------
def load_golden(path: str | Path) -> dict[str, str]:
    """`{"query_id", "golden"}` records as `{query_id: golden}`; a repeated id is an error.

    Ids become strings (the reference compares `str(query_id)`), so `1` and `"1"` collide."""
    out: dict[str, str] = {}
    first: dict[str, Where] = {}
    for where, raw in read_records(path):
        rec = require_object(raw, where)
        qid = require_query_id(rec, "query_id", where)
        golden = require_str(rec, "golden", where, non_empty=True)
        _no_duplicate(qid, where, first)
        out[qid] = golden
    return out


def write_golden(path: str | Path, golden: Mapping[str | int, str]) -> None:
    """Write `{query_id: golden}` as `{"query_id", "golden"}` records, in the mapping's order."""
    path = Path(path)
    rows = [{"query_id": qid, "golden": text} for qid, text in golden.items()]
    if not rows:
        raise DataFormatError(path, "no golden answers to write")
    first: dict[str, Where] = {}
    for i, row in enumerate(rows):
        where = Where(path, record=i)
        _no_duplicate(require_query_id(row, "query_id", where), where, first)
        require_str(row, "golden", where, non_empty=True)
    write_records(path, rows)


# ---- policy samples ------------------------------------------------------------------------
def load_samples(path: str | Path, k: int | None = None) -> list[dict[str, Any]]:
    """`{"query_id", "query", "sample_0", ..., "sample_{K-1}"}` records as
    `{"query_id": str, "query": str, "samples": [K strings]}`, in file order.

    Sample keys must run from `sample_0` without gaps; with `k` given every record must have
    exactly `k` samples. A repeated `query_id` is an error."""
    if k is not None and k < 1:
        raise ValueError(f"load_samples: k must be at least 1, got {k}")
    out = []
    first: dict[str, Where] = {}
    for where, raw in read_records(path):
        rec = _sample_record(require_object(raw, where), where, k)
        _no_duplicate(rec["query_id"], where, first)
        out.append(rec)
    return out


def write_samples(path: str | Path, records: Iterable[Mapping[str, Any]]) -> None:
    """Write `{"query_id", "query", "samples": [...]}` records in the sample format."""
    path = Path(path)
    rows = []
    first: dict[str, Where] = {}
    for i, rec in enumerate(records):
        where = Where(path, record=i)
        if not isinstance(rec, Mapping):
            raise where.expected(None, "a mapping with query_id, query and samples", rec)
        for key in ("query_id", "query"):
            if key not in rec:
                raise where.error("missing; expected it in every sample record", key)
        samples = require_list(dict(rec), "samples", where)
        if not samples:
            raise where.error("expected at least one sample, found none", "samples")
        row = {"query_id": rec["query_id"], "query": rec["query"]}
        row.update({f"sample_{j}": s for j, s in enumerate(samples)})
        parsed = _sample_record(row, where, None)
        _no_duplicate(parsed["query_id"], where, first)
        rows.append(row)
    if not rows:
        raise DataFormatError(path, "no sample records to write")
    write_records(path, rows)


def _sample_record(rec: dict[str, Any], where: Where, k: int | None) -> dict[str, Any]:
    qid = require_query_id(rec, "query_id", where)
    query = require_str(rec, "query", where, non_empty=True)
    found = sorted(int(m.group(1)) for key in rec if (m := _SAMPLE_KEY.fullmatch(key)))
    if not found:
        raise where.error("missing; expected sample_0, sample_1, ... in the record", "sample_0")
    gap = next((j for j, n in enumerate(found) if n != j), None)
    if gap is not None:
        raise where.error(
            f"missing; expected samples numbered 0..{found[-1]} without gaps", f"sample_{gap}"
        )
    if k is not None and len(found) != k:
        raise where.error(f"expected {k} samples (sample_0..sample_{k - 1}), found {len(found)}")
    samples = [require_str(rec, f"sample_{j}", where, non_empty=True) for j in found]
    return {"query_id": qid, "query": query, "samples": samples}


# ---- helpers -------------------------------------------------------------------------------
def _check_sep(sep: str) -> None:
    if not isinstance(sep, str) or not sep:
        raise ValueError(f"the query/response separator must be a non-empty string, got {sep!r}")


def _no_duplicate(qid: str, where: Where, first: dict[str, Where]) -> None:
    if qid in first:
        raise where.error(
            f"duplicate query_id {qid!r}; first seen at {first[qid].describe()}", "query_id"
        )
    first[qid] = where
