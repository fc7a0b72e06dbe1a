"""Rank helpers: every rank runs the whole game; predictions are gathered so all ranks agree."""

from __future__ import annotations

import os
from typing import Any

import lightning as L
import torch.distributed as dist
from torch.utils.data import DataLoader


def global_rank() -> int:
    """This process's rank, known before any Trainer exists (launchers set these variables)."""
    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if var in os.environ:
            return int(os.environ[var])
    return 0


def is_global_zero() -> bool:
    return global_rank() == 0


def gather_objects(records: list[Any]) -> list[Any]:
    """Concatenate per-rank lists on every rank (a no-op in a single process)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return records
    parts: list[list[Any] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, records)
    return [r for part in parts for r in (part or [])]


def predict_gathered(
    trainer: L.Trainer, module: L.LightningModule, loader: DataLoader
) -> list[dict]:
    """Run `trainer.predict` and return every rank's per-example records, ordered by `index`.

    `predict_step` must return a list of dicts with an `index` key; the distributed sampler that
    Lightning injects for prediction shards without repeats, and duplicates are dropped anyway.
    """
    out = trainer.predict(module, dataloaders=loader, return_predictions=True) or []
    mine = [rec for batch in out for rec in batch]
    by_index = {rec["index"]: rec for rec in gather_objects(mine)}
    expected = len(loader.dataset)
    if len(by_index) != expected:
        raise RuntimeError(f"prediction returned {len(by_index)} of {expected} examples")
    return [by_index[i] for i in sorted(by_index)]
