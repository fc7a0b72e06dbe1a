"""`progress: rich`: a live view of the game on the terminal (its phase, round r/R, the steps,
rate and ETA of the fit or prediction under way, the rounds' table) with Lightning's
`RichProgressBar` of every fit and prediction drawn inside it; log lines scroll above it."""

from __future__ import annotations

import logging
import sys
import time
from typing import TYPE_CHECKING, Any

from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.callbacks.progress.rich_progress import CustomProgress, MetricsTextColumn
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from apo.progress import duration
from apo.records import format_table

if TYPE_CHECKING:
    from apo.progress import GameWatch


class FitBar(RichProgressBar):
    """Lightning's rich bar of one fit or prediction, on the game view's console.

    Lightning's own bar reconfigures rich's global console and clears its live displays at
    every start, which would end the game view; this one starts its progress on the view's
    console instead, where rich (>= 14.1) nests it inside the view's live display, and leaves
    redrawing to the view (twice a second, whatever the step rate). Tied to Lightning 2.6's
    `RichProgressBar` internals (`_init_progress`), which pyproject pins.
    """

    def __init__(self, console: Console, watch: GameWatch) -> None:
        super().__init__(leave=False)
        self._game_console, self._watch = console, watch

    def _init_progress(self, trainer: Any) -> None:
        if self.is_enabled and (self.progress is None or self._progress_stopped):
            self._reset_progress_bar_ids()
            self._console = self._game_console
            self._metric_component = MetricsTextColumn(
                trainer,
                self.theme.metrics,
                self.theme.metrics_text_delimiter,
                self.theme.metrics_format,
            )
            self.progress = CustomProgress(
                *self.configure_columns(trainer),
                self._metric_component,
                auto_refresh=False,
                transient=True,
                console=self._console,
            )
            self.progress.start()
            self._progress_stopped = False

    def refresh(self, hard: bool = False) -> None:
        """The game view redraws on its own clock."""

    def get_metrics(self, trainer: Any, pl_module: Any) -> dict[str, Any]:
        # the loss the game view last read (no `.item()` per step, no logger version)
        a = self._watch.activity
        return {"loss": f"{a.loss:.4f}"} if a is not None and a.loss is not None else {}

    def _get_train_description(self, current_epoch: int) -> str:
        name = getattr(self.trainer.lightning_module, "log_prefix", None) or "fit"
        epochs = self.trainer.max_epochs
        return f"{name} epoch {current_epoch + 1}" + (f"/{epochs}" if epochs else "")


class RichView:
    """The live view of one game, on `console` (None: a new console on stdout)."""

    def __init__(self, watch: GameWatch, console: Console | None = None) -> None:
        self.watch = watch
        self.console = console if console is not None else Console()
        self.live = Live(
            get_renderable=self.render,
            console=self.console,
            # a frame costs ~2 ms of the training's CPU (the GIL): 2 a second are plenty
            refresh_per_second=2,
            transient=False,
            redirect_stdout=True,
            redirect_stderr=True,
        )
        self._streams: list[tuple[logging.StreamHandler, Any]] = []
        self._table: tuple[int, Text] = (-1, Text())

    def fit_bar(self) -> FitBar:
        return FitBar(self.console, self.watch)

    def start(self) -> None:
        self.live.start(refresh=True)
        # log handlers hold the stream they found when they were made (Hydra's, Lightning's,
        # DeepSpeed's: the terminal); pointed at rich's proxy of it, their lines print above the
        # live view instead of through it
        loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
        handlers = {h for lg in loggers if isinstance(lg, logging.Logger) for h in lg.handlers}
        for handler in handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream in _terminal_streams():
                proxy = sys.stderr if handler.stream in (sys.__stderr__,) else sys.stdout
                self._streams.append((handler, handler.setStream(proxy)))

    def stop(self, keep: bool = False) -> None:
        """End the view; `keep` leaves its last frame on the screen."""
        for handler, stream in self._streams:
            handler.setStream(stream)
        self._streams.clear()
        self.live.transient = not keep
        self.live.stop()

    # ---- drawing ------------------------------------------------------------------------------
    def render(self) -> Any:
        try:
            return self._render()
        except Exception as e:  # drawn from rich's refresh thread: never let it end the view
            return Text(f"(progress view: {type(e).__name__}: {e})", style="dim")

    def _render(self) -> Any:
        w = self.watch
        game = w.game
        rounds = int(game.cfg.game.rounds)
        r = w.current[0] if w.current else w.last_round
        header = Text.assemble(
            ("round ", "dim"),
            (f"{r}/{rounds}", "bold"),
            ("  phase ", "dim"),
            (w.current[1] if w.current else w.failed[1] if w.failed else "-", "bold cyan"),
            ("  elapsed ", "dim"),
            duration(time.perf_counter() - w.game_t0),
        )
        eta = w.game_eta()
        if eta is not None:
            header.append("  game ETA ", "dim").append(duration(eta))
        parts: list[Any] = [header, self.phases(r)]
        a = w.activity
        if a is not None:
            bar = ProgressBar(total=a.total if a.total < float("inf") else None, completed=a.done)
            table = Table.grid(padding=(0, 1))
            table.add_row(bar, Text(a.text()))
            parts.append(table)
        parts.append(self.rounds_table())
        return Panel(Group(*parts), title=f"APO game · {game.run_dir}", title_align="left")

    def phases(self, r: int) -> Text:
        """Round `r`'s phases: done (with their time), under way, to come."""
        w, out = self.watch, Text()
        for rr, name in w.schedule:
            if rr != r:
                continue
            if (rr, name) == w.failed:
                out.append(f"✗ {name} stopped after {w.times[(rr, name)]:.1f} s", "bold red")
            elif (rr, name) == w.current:
                seconds = time.perf_counter() - w.phase_t0
                out.append(f"▶ {name} {seconds:.1f} s", "bold yellow")
            elif (rr, name) in w.times:
                out.append(f"✓ {name} {w.times[(rr, name)]:.1f} s", "green")
            else:
                out.append(f"· {name}", "dim")
            out.append("   ")
        return out

    def rounds_table(self) -> Text:
        """The rounds so far, as the game prints them at its end (plain text: a rich `Table`
        costs milliseconds a frame); redone only when a round is added."""
        summary = self.watch.game.state.summary
        if self._table[0] != len(summary):
            keys = list(self.watch.game.judge.keys.table)
            text = format_table(summary[-12:], keys) if summary else "  ".join(["round", *keys])
            table = Text(text)
            table.stylize("bold", 0, text.find("\n") if "\n" in text else len(text))
            self._table = (len(summary), table)
        return self._table[1]


def _terminal_streams() -> tuple[Any, ...]:
    return tuple(s for s in (sys.__stdout__, sys.__stderr__) if s is not None)
