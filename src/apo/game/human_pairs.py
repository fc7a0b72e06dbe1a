"""Human preference pairs collected on the warm-started policy (`data.human_pairs_from: policy`).

Real preference data (InstructGPT, HH) compares the starting model's own outputs: after the
warm start's SFT, the policy samples responses for the prompts of the human-pair splits and the
task's simulated annotators label a pair of them per prompt. The base RM then learns from the
distribution the game starts on, not from a hand-written noise model of it.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from apo.data.game_data import ListwiseItem

if TYPE_CHECKING:
    from apo.game.loop import GameLoop

#: samples drawn per prompt; the pair is the first two distinct ones (else the first two)
DRAWS = 4
PARTS = ("human_train", "human_val")


def collect(game: GameLoop) -> dict[str, list[dict[str, Any]]]:
    """Per part, one annotated pair of the policy's samples per prompt, as plain records."""
    data, cfg = game.dm.data, game.cfg
    prompts = [it.prompt for part in PARTS for it in getattr(data, part)]
    seed = int(cfg.seed)
    # its own seeds: the pairs depend on the warm-started policy and the seed, nothing else
    policy = game.players.policy_module(sampling=game.plan.eval_sampling, seed=seed * 10007 + 9001)
    recs = game.dm.generate(game.trainers.make("policy"), policy, prompts, DRAWS)
    rng = random.Random(seed * 7919 + 23)
    pairs = []
    for rec in recs:
        texts = rec["texts"]
        b = next((t for t in texts[1:] if t != texts[0]), texts[1])
        a = texts[0]
        chosen, rejected = (a, b) if game.task.annotate(rec["prompt"], a, b, rng) else (b, a)
        pairs.append(
            {"prompt": rec["prompt"], "responses": [chosen, rejected], "scores": [1.0, 0.0]}
        )
    n = len(data.human_train)
    return {"human_train": pairs[:n], "human_val": pairs[n:]}


def apply(game: GameLoop, pairs: dict[str, list[dict[str, Any]]]) -> None:
    """Make `pairs` the game's human preference data (and recount how often the simulated
    annotators agree with the oracle on the held-out ones)."""
    data = game.dm.data
    for part in PARTS:
        setattr(data, part, [ListwiseItem(**p) for p in pairs[part]])
    task = game.task
    agree = [
        task.reward(it.prompt, it.responses[0]) > task.reward(it.prompt, it.responses[1])
        for it in data.human_val
        if task.reward(it.prompt, it.responses[0]) != task.reward(it.prompt, it.responses[1])
    ]
    data.meta["annotator_oracle_agreement"] = sum(agree) / max(len(agree), 1)
    data.meta["human_pairs_from"] = "policy"
    data.meta["human_pairs_identical"] = sum(
        it.responses[0] == it.responses[1] for part in PARTS for it in getattr(data, part)
    )
