"""Preemption: SIGTERM and SIGUSR1 end a game at the next safe point with its state saved, and
the process exits with 128 + the signal's number, so a scheduler, a shell or a multirun sees a
stopped job, never a success.

Inside a fit, Lightning's own SIGTERM handling stops the fit at the next batch (all ranks
together) and the phase stays unfinished; between phases, the loop stops after saving the phase
that just ended. SIGUSR1 (what SLURM sends ahead of a time limit with `--signal`) is forwarded
as SIGTERM, so both take the same path.
"""

from __future__ import annotations

import logging
import os
import signal
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(SystemExit):
    """The game stopped on a signal; its state is saved after the last finished phase and
    `resume=true` continues it. A `SystemExit` with code 128 + signal (143 for SIGTERM), so a
    multirun stops and the shell sees the signal's exit status."""

    def __init__(self, signum: int, where: str) -> None:
        super().__init__(128 + signum)
        self.signum, self.where = signum, where
        self.message = (
            f"stopped by {signal.Signals(signum).name} {where}; the game state is saved after "
            "the last finished phase: the same command with resume=true continues it"
        )

    def __str__(self) -> str:
        return self.message


class StopSignals:
    """Record SIGTERM / SIGUSR1 while a game runs (a context manager; the previous handlers are
    called too, and restored afterwards). Only the main thread can install handlers; elsewhere
    (e.g. a notebook's worker thread) the game runs without them."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        first = self.received is None
        if first:
            self.received = signum
            log.warning("received %s: stopping at the next safe point", signal.Signals(signum).name)
        previous = self._previous.get(signum)
        if callable(previous):
            previous(signum, frame)
        if signum == signal.SIGUSR1 and first:
            # Lightning stops a running fit on SIGTERM only; the handler above records USR1
            os.kill(os.getpid(), signal.SIGTERM)

    def __enter__(self) -> StopSignals:
        try:
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        except ValueError:  # not the main thread
            self._previous.clear()
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()
