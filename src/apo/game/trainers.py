"""The Trainer factory of a game: one fresh Lightning Trainer per fit and per prediction, the
players' step counters continued across fits, and the phase timers."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig

from apo.allocator import return_freed_memory
from apo.config import plain
from apo.distributed import predict_gathered
from apo.logger import GameTensorBoardLogger


@dataclass(frozen=True)
class FitResult:
    """What a fit reports back to the game state."""

    #: optimizer steps the fit took
    steps: int
    #: the last logged value of every metric, and the final learning rate (`lr`)
    metrics: dict[str, float]


class Trainers:
    """Builds the Trainers of one game from `trainer`, `strategy` and the players' fit settings.

    Args:
        cfg: the composed game config (`trainer`, `strategy`, `<player>_strategy`,
            `<player>.warmup` / `<player>.round`).
        logger: the game's TensorBoard logger, shared by every fit.
        run_dir: the Trainers' `default_root_dir`.
        callbacks: `callbacks(player, stage)` gives further callbacks for every Trainer made
            (the game's progress display, `apo.progress`); None = none.
        before_fit: called before every fit starts (the players' gathered copies are freed
            there, `apo.gathered`); None = nothing.
    """

    def __init__(
        self,
        cfg: DictConfig,
        logger: GameTensorBoardLogger,
        run_dir: Path,
        callbacks: Callable[[str, str | None], list[L.Callback]] | None = None,
        before_fit: Callable[[], None] | None = None,
    ) -> None:
        self.cfg, self.logger, self.run_dir = cfg, logger, Path(run_dir)
        self.callbacks, self.before_fit = callbacks, before_fit

    def make(
        self,
        player: str,
        stage: str | None = None,
        settings: dict[str, Any] | None = None,
        callbacks: list[L.Callback] | None = None,
    ) -> L.Trainer:
        """A fresh Trainer for `player`; `stage` (`warmup` / `round`) adds that fit's settings
        and the game's logger, None makes a prediction Trainer; `settings` are further Trainer
        arguments."""
        from lightning.pytorch.callbacks import ProgressBar
        from lightning.pytorch.plugins.environments import SLURMEnvironment

        from apo.strategies import build_strategy

        tcfg = dict(plain(self.cfg.trainer))
        if stage is not None:
            tcfg.update(plain(self.cfg[player][stage]))
        tcfg.update(settings or {})
        scfg = self.cfg.get(f"{player}_strategy") or self.cfg.strategy
        strategy, devices = build_strategy(scfg)
        if tcfg.get("devices") is None:
            tcfg["devices"] = devices
        # the game saves and resumes itself: Lightning's SLURM auto-requeue (an .ckpt on
        # SIGUSR1 and `scontrol requeue`) must not run beside it
        plugins = [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else None
        callbacks = [*(callbacks or []), *(self.callbacks(player, stage) if self.callbacks else [])]
        if any(isinstance(c, ProgressBar) for c in callbacks):
            tcfg["enable_progress_bar"] = True  # the display brought its own bar
        return L.Trainer(
            **tcfg,
            strategy=strategy,
            logger=self.logger if stage is not None else False,
            default_root_dir=str(self.run_dir),
            callbacks=callbacks,
            plugins=plugins,
        )

    def fit(
        self,
        player: str,
        stage: str,
        module: L.LightningModule,
        loader: Any,
        step_offset: int,
        round_idx: int,
        settings: dict[str, Any] | None = None,
    ) -> FitResult:
        """Fit `module` on `loader` with a fresh `stage` Trainer; its logged steps start at
        `step_offset`, so a player's steps continue across fits in TensorBoard. A non-finite
        loss or gradient stops the fit with a `DivergenceError` naming player, round and step."""
        from apo.guards import FiniteGuard
        from apo.monitors import FitMonitor

        if self.before_fit is not None:
            self.before_fit()
        self.logger.step_offset = step_offset
        guard = FiniteGuard(player, round_idx, step_offset, module.log_prefix)
        trainer = self.make(
            player, stage, settings, callbacks=[guard, FitMonitor(module.log_prefix)]
        )
        trainer.fit(module, train_dataloaders=loader)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        metrics["lr"] = trainer.optimizers[0].param_groups[0]["lr"]
        result = FitResult(steps=trainer.global_step, metrics=metrics)
        release(module, trainer)
        return result

    def predict(
        self, player: str, module: L.LightningModule, loader: Any, trainer: L.Trainer | None = None
    ) -> list[dict]:
        """Every rank's predictions of `module` on `loader`, gathered and in index order
        (`trainer`: a prediction Trainer to reuse, else a fresh one)."""
        trainer = trainer or self.make(player)
        try:
            return predict_gathered(trainer, module, loader)
        finally:
            detach(module, trainer)


def release(module: L.LightningModule, trainer: L.Trainer) -> None:
    """Free what a finished fit holds, before the next phase: the optimizer's state and the
    last step's gradients. The module and its Trainer refer to each other, so without this
    they (and the optimizer state, twice the weights for AdamW) stay alive until Python's
    cyclic garbage collector happens to run; with the references cut, reference counting
    frees them at once (no `gc.collect`, which took ~1 s in a game process)."""
    detach(module, trainer)
    trainer.strategy._lightning_optimizers = []
    trainer.strategy.optimizers = []
    module.zero_grad(set_to_none=True)
    return_freed_memory()


def detach(module: L.LightningModule, trainer: L.Trainer) -> None:
    """Cut the module's and the strategy's references between a Trainer done with `module` and
    the module (a later `fit` / `predict` connects them again). A Trainer refers to itself (its
    loops), so it lives until Python's cyclic collector runs; its loops and data connector
    still know the module, so a player that is replaced is emptied where it is dropped
    (`Players.snapshot_reference`)."""
    module.trainer = None
    trainer.strategy._lightning_module = None
    trainer.strategy._model = None


@contextmanager
def timed(timings: dict[str, float], key: str) -> Iterator[None]:
    """Time the block into `timings[key]` (seconds), also when it raises."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        timings[key] = time.perf_counter() - t0
