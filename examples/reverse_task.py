"""A complete user-defined task: reverse a word. Plug it in without editing the package, with its
config `configs/task/reverse.yaml` beside this file (run from the project directory):

    PYTHONPATH=examples apo-train --config-dir examples/configs task=reverse experiment=tiny
"""

from __future__ import annotations

import random

from apo.tasks import OracleTask


class ReverseTask(OracleTask):
    name = "reverse"
    alphabet = "abcdefgh:"

    def __init__(self, min_len: int = 3, max_len: int = 6, annotator_beta: float = 8.0) -> None:
        super().__init__(annotator_beta=annotator_beta)
        self.min_len, self.max_len = min_len, max_len

    def sample_prompt(self, rng: random.Random) -> str:
        n = rng.randint(self.min_len, self.max_len)
        return "".join(rng.choice("abcdefgh") for _ in range(n)) + ":"

    def golden(self, prompt: str) -> str:
        return prompt.rstrip(":")[::-1]

    def reward(self, prompt: str, response: str) -> float:
        target = self.golden(prompt)
        return sum(a == b for a, b in zip(target, response)) / max(len(target), len(response), 1)

    def noisy_response(self, prompt: str, rng: random.Random) -> str:
        out = list(self.golden(prompt))
        for _ in range(rng.choice((0, 1, 1, 2))):
            out[rng.randrange(len(out))] = rng.choice("abcdefgh")
        return "".join(out)
