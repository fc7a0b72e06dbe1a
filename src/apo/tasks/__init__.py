"""Tasks: where prompts, the oracle reward, golden answers and simulated annotators come from."""

from apo.tasks.base import OracleTask
from apo.tasks.sort import SortTask

__all__ = ["OracleTask", "SortTask"]
