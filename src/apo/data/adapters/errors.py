"""Errors that point at the bad spot in a data file: the file, the line or record, the field,
what was expected and what was found."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class DataFormatError(ValueError):
    """A data file that does not match its format.

    `line` is a 1-based line number (JSON Lines, or where a JSON document fails to parse);
    `record` is a 0-based index into a JSON array; `field` names the offending key, with an index
    for list elements (`"scores[2]"`). Any of the three may be `None` when it does not apply.
    """

    def __init__(
        self,
        path: str | Path,
        message: str,
        *,
        line: int | None = None,
        record: int | None = None,
        field: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.reason = message
        self.line, self.record, self.field = line, record, field
        super().__init__(f"{self.location()}: {message}")

    def location(self) -> str:
        parts = [str(self.path)]
        if self.line is not None:
            parts.append(f"line {self.line}")
        if self.record is not None:
            parts.append(f"record [{self.record}]")
        if self.field is not None:
            parts.append(f"field {self.field!r}")
        return ", ".join(parts)

    def __reduce__(self) -> tuple[Any, ...]:
        # The default pickling re-calls __init__ with the rendered message only; worker
        # processes (DataLoader, multiprocessing) need every attribute back.
        kwargs = {"line": self.line, "record": self.record, "field": self.field}
        return (_rebuild, (self.path, self.reason, kwargs))


def _rebuild(path: Path, reason: str, kwargs: dict[str, Any]) -> DataFormatError:
    return DataFormatError(path, reason, **kwargs)


def describe(value: Any) -> str:
    """A short JSON-flavoured description of a value for error messages (never a whole record)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"number {value}"
    if isinstance(value, str):
        short = value if len(value) <= 40 else value[:37] + "..."
        return f"string {short!r}"
    if isinstance(value, list):
        return f"array of {len(value)}"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


@dataclass(frozen=True)
class Where:
    """Where a record came from; builds the errors that name it."""

    path: Path
    line: int | None = None
    record: int | None = None

    def error(self, message: str, field: str | None = None) -> DataFormatError:
        return DataFormatError(self.path, message, line=self.line, record=self.record, field=field)

    def expected(self, field: str | None, expected: str, value: Any) -> DataFormatError:
        return self.error(f"expected {expected}, found {describe(value)}", field)

    @property
    def index(self) -> int:
        """The line number (JSON Lines) or record index (JSON array), for reports."""
        return self.line if self.line is not None else (self.record or 0)

    def describe(self) -> str:
        return f"line {self.line}" if self.line is not None else f"record [{self.record}]"


def require_object(value: Any, where: Where) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise where.expected(None, "a JSON object", value)
    return value


def require_str(obj: dict[str, Any], key: str, where: Where, *, non_empty: bool = False) -> str:
    if key not in obj:
        raise where.error(f"missing; expected a string (keys found: {_keys(obj)})", key)
    value = obj[key]
    if not isinstance(value, str):
        raise where.expected(key, "a string", value)
    if non_empty and not value.strip():
        raise where.expected(key, "a non-empty string", value)
    return value


def require_list(obj: dict[str, Any], key: str, where: Where) -> list[Any]:
    if key not in obj:
        raise where.error(f"missing; expected an array (keys found: {_keys(obj)})", key)
    value = obj[key]
    if not isinstance(value, list):
        raise where.expected(key, "an array", value)
    return value


def require_number(value: Any, field: str, where: Where) -> float:
    # bool is an int subclass in Python, but `true` is never a score in JSON.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise where.expected(field, "a finite number", value)
    try:
        out = float(value)
    except OverflowError:
        out = math.inf
    if not math.isfinite(out):
        raise where.expected(field, "a finite number", value)
    return out


def require_query_id(obj: dict[str, Any], key: str, where: Where) -> str:
    """Query ids may be strings or integers; both become strings, as in the reference code."""
    if key not in obj:
        raise where.error(f"missing; expected a string or integer (keys found: {_keys(obj)})", key)
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise where.expected(key, "a string or integer", value)
    return str(value)


def _keys(obj: dict[str, Any]) -> str:
    keys = sorted(obj)
    shown = ", ".join(repr(k) for k in keys[:8])
    return shown + (", ..." if len(keys) > 8 else "") if keys else "none"
