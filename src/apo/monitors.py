"""What every fit logs besides its loss: the learning rate, the tokens it processes per second and
the peak memory (`FitMonitor`), on the steps Lightning writes its logs anyway."""

from __future__ import annotations

import resource
import sys
import time
from typing import Any

import lightning as L
import torch

from apo import host_memory


def logs_this_step(trainer: L.Trainer) -> bool:
    """Whether Lightning writes the logs of the step under way (every `log_every_n_steps`).
    Statistics that cost something to compute are computed on those steps only."""
    return bool(trainer._logger_connector.should_update_logs)


def log_step(module: L.LightningModule, logs: dict[str, Any], batch_size: int) -> None:
    """A training step's numbers as `<log_prefix>/<name>`, through Lightning's `log_dict` on the
    steps whose logs are written and on the fit's last step (whose values the game reads back
    from `callback_metrics`). Lightning's `log` costs a few hundred microseconds a value (it
    deep-copies its metadata): 6 % of a default-game policy fit when every step logged."""
    trainer = module._trainer  # None outside a fit: log as Lightning would
    if (
        trainer is None
        or logs_this_step(trainer)
        or trainer.global_step + 1 >= trainer.estimated_stepping_batches
    ):
        prefix = module.log_prefix
        module.log_dict({f"{prefix}/{k}": v for k, v in logs.items()}, batch_size=batch_size)


def count_tokens(batch: Any) -> torch.Tensor | int:
    """Tokens a training batch feeds the model: the sum of every `attention_mask` in it (the
    RM's batches nest the human and APO items). A tensor on the batch's device: no sync."""
    if isinstance(batch, dict):
        total: torch.Tensor | int = 0
        for k, v in batch.items():
            if k == "attention_mask" and isinstance(v, torch.Tensor):
                total = total + v.sum()
            elif isinstance(v, dict):
                total = total + count_tokens(v)
        return total
    return 0


def _status_kb(key: str) -> int | None:
    """A `/proc/self/status` field in kB (`VmHWM`, `VmRSS`), None where there is no procfs."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Start the process's peak resident set size (`VmHWM`) again from its current size, so
    that the next `peak_rss_mb` is the peak of what runs in between (a game phase, a fit).
    Linux only (`/proc/self/clear_refs`); False where the peak cannot be reset. The count of
    offloaded host bytes (`apo.host_memory`) starts again too."""
    host_memory.reset()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """The process's peak resident set size since it started or since `reset_peak_rss`."""
    kb = _status_kb("VmHWM")
    if kb is not None:
        return kb / 2**10
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # never reset
    # Linux counts kilobytes, macOS bytes
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def peak_memory_mb(device: torch.device) -> float:
    """The peak memory so far: CUDA's allocated peak on a GPU (reset at each fit's start), the
    process's peak resident set size on the CPU (since the game phase started: `peak_rss_mb`)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_mb()


class FitMonitor(L.Callback):
    """Logs, on the steps whose logs are written, `<prefix>/lr` (what the optimizer steps
    with), `perf/<prefix>/tokens_per_s` (since the last logged step) and
    `perf/<prefix>/peak_memory_mb`.
    The `perf/` prefix marks values that depend on the machine and its load, not on the game
    (a resumed game's TensorBoard equals the uninterrupted one's except there).

    After the fit, `summary` holds its steps, seconds, tokens per second and peak memory.

    Args:
        log_prefix: the fit's metric prefix, e.g. `policy/train`.
    """

    def __init__(self, log_prefix: str) -> None:
        self.prefix = log_prefix
        self.summary: dict[str, float] = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)
        self.t0 = self.t_logged = time.perf_counter()
        self.tokens: torch.Tensor | int = 0
        self.tokens_logged = 0.0
        self.summary = {}
        self.counted = False

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.tokens = self.tokens + count_tokens(batch)

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if trainer.global_step == 1 and trainer.optimizers and not self.counted:
            # what an offloading engine holds off the device, once its first step has made
            # the optimizer's state (DeepSpeed's CPU Adam makes its moments there)
            self.counted = True
            host_memory.count(trainer.optimizers[0])

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if not logs_this_step(trainer):
            return  # the logger would not write them: each `log` costs tens of microseconds
        log = lambda name, value: pl_module.log(name, value, on_step=True, on_epoch=False)  # noqa: E731
        log(f"{self.prefix}/lr", float(optimizer.param_groups[0]["lr"]))
        # the one host sync, on a step whose logged values Lightning converts anyway
        now, tokens = time.perf_counter(), float(self.tokens)
        rate = (tokens - self.tokens_logged) / max(now - self.t_logged, 1e-9)
        self.t_logged, self.tokens_logged = now, tokens
        log(f"perf/{self.prefix}/tokens_per_s", rate)
        log(f"perf/{self.prefix}/peak_memory_mb", peak_memory_mb(pl_module.device))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        seconds = time.perf_counter() - self.t0
        self.summary = {
            "steps": float(trainer.global_step),
            "seconds": seconds,
            "tokens_per_s": float(self.tokens) / max(seconds, 1e-9),
            "peak_memory_mb": peak_memory_mb(pl_module.device),
        }


class FitWatch(L.Callback):
    """Feeds the game's progress display (`apo.progress.GameWatch`) from one Trainer: the
    steps of a fit (its total, its loss now and then) or the batches of a prediction, what a
    finished fit reports, and a Ctrl-C the Trainer caught."""

    def __init__(self, watch: Any) -> None:
        self.watch = watch

    @staticmethod
    def _prediction(pl_module: L.LightningModule) -> str:
        if hasattr(pl_module, "pooling"):
            return "RM scores"
        return "sampling" if getattr(pl_module, "sampling", None) is not None else "log-probs"

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.prefix = getattr(pl_module, "log_prefix", None) or "fit"
        self.watch.start(self.prefix, float(trainer.estimated_stepping_batches))

    def _loss(self, trainer: L.Trainer) -> Any:
        return trainer.callback_metrics.get(f"{self.prefix}/loss")

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self.watch.advance(trainer.global_step, loss=lambda: self._loss(trainer))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        monitor = next((c for c in trainer.callbacks if isinstance(c, FitMonitor)), None)
        loss = self._loss(trainer)
        self.watch.end(
            {
                "name": self.prefix,
                "steps": trainer.global_step,
                "loss": float(loss) if loss is not None else None,
                "perf": dict(monitor.summary) if monitor is not None else {},
            }
        )

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        total = sum(trainer.num_predict_batches) if trainer.num_predict_batches else 0
        self.watch.start(self._prediction(pl_module), float(total), unit="batch")

    def on_predict_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self.watch.advance(batch_idx + 1)

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.watch.end()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        # Lightning turns a KeyboardInterrupt into SystemExit(1) after this hook
        self.watch.interrupt = exception
