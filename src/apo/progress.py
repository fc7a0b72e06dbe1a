"""What a person watching a game sees while it plays: a live view on a terminal (`progress:
rich`, `apo.progress_rich`) or one log line per phase with its time and key numbers (`lines`),
the plan of the game first, and a trace naming the phase when the game is interrupted.

`GameWatch` is the one component the loop calls around the game and around each phase; the
fits and predictions feed it through a Lightning callback (`apo.monitors.FitWatch`). Importing
this module is cheap: `announce` runs before torch and Lightning are imported.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from apo.game.loop import GameLoop
    from apo.game.phases import Phase

log = logging.getLogger(__name__)

MODES = ("auto", "rich", "lines", "off")
#: seconds a Ctrl-C waits for the next step before it stops the game wherever it is
CTRL_C_GRACE_S = 10.0
CTRL_C_NOTE = (
    f"\nCtrl-C: the game stops after this step (at once if none ends within {CTRL_C_GRACE_S:g} s;"
    " Ctrl-C again to stop now)\n"
)


def resolve_mode(mode: str, stream: Any = None) -> str:
    """`auto` is `rich` when stdout is a terminal (not a dumb one), else `lines`."""
    if mode != "auto":
        return mode
    stream = stream if stream is not None else sys.stdout
    tty = hasattr(stream, "isatty") and stream.isatty()
    return "rich" if tty and os.environ.get("TERM") != "dumb" else "lines"


def _rank_zero() -> bool:
    # before Lightning is imported, from the variables every launcher sets
    return all(os.environ.get(v, "0") == "0" for v in ("RANK", "LOCAL_RANK", "SLURM_PROCID"))


def announce(cfg: Any) -> None:
    """The first line, before the seconds it takes to import the libraries and build the game."""
    if str(cfg.get("progress", "auto")) == "off" or not _rank_zero():
        return
    log.info(
        "APO game: %s rounds, objective %s, run dir %s; loading the libraries and building "
        "the players",
        cfg.game.rounds,
        cfg.objective.name,
        cfg.run_dir,
    )


def duration(seconds: float) -> str:
    """`0:01:23`."""
    s = max(int(round(seconds)), 0)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def si(x: float) -> str:
    """`15k`, `1.2M`: throughput and sizes in a line."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


@dataclass
class Activity:
    """The fit or prediction under way: what it is, how far it is."""

    name: str
    total: float
    #: what it counts: optimizer steps of a fit, batches of a prediction
    unit: str = "step"
    done: int = 0
    t0: float = field(default_factory=time.perf_counter)
    loss: float | None = None

    def eta(self) -> float | None:
        elapsed = time.perf_counter() - self.t0
        if self.done <= 0 or not 0 < self.total < float("inf"):
            return None
        return elapsed / self.done * max(self.total - self.done, 0)

    def text(self) -> str:
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        total = int(self.total) if self.total < float("inf") else "?"
        parts = [
            f"{self.name} {self.unit} {self.done}/{total}",
            f"{self.done / elapsed:.1f} {self.unit}es/s"
            if self.unit == "batch"
            else f"{self.done / elapsed:.1f} {self.unit}s/s",
        ]
        eta = self.eta()
        if eta is not None:
            parts.append(f"ETA {duration(eta)}")
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4f}")
        return ", ".join(parts)


