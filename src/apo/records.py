"""What a game writes to its run directory, written atomically so nothing is ever half-written."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_file(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file beside `path` for writing; when the block ends without an error it
    is synced and renamed over `path` (so a reader or a kill never sees half a file), else it is
    removed."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        # mkstemp makes the file private (0600); give it the mode open() would, under the umask
        os.fchmod(fd, 0o666 & ~umask())
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        # a full disk or a file-size limit says neither which file nor where: say both
        raise OSError(e.errno, f"{path}: cannot write it ({e.strerror or e})") from e
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic_write(path: Path, text: str) -> None:
    with atomic_file(path, "w") as f:
        f.write(text)


def _clean(x: Any) -> Any:
    # JSON has no NaN: store it as null so every reader can parse the file.
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    return x


def write_json(path: Path, obj: Any) -> None:
    _atomic_write(path, json.dumps(_clean(obj), indent=2, sort_keys=False) + "\n")


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    _atomic_write(path, "".join(json.dumps(_clean(r)) + "\n" for r in rows))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def round_dir(run_dir: Path, round_idx: int) -> Path:
    return run_dir / "rounds" / f"round_{round_idx:02d}"


def format_table(rows: list[dict[str, Any]], keys: list[str]) -> str:
    """A fixed-width text table, one row per round."""
    head = ["round"] + keys
    body = [[str(r.get("round", ""))] + [_fmt(r.get(k)) for k in keys] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(b) for b in body])


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if not math.isfinite(v) else f"{v:.4f}"
    return "-" if v is None else str(v)
