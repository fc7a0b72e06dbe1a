"""The typed plan of a game, built once from the config: what every fit optimises and how the
policy samples, per round. Phases read it; nothing is configured on a module between fits."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from omegaconf import DictConfig, ListConfig

from apo.config import plain
from apo.losses.objectives import PolicyObjective, policy_objective
from apo.losses.rm_objective import RMObjective
from apo.modules.sampling import SamplingSpec


@dataclass(frozen=True)
class RoundPlan:
    """One round's settings."""

    #: the RM fit's loss (c_kl, c_apo, K, margin, centering) and whether APO items are served
    rm: RMObjective
    #: the policy fit's objective with its loss options; it selects the samples it reads
    policy: PolicyObjective
    #: the policy fit's learning rate; None = `policy.optimizer.lr`
    lr: float | None
    #: how the round's samples are drawn (with the objective's mixture weight)
    sampling: SamplingSpec


@dataclass(frozen=True)
class GamePlan:
    """Every round's plan, the warm start's RM objective and the evaluation's sampling."""

    #: the base RM of the warm start: the round objective's human terms only
    warm_rm: RMObjective
    rounds: tuple[RoundPlan, ...]
    #: the evaluation samples the policy itself, never the mixture
    eval_sampling: SamplingSpec
    #: K, samples per prompt of the RM and policy splits each round
    samples_per_prompt: int
    #: samples per held-out test prompt in every evaluation
    eval_samples_per_prompt: int

    def round(self, r: int) -> RoundPlan:
        """The plan of round `r` (1-based, as the summary counts rounds)."""
        if not 1 <= r <= len(self.rounds):
            raise IndexError(f"round {r} is not in this game (game.rounds={len(self.rounds)})")
        return self.rounds[r - 1]


def per_round(value: Any, rounds: int, key: str) -> list[Any]:
    """A per-round schedule: a list of `rounds` values (round 1 first), or one value for every
    round. A list of another length is an error naming `key`."""
    if isinstance(value, list | tuple | ListConfig):
        values = list(value)
        if len(values) != rounds:
            raise ValueError(
                f"{key}={values}: a per-round schedule needs one value per round "
                f"(game.rounds={rounds}), got {len(values)}"
            )
        return values
    return [value] * rounds


def rm_objective(game: DictConfig, apo_coeff: float | None = None) -> RMObjective:
    """The RM fit's objective from the `game` config group (the one place that reads it);
    `apo_coeff` is this round's value of a per-round `game.apo_coeff`."""
    return RMObjective(
        kl_coeff=float(game.rm_kl_coeff),
        apo_coeff=float(game.apo_coeff if apo_coeff is None else apo_coeff),
        apo_loss=str(game.apo_loss),
        samples_per_prompt=int(game.samples_per_prompt),
        human_loss=str(game.rm_loss),
        margin=float(game.rm_margin),
        centering_coeff=float(game.rm_centering_coeff),
        weighting=str(game.apo_weighting),
    )


def sampling_spec(generation: DictConfig, mixture: float) -> SamplingSpec:
    g = plain(generation)
    return SamplingSpec(
        max_new_tokens=int(g["max_new_tokens"]),
        temperature=float(g["temperature"]),
        top_k=int(g["top_k"]),
        top_p=float(g["top_p"]),
        mixture=float(mixture),
    )


def build_plan(cfg: DictConfig) -> GamePlan:
    """The game's plan from the composed config (`game`, `objective`, `policy.generation`).

    `game.apo_coeff`, `objective.lr`, `objective.mixture` and every `objective.loss.*` option
    may be a per-round schedule (a list of `game.rounds` values), e.g. the paper's decreasing
    policy rates `objective.lr=[5e-6,2e-6,9e-7]`."""
    g, obj, n = cfg.game, cfg.objective, int(cfg.game.rounds)
    c_apo = per_round(g.apo_coeff, n, "game.apo_coeff")
    lrs = per_round(obj.get("lr"), n, "objective.lr")
    mixtures = per_round(obj.mixture, n, "objective.mixture")
    options = {
        k: per_round(v, n, f"objective.loss.{k}") for k, v in (obj.get("loss") or {}).items()
    }
    rounds = tuple(
        RoundPlan(
            rm=rm_objective(g, c_apo[i]),
            policy=policy_objective(str(obj.name), **{k: plain(v[i]) for k, v in options.items()}),
            lr=None if lrs[i] is None else float(lrs[i]),
            sampling=sampling_spec(cfg.policy.generation, mixtures[i]),
        )
        for i in range(n)
    )
    return GamePlan(
        warm_rm=replace(rm_objective(g, 0.0), apo_coeff=0.0),
        rounds=rounds,
        eval_sampling=sampling_spec(cfg.policy.generation, 0.0),
        samples_per_prompt=int(g.samples_per_prompt),
        eval_samples_per_prompt=int(g.eval_samples_per_prompt),
    )
