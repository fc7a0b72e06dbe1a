"""Rows of a local Hugging Face dataset: a `save_to_disk` directory (`Dataset` or `DatasetDict`),
a parquet file, or a JSON / JSON Lines file read through `datasets`. Never the Hub: a path that is
not an existing local file or directory is refused before `datasets` sees it."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from apo.data.adapters.errors import DataFormatError
from apo.data.adapters.jsonio import read_records

#: file suffixes read through `datasets`' packaged builders (a `.gz` after them is fine)
BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json"}


def read_local_dataset(
    path: Path,
    split: str | None,
    columns: Sequence[str],
    required: Sequence[str],
    key: str = "data.path",
) -> tuple[Path, list[dict[str, Any]]]:
    """`(where, rows)`: the rows of `path` as plain dicts, with those of `columns` it has; a
    missing column of `required` is an error (other columns are never read).

    `where` names the rows in errors: the split's own directory for a `DatasetDict`, else
    `path`. `split` picks a split of a `DatasetDict` (needed when it has several); files and
    single `Dataset` directories have no splits to pick. `key` is the config key that named
    `path`, for the errors."""
    if not path.exists():
        raise DataFormatError(
            path,
            f"no such file or directory ({key}); local datasets only (a save_to_disk directory, "
            f"{', '.join(BUILDERS)}), nothing is downloaded from the Hub",
        )
    import datasets

    # `datasets` draws progress bars on stderr by default; the game logs its own counts.
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        if not path.is_dir():
            if split is not None:
                raise DataFormatError(path, f"a file has no splits; {_split_key(key)} must be null")
            return path, _file_rows(path, columns, required)
        ds = _from_disk(path, split, key)
        if isinstance(ds, datasets.DatasetDict):
            name = _pick_split(path, list(ds), split, key)
            path, ds = path / name, ds[name]
        return path, _rows(path, ds, columns, required)
    finally:
        if bars:
            datasets.enable_progress_bars()


def _split_key(key: str) -> str:
    """The config key of the split beside `key` (`data.path` -> `data.split`)."""
    return f"{key.rsplit('.', 1)[0]}.split"


def _from_disk(path: Path, split: str | None, key: str) -> Any:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except FileNotFoundError:
        raise DataFormatError(
            path,
            f"a directory, but not one written by Dataset.save_to_disk or DatasetDict.save_to_disk "
            f"(no dataset_info.json or dataset_dict.json); point {key} at such a directory or at a "
            f"{', '.join(BUILDERS)} file",
        ) from None
    if isinstance(ds, datasets.Dataset) and split is not None and ds.split not in (None, split):
        raise DataFormatError(
            path, f"a single Dataset of split {str(ds.split)!r}, not a DatasetDict with {split!r}"
        )
    return ds


def _pick_split(path: Path, splits: list[str], split: str | None, key: str) -> str:
    split_key = _split_key(key)
    if split is None:
        if len(splits) == 1:
            return splits[0]
        raise DataFormatError(path, f"a DatasetDict with splits {splits}; set {split_key} to one")
    if split not in splits:
        raise DataFormatError(
            path, f"{split_key}={split!r} is not a split of this DatasetDict; it has {splits}"
        )
    return split


def _rows(
    where: Path, ds: Any, columns: Sequence[str], required: Sequence[str]
) -> list[dict[str, Any]]:
    missing = [c for c in required if c not in ds.column_names]
    if missing:
        raise DataFormatError(
            where,
            f"missing column; expected columns {list(required)}, found {ds.column_names}",
            field=missing[0],
        )
    rows = ds.select_columns([c for c in columns if c in ds.column_names]).to_list()
    if not rows:
        raise DataFormatError(where, "the dataset holds no rows")
    return rows


def _file_rows(path: Path, columns: Sequence[str], required: Sequence[str]) -> list[dict[str, Any]]:
    import datasets

    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    builder = BUILDERS.get(Path(name).suffix)
    if builder is None:
        raise DataFormatError(
            path,
            f"unknown file type; expected a save_to_disk directory or a {', '.join(BUILDERS)} file",
        )
    # A private cache, dropped once the rows are read: nothing is left in ~/.cache, and a file
    # edited in place is never served from a stale cache.
    with tempfile.TemporaryDirectory(prefix="apo-datasets-") as cache:
        try:
            ds = datasets.load_dataset(
                builder, data_files=str(path), split="train", cache_dir=cache, keep_in_memory=True
            )
        except Exception as e:  # datasets wraps parse errors in several types of its own
            if builder == "json":
                read_records(path)  # names the line of malformed JSON, if that is the cause
            cause = e.__cause__ or e
            raise DataFormatError(
                path, f"datasets could not read it as {builder}: {cause}"
            ) from None
        return _rows(path, ds, columns, required)
