"""Reading and writing records as a JSON array or JSON Lines, plain or gzip-compressed.

The format is sniffed from the content, not the name: gzip by its magic bytes, a JSON array by a
leading `[`, JSON Lines otherwise. Writers pick the format from the name (`.jsonl`, `.gz`)."""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from apo.data.adapters.errors import DataFormatError, Where
from apo.records import atomic_file

_GZIP_MAGIC = b"\x1f\x8b"


def read_text(path: str | Path) -> str:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataFormatError(path, "no such file") from None
    except IsADirectoryError:
        raise DataFormatError(path, "is a directory; expected a JSON or JSON Lines file") from None
    except PermissionError:
        raise DataFormatError(path, "not readable (permission denied)") from None
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataFormatError(path, f"corrupt gzip data: {e}") from None
    try:
        # utf-8-sig: files saved by some editors start with a byte-order mark.
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataFormatError(path, f"not UTF-8 text (byte {e.start})", line=line) from None


def read_records(path: str | Path) -> list[tuple[Where, Any]]:
    """Every record of a JSON array or JSON Lines file, each with where it came from.

    Blank lines in JSON Lines are ignored. A file without any record is an error, so no loader
    silently returns an empty data set."""
    path = Path(path)
    text = read_text(path)
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataFormatError(
                path, f"malformed JSON: {e.msg} (column {e.colno})", line=e.lineno
            ) from None
        if not isinstance(data, list):
            raise DataFormatError(path, "expected a JSON array of records")
        out = [(Where(path, record=i), rec) for i, rec in enumerate(data)]
    else:
        out = []
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataFormatError(
                    path,
                    f"malformed JSON: {e.msg} (column {e.colno}); expected one JSON object per "
                    "line (JSON Lines) or one JSON array",
                    line=n,
                ) from None
            out.append((Where(path, line=n), rec))
    if not out:
        raise DataFormatError(path, "the file holds no records")
    return out


def write_records(path: str | Path, records: Iterable[dict[str, Any]]) -> None:
    """Write atomically: JSON Lines if the name ends in `.jsonl` (before any `.gz`), else a JSON
    array; gzip-compressed if it ends in `.gz`."""
    path = Path(path)
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    rows = list(records)
    if name.endswith(".jsonl"):
        text = "".join(json.dumps(r, ensure_ascii=False, allow_nan=False) + "\n" for r in rows)
    else:
        text = json.dumps(rows, ensure_ascii=False, indent=2, allow_nan=False) + "\n"
    data = text.encode("utf-8")
    if path.name.endswith(".gz"):
        # mtime=0: the same records always give the same bytes.
        data = gzip.compress(data, mtime=0)
    with atomic_file(path, "wb") as f:
        f.write(data)
