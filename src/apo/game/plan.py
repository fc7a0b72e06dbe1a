"""The typed plan of a game, built once from the config: what every fit optimises and how the
policy samples, per round. Phases read it; nothing is configured on a module between fits."""

from __future__ import annotations

from dataclasses import dataclass, replace

from omegaconf import DictConfig

from apo.config import plain
from apo.losses.objectives import PolicyObjective, policy_objective
from apo.losses.rm import RMObjective
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


def rm_objective(game: DictConfig) -> RMObjective:
    """The RM fit's objective from the `game` config group (the one place that reads it)."""
    return RMObjective(
        kl_coeff=float(game.rm_kl_coeff),
        apo_coeff=float(game.apo_coeff),
        apo_loss=str(game.apo_loss),
        samples_per_prompt=int(game.samples_per_prompt),
        human_loss=str(game.rm_loss),
        margin=float(game.rm_margin),
        centering_coeff=float(game.rm_centering_coeff),
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
    """The game's plan from the composed config (`game`, `objective`, `policy.generation`)."""
    g, obj = cfg.game, cfg.objective
    rm = rm_objective(g)
    policy = policy_objective(str(obj.name), **(plain(obj.get("loss")) or {}))
    lr = None if obj.get("lr") is None else float(obj.lr)
    rounds = tuple(
        RoundPlan(
            rm=rm, policy=policy, lr=lr, sampling=sampling_spec(cfg.policy.generation, obj.mixture)
        )
        for _ in range(int(g.rounds))
    )
    return GamePlan(
        warm_rm=replace(rm, apo_coeff=0.0),
        rounds=rounds,
        eval_sampling=sampling_spec(cfg.policy.generation, 0.0),
        samples_per_prompt=int(g.samples_per_prompt),
        eval_samples_per_prompt=int(g.eval_samples_per_prompt),
    )
