"""A built-in word-level task: translate a sentence of a made-up language word by word."""

from __future__ import annotations

import random

from transformers import PreTrainedTokenizerBase

from apo.tasks.base import OracleTask
from apo.tokenizer import build_word_tokenizer


def _words(n: int, syllables: tuple[str, ...], rng: random.Random) -> list[str]:
    """`n` distinct made-up words of two syllables."""
    out: dict[str, None] = {}
    while len(out) < n:
        out.setdefault(rng.choice(syllables) + rng.choice(syllables), None)
    return list(out)


class TranslateTask(OracleTask):
    """Prompt `"kapo rimu ="`, golden response `"su teva lo"`: every source word has a fixed
    translation of one to three target words (a dictionary drawn once from `lexicon_seed`), and
    a sentence translates word by word. The tokenizer is over words (one token per word), so an
    answer is several tokens per source word and longer than its prompt.

    The oracle gives the fraction of positions (in words) holding the right word, over the
    longer of the response and the target. The noisy distribution replaces, drops or doubles
    words: `m` edits, `m` drawn from `edit_probs`.

    Args (their defaults are in `configs/task/translate.yaml`):
        n_source, n_target: the sizes of the two vocabularies.
        min_words, max_words: source words in a prompt.
        max_phrase: the longest translation of one source word (in target words).
        lexicon_seed: draws the two vocabularies and the dictionary.
        edit_probs: probabilities of 0, 1, 2, ... edits in a noisy response.
        annotator_beta: see `OracleTask`.
    """

    name = "translate"
    SYLLABLES_SOURCE = ("ka", "po", "ri", "mu", "te", "lo", "na", "vi", "so", "du")
    SYLLABLES_TARGET = ("ba", "ge", "xi", "qo", "zu", "fe", "ju", "wy", "ho", "ly")

    def __init__(
        self,
        n_source: int,
        n_target: int,
        min_words: int,
        max_words: int,
        max_phrase: int,
        lexicon_seed: int,
        edit_probs: tuple[float, ...],
        annotator_beta: float,
    ) -> None:
        super().__init__(annotator_beta=annotator_beta)
        if not 1 <= min_words <= max_words:
            raise ValueError(
                f"TranslateTask: need 1 <= min_words <= max_words, got {min_words}, {max_words}"
            )
        if not 2 <= n_source <= 90 or not 2 <= n_target <= 90 or max_phrase < 1:
            raise ValueError(
                f"TranslateTask: need 2 <= n_source, n_target <= 90 and max_phrase >= 1, got "
                f"{n_source}, {n_target}, {max_phrase}"
            )
        probs = [float(p) for p in edit_probs]
        if not probs or any(p < 0 for p in probs) or abs(sum(probs) - 1.0) > 1e-6:
            raise ValueError(
                f"TranslateTask: edit_probs must be non-negative and sum to 1, got {probs}"
            )
        rng = random.Random(lexicon_seed)
        self.source = _words(n_source, self.SYLLABLES_SOURCE, rng)
        self.target = _words(n_target, self.SYLLABLES_TARGET, rng)
        self.lexicon = {
            w: [rng.choice(self.target) for _ in range(rng.randint(1, max_phrase))]
            for w in self.source
        }
        self.min_words, self.max_words, self.edit_probs = min_words, max_words, probs

    def build_tokenizer(self) -> PreTrainedTokenizerBase:
        return build_word_tokenizer([*self.source, *self.target, "="])

    def sample_prompt(self, rng: random.Random) -> str:
        n = rng.randint(self.min_words, self.max_words)
        return " ".join(rng.choice(self.source) for _ in range(n)) + " ="

    def golden(self, prompt: str) -> str:
        return " ".join(t for w in prompt.split()[:-1] for t in self.lexicon[w])

    def reward(self, prompt: str, response: str) -> float:
        target, got = self.golden(prompt).split(), response.split()
        hits = sum(a == b for a, b in zip(target, got))
        return hits / max(len(target), len(got), 1)

    def noisy_response(self, prompt: str, rng: random.Random) -> str:
        out = self.golden(prompt).split()
        edits = rng.choices(range(len(self.edit_probs)), weights=self.edit_probs)[0]
        for _ in range(edits):
            i = rng.randrange(len(out))
            op = rng.choice(("replace", "drop", "double"))
            if op == "replace":
                out[i] = rng.choice(self.target)
            elif op == "drop" and len(out) > 1:
                del out[i]
            else:
                out.insert(i, out[i])
        return " ".join(out)
