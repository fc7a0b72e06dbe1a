"""What a tolerant loader kept and what it skipped, counted by reason."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from apo.data.adapters.errors import Where


@dataclass
class LoadReport:
    """Counts for one file. `examples` holds, per skip reason, the first `max_examples` line
    numbers (JSON Lines) or record indices (JSON array) that were skipped for it."""

    path: Path
    records: int = 0
    loaded: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[int]] = field(default_factory=dict)
    max_examples: int = 5
    #: what `examples` count: "line" (JSON Lines) or "record" (JSON array)
    unit: str = "line"

    def skip(self, reason: str, where: Where) -> None:
        self.unit = "line" if where.line is not None else "record"
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < self.max_examples:
            shown.append(where.index)

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    def counts(self) -> str:
        head = f"{self.records} records, {self.loaded} loaded, {self.n_skipped} skipped"
        if not self.skipped:
            return head
        why = "; ".join(
            f"{reason}: {n} at {self.unit}s {', '.join(map(str, self.examples.get(reason, [])))}"
            + (", ..." if n > len(self.examples.get(reason, [])) else "")
            for reason, n in sorted(self.skipped.items())
        )
        return f"{head} ({why})"

    def __str__(self) -> str:
        return f"{self.path}: {self.counts()}"
