"""The reward the policy is aligned on, from what the judges of the game say: the RM ensemble's
mean less an uncertainty penalty (`game.uncertainty_penalty`, kappa), plus the weighted
standardised scores z_j of the game's other RMs (`game.judges`, `apo.game.judge_rms`) and, in a
constrained game (`game.cost`), less the Lagrange multiplier lambda times the cost model's
predicted cost:

    r(x, y) = mean_m r_m(x, y) - kappa * std_m r_m(x, y) + sum_j w_j z_j(x, y) - lambda * c(x, y)

lambda is the dual variable of `E[c] <= limit` (Safe RLHF): after each round's scoring it moves
by `lr * (E[c] - limit)` over the policy's samples, and never below 0.

Pure functions on lists of a record's per-response numbers; the score phase writes the result
into a record's `rm_scores` (the raw mean stays in `rm_mean`, the spread in `rm_std`), so every
policy objective, offline or online, reads the same shaped reward.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import torch

Rewards = TypeVar("Rewards", torch.Tensor, list[float])


def penalised(mean: Rewards, std: Rewards | Sequence[float], kappa: float) -> Rewards:
    """`mean - kappa * std`, per response, for tensors (the online fit's rollouts) or lists (a
    record's responses); kappa 0 = the mean itself."""
    if len(mean) != len(std):
        raise ValueError(f"penalised: {len(mean)} means but {len(std)} stds")
    if kappa < 0:
        raise ValueError(f"game.uncertainty_penalty must be >= 0, got {kappa}")
    if torch.is_tensor(mean):
        return mean - kappa * std if kappa else mean
    return [m - kappa * s for m, s in zip(mean, std)] if kappa else list(mean)


def weighted(rewards: Rewards, extra: Sequence[tuple[float, Rewards | Sequence[float]]]) -> Rewards:
    """`r + sum_j w_j * s_j`, per response, for tensors (the online fit's rollouts) or lists;
    `extra` holds `(w_j, s_j)` with one score per response."""
    for _, s in extra:
        if len(s) != len(rewards):
            raise ValueError(f"weighted: {len(rewards)} rewards but {len(s)} judge scores")
    if torch.is_tensor(rewards):
        return rewards + sum(w * s for w, s in extra) if extra else rewards
    return [r + sum(w * s[i] for w, s in extra) for i, r in enumerate(rewards)]


def constrained(rewards: Rewards, costs: Rewards | Sequence[float], lam: float) -> Rewards:
    """`r - lambda * c`, per response, for tensors (the online fit's rollouts) or lists."""
    if len(rewards) != len(costs):
        raise ValueError(f"constrained: {len(rewards)} rewards but {len(costs)} costs")
    if torch.is_tensor(rewards):
        return rewards - lam * costs
    return [r - lam * c for r, c in zip(rewards, costs)]


def lagrange_step(lam: float, mean_cost: float, limit: float, lr: float) -> float:
    """One projected dual-ascent step of the multiplier of `E[c] <= limit`: up while the
    constraint is broken, down (to 0 at most) while it holds."""
    return max(0.0, lam + lr * (mean_cost - limit))


def solved_lagrange(
    rewards: Sequence[Sequence[float]], costs: Sequence[Sequence[float]], limit: float
) -> float:
    """The smallest lambda >= 0 with which each prompt's best sample by `r - lambda * c` (the one
    every objective prefers) has a mean cost <= `limit` over the prompts, found by bisection (that
    mean does not rise with lambda). When no lambda meets the limit, the one that reaches the
    lowest mean cost the samples allow."""
    if len(rewards) != len(costs) or any(len(r) != len(c) for r, c in zip(rewards, costs)):
        raise ValueError("solved_lagrange: rewards and costs must have the same shape")

    def mean_cost(lam: float) -> float:
        picks = [
            max(range(len(r)), key=lambda j: (r[j] - lam * c[j], -j))
            for r, c in zip(rewards, costs)
        ]
        return sum(c[j] for c, j in zip(costs, picks)) / max(len(picks), 1)

    if mean_cost(0.0) <= limit:
        return 0.0
    # above every reward gap over every cost gap the pick is the cheapest sample (ties aside)
    spread = max((max(r) - min(r) for r in rewards if r), default=0.0)
    gaps = [abs(a - b) for c in costs for a in c for b in c if a != b]
    hi = (spread / min(gaps) if gaps else 0.0) * 2 + 1.0
    target = max(limit, mean_cost(hi))
    lo = 0.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if mean_cost(mid) <= target:
            hi = mid
        else:
            lo = mid
    return hi
