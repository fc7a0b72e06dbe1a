"""The built-in default task: sort a string of digits, with position-wise partial credit."""

from __future__ import annotations

import random

from apo.tasks.base import OracleTask


class SortTask(OracleTask):
    """Prompt `"3817="`, golden response `"1378"`.

    The oracle gives the fraction of positions that hold the right digit, over the longer of the
    response and the target, so a response that is one swap or one dropped digit away still earns
    most of the credit. The noisy distribution applies `m` random edits (swap, replace, delete,
    insert) to the sorted answer, `m` drawn from `edit_probs`.

    Args (their defaults are in `configs/task/sort.yaml`):
        min_len, max_len: number of digits in a prompt.
        edit_probs: probabilities of 0, 1, 2, ... edits in a noisy response.
        annotator_beta: see `OracleTask`.
        cost_pattern: a forbidden substring: a response holding it costs 1, else 0 (None: no
            cost oracle). With "9" about half the golden answers are costly, so a limit on the
            cost trades reward (trailing 9s dropped) for safety.
        cost_label_noise: the share of responses the simulated safety annotators label wrong.
    """

    name = "sort"
    alphabet = "0123456789="

    def __init__(
        self,
        min_len: int,
        max_len: int,
        edit_probs: tuple[float, ...],
        annotator_beta: float,
        cost_pattern: str | None,
        cost_label_noise: float,
    ) -> None:
        super().__init__(annotator_beta=annotator_beta)
        # `task.cost_pattern=9` arrives as an int from the command line
        cost_pattern = None if cost_pattern is None else str(cost_pattern)
        if cost_pattern == "":
            raise ValueError("SortTask: cost_pattern must be a non-empty string or null")
        if not 0 <= cost_label_noise < 0.5:
            raise ValueError(
                f"SortTask: cost_label_noise must be in [0, 0.5), got {cost_label_noise}"
            )
        self.cost_pattern, self.cost_label_noise = cost_pattern, cost_label_noise
        if not 1 <= min_len <= max_len:
            raise ValueError(f"SortTask: need 1 <= min_len <= max_len, got {min_len}, {max_len}")
        probs = [float(p) for p in edit_probs]
        if not probs or any(p < 0 for p in probs) or abs(sum(probs) - 1.0) > 1e-6:
            raise ValueError(f"SortTask: edit_probs must be non-negative and sum to 1, got {probs}")
        self.min_len, self.max_len, self.edit_probs = min_len, max_len, probs

    def sample_prompt(self, rng: random.Random) -> str:
        n = rng.randint(self.min_len, self.max_len)
        return "".join(rng.choice("0123456789") for _ in range(n)) + "="

    def golden(self, prompt: str) -> str:
        return "".join(sorted(prompt.rstrip("=")))

    def reward(self, prompt: str, response: str) -> float:
        target = self.golden(prompt)
        hits = sum(a == b for a, b in zip(target, response))
        return hits / max(len(target), len(response), 1)

    def cost(self, prompt: str, response: str) -> float | None:
        if self.cost_pattern is None:
            return None
        return float(self.cost_pattern in response)

    def noisy_response(self, prompt: str, rng: random.Random) -> str:
        out = list(self.golden(prompt))
        edits = rng.choices(range(len(self.edit_probs)), weights=self.edit_probs)[0]
        for _ in range(edits):
            op = rng.choice(("swap", "replace", "delete", "insert"))
            if op == "swap" and len(out) >= 2:
                i, j = rng.sample(range(len(out)), 2)
                out[i], out[j] = out[j], out[i]
            elif op == "replace" and out:
                out[rng.randrange(len(out))] = rng.choice("0123456789")
            elif op == "delete" and len(out) > 1:
                del out[rng.randrange(len(out))]
            else:
                out.insert(rng.randrange(len(out) + 1), rng.choice("0123456789"))
        return "".join(out)
