"""The jobs of a sweep (or a single run) as `apo-report` reads them: overrides, rounds, status."""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

#: overrides that do not change results: they never split a group (the keys a resume may
#: change without changing results, `apo.checkpoint.MUTABLE_KEYS`, among them)
IGNORED_OVERRIDE_KEYS = (
    "seed",
    "hydra.",
    "run_dir",
    "+run_dir",
    "game.warm_start_cache",
    "resume=",
    "resume_allow=",
    "progress=",
    "progress_every_s=",
    "tensorboard_flush_secs=",
)

log = logging.getLogger(__name__)


@dataclass
class Job:
    """One run directory of a sweep (or a single run)."""

    path: Path
    overrides: list[str]
    rounds: list[dict[str, Any]] = field(default_factory=list)
    expected_rounds: int | None = None
    #: `seed` of `.hydra/config.yaml`: the seed of a job whose overrides do not name one
    config_seed: str | None = None
    #: the kept job with the same group and seed; a duplicate is listed but never counted
    duplicate_of: Path | None = None

    @property
    def group(self) -> str:
        kept = [o for o in self.overrides if not o.lstrip("+~").startswith(IGNORED_OVERRIDE_KEYS)]
        return " ".join(sorted(kept)) or "(defaults)"

    @property
    def seed(self) -> str | None:
        for o in self.overrides:
            if o.lstrip("+").startswith("seed="):
                return o.split("=", 1)[1]
        return self.config_seed

    @property
    def complete(self) -> bool:
        return bool(self.rounds) and (
            self.expected_rounds is None or len(self.rounds) >= self.expected_rounds
        )

    @property
    def status(self) -> str:
        if self.duplicate_of is not None:
            return f"duplicate of {self.duplicate_of}"
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
    expected = seed = None
    if (hydra_dir / "overrides.yaml").exists():
        overrides = [
            str(o) for o in (yaml.safe_load((hydra_dir / "overrides.yaml").read_text()) or [])
        ]
    if (hydra_dir / "config.yaml").exists():
        cfg = yaml.safe_load((hydra_dir / "config.yaml").read_text()) or {}
        rounds = (cfg.get("game") or {}).get("rounds")
        expected = None if rounds is None else int(rounds) + 1
        seed = cfg.get("seed")
    job = Job(
        path=path,
        overrides=overrides,
        expected_rounds=expected,
        config_seed=None if seed is None else str(seed),
    )
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


def mark_duplicates(jobs: list[Job]) -> list[Job]:
    """Mark every job that repeats another's group and seed (the same sweep given twice, a seed
    re-run into another directory) and return the duplicates; a warning names each one.

    Of the jobs of one (group, seed) the most complete is kept (a finished game over one that
    stopped early, then the one with more rounds), and of equally complete ones the first in
    the order given. Jobs whose seed is unknown (no override, no config) are never duplicates.
    """
    kept: dict[tuple[str, str], Job] = {}
    for job in jobs:
        if job.seed is None:
            continue
        key = (job.group, job.seed)
        best = kept.setdefault(key, job)
        if best is not job and _completeness(job) > _completeness(best):
            kept[key] = job
    duplicates = []
    for job in jobs:
        best = kept.get((job.group, job.seed)) if job.seed is not None else None
        job.duplicate_of = None if best is None or best is job else best.path
        if job.duplicate_of == job.path:
            duplicates.append(job)
            log.warning("apo-report: %s is given twice; it is counted once", job.path)
        elif job.duplicate_of is not None:
            duplicates.append(job)
            log.warning(
                "apo-report: %s repeats group `%s` seed %s of %s: it is left out of every "
                "mean, standard error, win rate and plot",
                job.path,
                job.group,
                job.seed,
                job.duplicate_of,
            )
    return duplicates


def _completeness(job: Job) -> tuple[bool, int]:
    return job.complete, len(job.rounds)


def load_jobs(roots: list[Path]) -> list[Job]:
    """The jobs of every root, in the order given, with repeated (group, seed) jobs marked."""
    jobs = [job for root in roots for job in find_jobs(root)]
    mark_duplicates(jobs)
    return jobs


def by_group(jobs: list[Job]) -> dict[str, list[Job]]:
    """The jobs with a summary, grouped by their overrides without `seed`; duplicates left out."""
    groups: dict[str, list[Job]] = defaultdict(list)
    for job in jobs:
        if job.rounds and job.duplicate_of is None:
            groups[job.group].append(job)
    return dict(sorted(groups.items()))
