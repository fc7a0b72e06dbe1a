"""The jobs of a sweep (or a single run) as `apo-report` reads them: overrides, rounds, status."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

#: overrides that do not change results: they never split a group
IGNORED_OVERRIDE_KEYS = ("seed", "hydra.", "run_dir", "+run_dir", "game.warm_start_cache")


@dataclass
class Job:
    """One run directory of a sweep (or a single run)."""

    path: Path
    overrides: list[str]
    rounds: list[dict[str, Any]] = field(default_factory=list)
    expected_rounds: int | None = None

    @property
    def group(self) -> str:
        kept = [o for o in self.overrides if not o.lstrip("+~").startswith(IGNORED_OVERRIDE_KEYS)]
        return " ".join(sorted(kept)) or "(defaults)"

    @property
    def seed(self) -> str | None:
        for o in self.overrides:
            if o.lstrip("+").startswith("seed="):
                return o.split("=", 1)[1]
        return None

    @property
    def complete(self) -> bool:
        return bool(self.rounds) and (
            self.expected_rounds is None or len(self.rounds) >= self.expected_rounds
        )

    @property
    def status(self) -> str:
        if self.complete:
            return "complete"
        if not self.rounds:
            return "no summary yet (running or failed)"
        return f"incomplete: {len(self.rounds)} of {self.expected_rounds} rounds"

    def last_round_dir(self) -> Path | None:
        if not self.rounds:
            return None
        return self.path / "rounds" / f"round_{self.rounds[-1]['round']:02d}"


def _load_job(path: Path) -> Job:
    hydra_dir = path / ".hydra"
    overrides: list[str] = []
    expected = None
    if (hydra_dir / "overrides.yaml").exists():
        overrides = [
            str(o) for o in (yaml.safe_load((hydra_dir / "overrides.yaml").read_text()) or [])
        ]
    if (hydra_dir / "config.yaml").exists():
        cfg = yaml.safe_load((hydra_dir / "config.yaml").read_text()) or {}
        rounds = (cfg.get("game") or {}).get("rounds")
        expected = None if rounds is None else int(rounds) + 1
    job = Job(path=path, overrides=overrides, expected_rounds=expected)
    summary = path / "summary.json"
    if summary.exists():
        try:
            job.rounds = json.loads(summary.read_text())["rounds"]
        except (json.JSONDecodeError, KeyError):
            job.rounds = []
    return job


def find_jobs(root: Path) -> list[Job]:
    """Every job under `root`: `root` itself if it is a run, else its job subdirectories."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"apo-report: {root} is not a directory")
    if (root / "summary.json").exists() or (root / ".hydra").is_dir():
        return [_load_job(root)]
    subdirs = sorted(
        (
            p
            for p in root.iterdir()
            if p.is_dir() and ((p / ".hydra").is_dir() or (p / "summary.json").exists())
        ),
        key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name),
    )
    if not subdirs:
        raise FileNotFoundError(
            f"apo-report: no run directories (with .hydra/ or summary.json) in {root}"
        )
    return [_load_job(p) for p in subdirs]


def by_group(jobs: list[Job]) -> dict[str, list[Job]]:
    """The jobs with a summary, grouped by their overrides without `seed`."""
    groups: dict[str, list[Job]] = defaultdict(list)
    for job in jobs:
        if job.rounds:
            groups[job.group].append(job)
    return dict(sorted(groups.items()))
