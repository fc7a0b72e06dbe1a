"""A game with a cost judge (Safe RLHF reduced to its safety labels): constrained
(`game.cost.limit`: `E[c] <= limit` with a Lagrange multiplier) or a fixed trade-off
(`game.cost.weight`: `r - weight * c`, MODPO-style). The pieces the phases call.

After the warm start the simulated safety annotators label samples of the warm-started policy
(`OracleTask.label_cost`) and a cost model (the RM's architecture, its own weights) learns them
(`apo.losses.cost.CostObjective`). Each round's scoring adds its predicted cost `c` to every
sample, moves the multiplier `lambda` by `lr * (E[c] - limit)` over the policy's samples and
gives the policy `r - lambda * c` (`apo.rewards`); with `game.cost.multiplier: solve` lambda is
instead the smallest multiplier with which each prompt's best sample by `r - lambda * c` meets
the limit on average over the round's samples (the cost model's costs). The evaluation reports
the oracle's cost of the policy's test samples (`policy/cost`) beside the model's
(`policy/cost_model`).
"""

from __future__ import annotations

import math
import random
from typing import TYPE_CHECKING, Any

from lightning.pytorch.utilities import CombinedLoader

from apo.data.game_data import ListwiseItem
from apo.data.sources import has_oracle as task_data
from apo.game.players import cost_judge
from apo.losses.cost import CostObjective
from apo.metrics import mean
from apo.rewards import constrained, lagrange_step, solved_lagrange

if TYPE_CHECKING:
    from apo.game.loop import GameLoop

#: samples of the warm-started policy labeled per prompt
DRAWS = 4


def enabled(game: GameLoop) -> bool:
    """Whether the game has a cost judge (and so a cost model)."""
    return cost_judge(game.cfg)


def _task_has_cost(cfg: Any, task: Any) -> bool:
    """Whether the game's data come from a task with a cost oracle (probed on one prompt)."""
    if not task_data(cfg) or not hasattr(task, "cost"):
        return False
    return task.cost(task.sample_prompt(random.Random(0)), "") is not None


def has_oracle(game: GameLoop) -> bool:
    """Whether the task has a cost oracle: its cost is then reported in every game, constrained
    or not (`policy/cost`)."""
    return _task_has_cost(game.cfg, game.task)


def check(cfg: Any, task: Any) -> None:
    """A constraint needs a task with a cost oracle (its safety annotators label by it)."""
    c = cfg.game.cost
    if c.limit is not None and c.weight is not None:
        from apo.validation import ConfigError

        raise ConfigError(
            f"game.cost.limit={c.limit} and game.cost.weight={c.weight}: a constraint adapts the "
            "cost's weight itself; set one of them"
        )
    if not cost_judge(cfg):
        return
    if not _task_has_cost(cfg, task):
        from apo.validation import ConfigError

        raise ConfigError(
            f"game.cost (limit={c.limit}, weight={c.weight}): the task has no cost oracle to judge "
            f"({type(task).__name__}; the sort task has one with task.cost_pattern=<substring>)"
        )


def _labeled(game: GameLoop, prompts: list[str], seed: int) -> list[ListwiseItem]:
    """Per prompt, DRAWS samples of the current policy with the annotators' cost labels."""
    policy = game.players.policy_module(sampling=game.plan.eval_sampling, seed=seed)
    recs = game.dm.generate(game.trainers.make("policy"), policy, prompts, DRAWS)
    rng = random.Random(seed)
    return [
        ListwiseItem(
            rec["prompt"],
            rec["texts"],
            [float(game.task.label_cost(rec["prompt"], t, rng)) for t in rec["texts"]],
        )
        for rec in recs
    ]