class GameWatch:
    """Progress of one game on rank 0 (the other ranks are silent).

    Args:
        cfg: the game's config (`progress`, `progress_every_s`).
        game: the game it watches (its schedule, state, players, judge, logger).
        console: the rich `Console` of `progress: rich` (None: a new one on stdout).
    """

    def __init__(self, cfg: Any, game: GameLoop, console: Any = None) -> None:
        from apo.distributed import is_global_zero

        self.game, self.console = game, console
        self.rank_zero = is_global_zero()
        self.mode = resolve_mode(str(cfg.progress)) if self.rank_zero else "off"
        self.every_s = cfg.progress_every_s
        self.view: Any = None
        #: the game's `(round, phase)` in order, and those this session plays
        self.schedule: list[tuple[int, str]] = []
        self.todo: list[tuple[int, str]] = []
        self.current: tuple[int, str] | None = None
        self.phase_t0 = self.game_t0 = time.perf_counter()
        self.times: dict[tuple[int, str], float] = {}
        self.activity: Activity | None = None
        #: what each fit of the phase under way reported: name, steps, loss, FitMonitor summary
        self.fits: list[dict[str, Any]] = []
        #: the round shown when no phase is under way: the last one played
        self.last_round = 0
        #: the phase a Ctrl-C, a signal or an error stopped
        self.failed: tuple[int, str] | None = None
        #: the KeyboardInterrupt a Trainer caught (Lightning turns it into SystemExit(1))
        self.interrupt: BaseException | None = None
        #: a Ctrl-C arrived; set by the game's SIGINT handler (see `_ctrl_c_noted`)
        self.ctrl_c = False
        self._last_line = self._last_read = 0.0

    # ---- what the Trainers get ----------------------------------------------------------------
    def callbacks(self, player: str, stage: str | None) -> list[Any]:
        """Callbacks for every Trainer the game makes (`Trainers(callbacks=...)`)."""
        from apo.monitors import FitWatch

        out: list[Any] = [FitWatch(self)]
        if self.view is not None:
            out.append(self.view.fit_bar())
        return out

    def start(self, name: str, total: float, unit: str = "step") -> None:
        self.activity = Activity(name, total, unit)
        self._last_line = time.perf_counter()

    def advance(self, done: int, loss: Any = None) -> None:
        """A step (or prediction batch) ended; `loss()` reads the latest loss, a host sync, so
        only for a progress line or the live view's twice-a-second reading."""
        if self.ctrl_c:
            # a Ctrl-C arrived during the step: stop here, between steps (see `_ctrl_c_noted`)
            raise KeyboardInterrupt("Ctrl-C (stopped at the step after it arrived)")
        a = self.activity
        if a is None:
            return
        a.done = done
        now = time.perf_counter()
        every = self.every_s if self.mode == "lines" else None
        line_due = every is not None and now - self._last_line >= every
        read_due = self.view is not None and now - self._last_read >= 0.5
        if loss is not None and (line_due or read_due):
            value = loss()
            a.loss = float(value) if value is not None else a.loss
            self._last_read = now
        if line_due and self.current is not None:
            self._last_line = now
            log.info("round %d %s: %s", *self.current, a.text())

    def end(self, fit: dict[str, Any] | None = None) -> None:
        if fit is not None:
            self.fits.append(fit)
        self.activity = None

    # ---- around the game and each phase (called by GameLoop.run) ------------------------------
    @contextmanager
    def watch_game(self, schedule: list[tuple[int, Phase]], first: int) -> Iterator[None]:
        """The plan line; the live view while the game plays; the HParams dashboard after its
        last phase."""
        self.schedule = [(r, p.name) for r, p in schedule]
        self.todo = self.schedule[first:]
        self.game_t0 = time.perf_counter()
        if self.mode != "off":
            from apo.progress_lines import plan_line

            log.info("%s", plan_line(self, first))
        if self.mode == "rich":
            from apo.progress_rich import RichView

            self.view = RichView(self, self.console)
            self.view.start()
        stopped = True
        try:
            with self._ctrl_c_noted():
                yield
            stopped = False
        except KeyboardInterrupt:
            if self.failed is None and self.rank_zero:  # between phases: while saving
                done = self.game.state.done
                where = f"after round {done[0]} {done[1]}" if done else "before the first phase"
                log.warning("interrupted by Ctrl-C %s", where)
            raise
        else:
            if first < len(schedule):
                self.write_hparams()
        finally:
            if self.view is not None:
                # a game that stopped leaves its last view on the screen, a finished one its log
                self.view.stop(keep=stopped)
                self.view = None

    @contextmanager
    def _ctrl_c_noted(self) -> Iterator[None]:
        """While the game plays, a Ctrl-C stops it at the next step or prediction batch
        (`advance` raises KeyboardInterrupt there), not wherever it lands: raised in the middle
        of a library's bookkeeping (TensorBoard's writer queue, seen here) it can leave a lock or
        a queue that the shutdown then waits on forever. A second Ctrl-C, or `CTRL_C_GRACE_S`
        without a step, raises at once."""
        main = threading.current_thread() is threading.main_thread()
        if not main or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
            yield  # Ctrl-C is ignored or handled by someone else: leave it so
            return
        timer: threading.Timer | None = None

        def on_sigint(signum: int, frame: Any) -> None:
            nonlocal timer
            if self.ctrl_c:
                raise KeyboardInterrupt
            self.ctrl_c = True
            if self.rank_zero:  # os.write: no Python lock the interrupted code may hold
                os.write(2, CTRL_C_NOTE.encode())
            timer = threading.Timer(CTRL_C_GRACE_S, signal.pthread_kill, (main_id, signal.SIGINT))
            timer.daemon = True
            timer.start()

        main_id = threading.main_thread().ident
        signal.signal(signal.SIGINT, on_sigint)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            if timer is not None:
                timer.cancel()

    @contextmanager
    def watch_phase(self, r: int, phase: Phase) -> Iterator[None]:
        """Round `r`'s `phase`: its line when it ends, a trace when it does not."""
        if self.ctrl_c:  # it arrived between phases (while the game state was saved)
            raise KeyboardInterrupt("Ctrl-C (stopped before the next phase)")
        self.current, self.fits, self.interrupt = (r, phase.name), [], None
        self.last_round = r
        self.phase_t0 = time.perf_counter()
        if self.view is not None:
            self.view.live.refresh()  # a new phase shows at once, not at the next tick
        try:
            yield
        except BaseException as e:
            self.times[(r, phase.name)] = time.perf_counter() - self.phase_t0
            self.trace(r, phase.name, e)
            raise
        else:
            seconds = time.perf_counter() - self.phase_t0
            self.times[(r, phase.name)] = seconds
            if self.mode != "off":
                from apo.progress_lines import phase_line

                log.info("%s", phase_line(self, r, phase.name, seconds))
        finally:
            self.current, self.activity = None, None

    def trace(self, r: int, name: str, e: BaseException) -> None:
        """Say which phase a Ctrl-C, a signal or an error stopped, and where the saved game
        stands; a Ctrl-C is also noted in `state/progress.json`."""
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        seconds = time.perf_counter() - self.phase_t0
        ctrl_c = isinstance(e, KeyboardInterrupt) or (
            isinstance(e, SystemExit) and isinstance(self.interrupt, KeyboardInterrupt)
        )
        if ctrl_c:
            what = "interrupted by Ctrl-C"
        elif isinstance(e, SIGTERMException):
            what = "stopped by SIGTERM / SIGUSR1"
        else:
            what = f"stopped by {type(e).__name__}"
        at = f", at {self.activity.text()}" if self.activity is not None else ""
        done = self.game.state.done
        saved = (
            f"the game state is saved after round {done[0]} {done[1]} (resume=true continues "
            "from there)"
            if done
            else "no phase had finished, so there is no game state to resume"
        )
        self.failed = (r, name)
        if not self.rank_zero:
            return
        log.warning("round %d %s: %s after %.1f s%s; %s", r, name, what, seconds, at, saved)
        if ctrl_c:
            self.game.store.mark_interrupted(r, name, "SIGINT")

    # ---- the plan and the end -----------------------------------------------------------------
    def game_eta(self) -> float | None:
        """Seconds left: the rounds still to play times the mean time of the rounds played in
        this session (None before one has been)."""
        names: dict[int, list[str]] = {}
        for r, n in self.todo:
            if r > 0:
                names.setdefault(r, []).append(n)
        played = [r for r, ns in names.items() if all((r, n) in self.times for n in ns)]
        if not played:
            return None
        per_round = sum(self.times[(r, n)] for r in played for n in names[r]) / len(played)
        left = [r for r in names if r not in played]
        if not left:
            return None
        spent = sum(self.times.get((r, n), 0.0) for r in left for n in names[r])
        if self.current is not None:
            spent += time.perf_counter() - self.phase_t0
        return max(per_round * len(left) - spent, 0.0)

    def write_hparams(self) -> None:
        """The HParams dashboard: the game's overrides against its final round metrics."""
        from apo.logger import game_hparams, hydra_job

        if not self.rank_zero:
            return
        game = self.game
        last = game.state.summary[-1] if game.state.summary else {}
        wanted = [game.cfg.get("optimized_metric"), *game.judge.keys.table]
        wanted += ["policy/entropy", "policy/rm_reward", "rm/val/ece"]
        metrics = [m for m in dict.fromkeys(wanted) if m and m in last]
        game.logger.log_game_hparams(game_hparams(game.cfg, hydra_job(game.run_dir)), metrics)
