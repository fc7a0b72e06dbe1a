"""Tasks: where prompts, the oracle reward, golden answers and simulated annotators come from."""

from apo.tasks.base import OracleTask
from apo.tasks.rle import RunLengthTask
from apo.tasks.sort import SortTask
from apo.tasks.translate import TranslateTask

__all__ = ["OracleTask", "RunLengthTask", "SortTask", "TranslateTask"]
