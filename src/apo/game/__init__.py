"""The APO game as parts: the loop, its phases, one game state, the plan, the players, the
Trainer factory, the evaluator and the round writer (see docs/architecture.md)."""

from apo.game.loop import GameLoop
from apo.game.phases import PHASES, START_PHASES, phase
from apo.game.state import GameState

__all__ = ["GameLoop", "GameState", "PHASES", "START_PHASES", "phase"]
