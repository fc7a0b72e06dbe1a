"""One TensorBoard event stream for the whole game: step losses of every fit, metrics per round."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only


class GameTensorBoardLogger(TensorBoardLogger):
    """A TensorBoard logger reused by every Trainer of a game.

    Each fit's Trainer counts steps from 0; `step_offset` (set by the GameLoop before a fit) makes
    the steps of a player continue across rounds. `finalize` only flushes, so the next Trainer
    keeps writing to the same event file; `close` ends the game.
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
