"""The task extension point: subclass `OracleTask` in your own module and select it by config.

A task with an exact oracle makes alignment measurable without people: the oracle reward plays the
role of the paper's test RM / GPT-4 judge, `golden` plays GPT-4's answers, `annotate` plays the
human labellers, and `noisy_response` is the imperfect starting distribution (demonstrations and
the responses that the human preference pairs compare).
"""

from __future__ import annotations

import math
import random
from abc import ABC, abstractmethod

from transformers import PreTrainedTokenizerBase

from apo.tokenizer import build_char_tokenizer


class OracleTask(ABC):
    """A prompt distribution with an exact reward in [0, 1].

    Args:
        annotator_beta: inverse temperature of the simulated annotators' Bradley-Terry choice,
            `P(a > b) = sigmoid(beta * (R(a) - R(b)))`; larger is less noisy.
    """

    name: str = "task"
    #: characters the default tokenizer knows; override or override `build_tokenizer`.
    alphabet: str = ""

    def __init__(self, annotator_beta: float) -> None:
        if annotator_beta <= 0:
            raise ValueError(
                f"{type(self).__name__}: annotator_beta must be > 0, got {annotator_beta}"
            )
        self.annotator_beta = annotator_beta

    @abstractmethod
    def sample_prompt(self, rng: random.Random) -> str:
        """One prompt, the exact text the policy conditions on."""

    @abstractmethod
    def golden(self, prompt: str) -> str:
        """The best response (oracle reward 1)."""

    @abstractmethod
    def reward(self, prompt: str, response: str) -> float:
        """Oracle reward in [0, 1], with partial credit."""

    @abstractmethod
    def noisy_response(self, prompt: str, rng: random.Random) -> str:
        """An imperfect response from the starting distribution (what people would have written)."""

    def demonstration(self, prompt: str, rng: random.Random) -> str:
        """A supervised warm-start target; noisy by default so the starting policy can improve."""
        return self.noisy_response(prompt, rng)

    def annotate(self, prompt: str, a: str, b: str, rng: random.Random) -> bool:
        """A simulated annotator: True if `a` is preferred over `b` (noisy Bradley-Terry choice)."""
        margin = self.annotator_beta * (self.reward(prompt, a) - self.reward(prompt, b))
        return rng.random() < 1.0 / (1.0 + math.exp(-margin))

    def cost(self, prompt: str, response: str) -> float | None:
        """A second oracle, the cost in [0, 1] of a response (a constraint the policy must keep,
        e.g. a forbidden pattern); None: the task has none. `game.cost` constrains it."""
        return None

    def label_cost(self, prompt: str, response: str, rng: random.Random) -> bool:
        """A simulated safety annotator: True if it labels `response` costly. It sees the cost
        as a probability and errs with probability `cost_label_noise` (an attribute, 0 when a
        task does not set one)."""
        c = self.cost(prompt, response)
        if c is None:
            raise NotImplementedError(f"{type(self).__name__} has no cost oracle")
        noise = float(getattr(self, "cost_label_noise", 0.0))
        p = c * (1.0 - noise) + (1.0 - c) * noise
        return rng.random() < p

    def build_tokenizer(self) -> PreTrainedTokenizerBase:
        """The tokenizer both players use; saved as `tokenizer.json` in the run directory."""
        if not self.alphabet:
            raise NotImplementedError(
                f"{type(self).__name__}: set `alphabet` or override `build_tokenizer`"
            )
        return build_char_tokenizer(self.alphabet)
