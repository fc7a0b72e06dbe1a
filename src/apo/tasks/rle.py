"""A built-in task whose answer is longer than its prompt: expand a run-length code."""

from __future__ import annotations

import random

from apo.tasks.base import OracleTask


class RunLengthTask(OracleTask):
    """Prompt `"a3b1c2="`, golden response `"aaabcc"`: each letter repeated its count.

    The oracle gives the fraction of positions holding the right letter, over the longer of the
    response and the target (as the sort task does), so one letter too few in one run still
    earns most of the credit. Runs use distinct neighbouring letters, so a code has exactly one
    expansion. The noisy distribution (demonstrations, the compared responses) miscounts runs:
    `m` edits, `m` drawn from `edit_probs`, each adding or dropping one letter of a run or
    replacing one letter.

    Args (their defaults are in `configs/task/rle.yaml`):
        min_runs, max_runs: runs in a prompt.
        max_count: the largest count of a run (counts are 1..max_count).
        letters: the letters runs are made of.
        edit_probs: probabilities of 0, 1, 2, ... edits in a noisy response.
        annotator_beta: see `OracleTask`.
    """

    name = "rle"

    def __init__(
        self,
        min_runs: int,
        max_runs: int,
        max_count: int,
        letters: str,
        edit_probs: tuple[float, ...],
        annotator_beta: float,
    ) -> None:
        super().__init__(annotator_beta=annotator_beta)
        if not 1 <= min_runs <= max_runs:
            raise ValueError(
                f"RunLengthTask: need 1 <= min_runs <= max_runs, got {min_runs}, {max_runs}"
            )
        if not 1 <= max_count <= 9:
            raise ValueError(f"RunLengthTask: max_count must be in 1..9, got {max_count}")
        if len(set(letters)) < 2 or any(not c.isalpha() for c in letters):
            raise ValueError(
                f"RunLengthTask: letters must be >= 2 distinct letters, got {letters!r}"
            )
        probs = [float(p) for p in edit_probs]
        if not probs or any(p < 0 for p in probs) or abs(sum(probs) - 1.0) > 1e-6:
            raise ValueError(
                f"RunLengthTask: edit_probs must be non-negative and sum to 1, got {probs}"
            )
        self.min_runs, self.max_runs, self.max_count = min_runs, max_runs, max_count
        self.letters, self.edit_probs = "".join(dict.fromkeys(letters)), probs
        self.alphabet = self.letters + "".join(str(d) for d in range(1, max_count + 1)) + "="

    def sample_prompt(self, rng: random.Random) -> str:
        runs, prev = [], None
        for _ in range(rng.randint(self.min_runs, self.max_runs)):
            letter = rng.choice([c for c in self.letters if c != prev])
            runs.append(f"{letter}{rng.randint(1, self.max_count)}")
            prev = letter
        return "".join(runs) + "="

    def runs(self, prompt: str) -> list[tuple[str, int]]:
        code = prompt.rstrip("=")
        return [(code[i], int(code[i + 1])) for i in range(0, len(code), 2)]

    def golden(self, prompt: str) -> str:
        return "".join(letter * n for letter, n in self.runs(prompt))

    def reward(self, prompt: str, response: str) -> float:
        target = self.golden(prompt)
        hits = sum(a == b for a, b in zip(target, response))
        return hits / max(len(target), len(response), 1)

    def noisy_response(self, prompt: str, rng: random.Random) -> str:
        runs = [[letter, n] for letter, n in self.runs(prompt)]
        edits = rng.choices(range(len(self.edit_probs)), weights=self.edit_probs)[0]
        replaced: dict[int, str] = {}
        for _ in range(edits):
            i = rng.randrange(len(runs))
            op = rng.choice(("more", "fewer", "replace"))
            if op == "more" and runs[i][1] < self.max_count + 1:
                runs[i][1] += 1
            elif op == "fewer" and runs[i][1] > 1:
                runs[i][1] -= 1
            else:
                replaced[i] = rng.choice(self.letters)
        out = []
        for i, (letter, n) in enumerate(runs):
            run = letter * n
            if i in replaced:
                run = run[:-1] + replaced[i]
            out.append(run)
        return "".join(out)
