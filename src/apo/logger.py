"""One TensorBoard event stream for the whole game: step losses of every fit, metrics per round."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

EVENT_GLOB = "events.out.tfevents.*"


class GameTensorBoardLogger(TensorBoardLogger):
    """A TensorBoard logger reused by every Trainer of a game.

    Each fit's Trainer counts steps from 0; `step_offset` (set by the GameLoop before a fit) makes
    the steps of a player continue across rounds. `finalize` only flushes, so the next Trainer
    keeps writing to the same event file; `close` ends the game.

    A resumed game `rewind`s the event files to their sizes at the saved phase boundary (see
    `event_file_sizes`), so steps a killed fit logged are not in TensorBoard twice. SummaryWriter's
    `purge_step` cannot do this: it hides every tag's events from one step on, but the players'
    steps and the rounds are separate step axes in one event file.
    """

    def __init__(self, save_dir: str, name: str = "tensorboard", **kwargs: Any) -> None:
        super().__init__(
            save_dir=save_dir, name=name, version="", default_hp_metric=False, **kwargs
        )
        self.step_offset = 0

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        super().log_metrics(metrics, None if step is None else step + self.step_offset)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self.flush()

    @rank_zero_only
    def flush(self) -> None:
        if self._experiment is not None:
            self.experiment.flush()

    @rank_zero_only
    def log_round(self, metrics: dict[str, float], round_idx: int, texts: dict[str, str]) -> None:
        for k, v in metrics.items():
            self.experiment.add_scalar(k, v, global_step=round_idx)
        for k, v in texts.items():
            self.experiment.add_text(k, v, global_step=round_idx)
        self.experiment.flush()

    @rank_zero_only
    def close(self) -> None:
        if self._experiment is not None:
            self.experiment.close()

    # ---- resuming (rank 0 only) ---------------------------------------------------------------
    def event_file_sizes(self) -> dict[str, int]:
        """Name -> size of every event file, once everything logged so far is on disk."""
        self.flush()
        d = Path(self.log_dir)
        return {p.name: p.stat().st_size for p in sorted(d.glob(EVENT_GLOB))} if d.is_dir() else {}

    def rewind(self, sizes: dict[str, int]) -> None:
        """Cut every event file back to its size in `sizes` and delete files not in it (a killed
        session's). Records are appended whole, so a cut at a flushed size is a record boundary.
        Call before this logger writes anything: its own file is new."""
        if self._experiment is not None:
            raise RuntimeError("GameTensorBoardLogger.rewind: the logger has already written")
        d = Path(self.log_dir)
        for p in sorted(d.glob(EVENT_GLOB)) if d.is_dir() else []:
            if p.name not in sizes:
                p.unlink()
            elif p.stat().st_size > sizes[p.name]:
                os.truncate(p, sizes[p.name])