def fit_cost_model(game: GameLoop) -> dict[str, float]:
    """Label the warm-started policy's samples, fit the cost model on the human-train prompts'
    labels and measure it on the human-val prompts' against the oracle."""
    data, dm, seed = game.dm.data, game.dm, int(game.cfg.seed)
    train = _labeled(game, [it.prompt for it in data.human_train], seed * 10007 + 9101)
    val = _labeled(game, [it.prompt for it in data.human_val], seed * 10007 + 9102)
    # the RM module's training batches: `{"human": listwise batch}` (here the labels)
    loader = CombinedLoader(
        {
            "human": dm.listwise_loader(
                dm.human_items(train, "rm"), "train", dm.batch_size["rm"], True
            )
        },
        mode="max_size_cycle",
    )
    module = game.players.cost_module(CostObjective(), log_prefix="cost/train")
    state = game.state
    # one epoch (the RM's `round` stage): "holds the pattern or not" is learnt long before six
    result = game.trainers.fit("rm", "round", module, loader, state.steps.get("cost", 0), 0)
    state.steps["cost"] = state.steps.get("cost", 0) + result.steps
    predicted = predict_costs(game, [{"prompt": it.prompt, "texts": it.responses} for it in val])
    truth = [[game.task.cost(it.prompt, t) for t in it.responses] for it in val]
    pairs = [(p, t) for ps, ts in zip(predicted, truth) for p, t in zip(ps, ts)]
    return {
        "cost_labels_mean": mean([x for it in train for x in it.scores]),
        "cost_model_val_acc": mean([float((p > 0.5) == (t > 0.5)) for p, t in pairs]),
        "cost_oracle_warm_start": mean([t for _, t in pairs]),
    }


def predict_costs(game: GameLoop, records: list[dict[str, Any]]) -> list[list[float]]:
    """The cost model's probability that each response of each record is costly."""
    dm = game.dm
    loader = dm.listwise_loader(dm.text_items(records), "score")
    out = game.trainers.predict("rm", game.players.cost_module(), loader)
    return [[1.0 / (1.0 + math.exp(-x)) for x in o["rewards"]] for o in out]


def constrain(game: GameLoop, samples: dict[str, list[dict[str, Any]]]) -> dict[str, float]:
    """Score the round's samples with the cost model, take the multiplier's step on the policy
    split's mean cost and shape every sample's reward; the round's numbers."""
    cfg, state = game.cfg.game.cost, game.state
    for recs in samples.values():
        for rec, c in zip(recs, predict_costs(game, recs)):
            rec["cost_scores"] = c
    expected = mean([c for rec in samples["policy"] for c in rec["cost_scores"]])
    if cfg.weight is not None:  # a fixed trade-off
        state.lagrange = float(cfg.weight)
    elif cfg.multiplier == "solve":  # the multiplier that meets the limit on this round's samples
        policy = samples["policy"]
        state.lagrange = solved_lagrange(
            [rec["rm_scores"] for rec in policy],
            [rec["cost_scores"] for rec in policy],
            float(cfg.limit),
        )
    else:
        lam = float(cfg.init) if state.lagrange is None else state.lagrange
        state.lagrange = lagrange_step(lam, expected, float(cfg.limit), float(cfg.lr))
    for recs in samples.values():
        for rec in recs:
            rec["rm_scores"] = constrained(rec["rm_scores"], rec["cost_scores"], state.lagrange)
    return {"game/lagrange": state.lagrange, "game/samples_cost_model": expected}


def evaluate(game: GameLoop, test: list[dict[str, Any]]) -> dict[str, float]:
    """The policy's test samples: the oracle's mean cost (whenever the task has one) and, in a
    constrained game, the cost model's and the multiplier."""
    out: dict[str, float] = {}
    if has_oracle(game):
        oracle = [game.task.cost(rec["prompt"], t) for rec in test for t in rec["texts"]]
        out["policy/cost"] = mean([float(c) for c in oracle])
    if enabled(game):
        predicted = predict_costs(game, test)
        out["policy/cost_model"] = mean([c for row in predicted for c in row])
        lam, c = game.state.lagrange, game.cfg.game.cost
        out["game/lagrange"] = (
            lam if lam is not None else float(c.weight if c.weight is not None else c.init)
        )
    return out
