"""The policy objectives by name, each bound to its options: its loss and the samples it needs.

`policy_objective("dpo", beta=0.1, ...)` checks the name and the options against the loss
function and returns a `PolicyObjective`: `loss(...)` is the pure function of `apo.losses.policy`
with those options, and `select(records)` keeps, per prompt, the RM-scored samples that loss
reads (RJS needs only the best one, DPO the best and the worst), so that the policy fit does not
pay for forward passes over samples it ignores. The data module and the tests both use `select`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from apo.losses import rl
from apo.losses.policy import PAIR_MODES, Stats, dpo, ipo, lipo, rjs, rrhf, sft, slic

SELECTIONS = ("best", "best_worst", "all")


def _all(options: Mapping[str, Any]) -> str:
    return "all"


def _rjs_selection(options: Mapping[str, Any]) -> str:
    # With top_n = 1 the threshold only filters the best item, which "best" still delivers.
    return "best" if int(options["top_n"]) == 1 else "all"


def _pairwise_selection(options: Mapping[str, Any]) -> str:
    pairs = options["pairs"]
    if pairs not in PAIR_MODES:
        raise ValueError(f"objective.loss.pairs must be one of {PAIR_MODES}, got {pairs!r}")
    return "all" if pairs == "all" else "best_worst"


@dataclass(frozen=True)
class ObjectiveSpec:
    """A registered objective: its loss function and what data it needs."""

    fn: Callable[..., Any]
    #: whether reference log-probs must be computed (once per round) before the fit
    needs_reference: bool
    #: maps the objective's options to the samples it needs: "best", "best_worst" or "all"
    selection: Callable[[Mapping[str, Any]], str] = _all
    #: an online RL objective: its fit samples from the current policy at every step and
    #: `fn(**options)` gives its settings (`apo.losses.rl`); offline ones learn from the round's
    #: scored samples and `fn` is their loss
    online: bool = False

    @property
    def options(self) -> tuple[str, ...]:
        """The keyword options of the loss (each must be given; none has a default here)."""
        params = inspect.signature(self.fn).parameters.values()
        return tuple(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)


POLICY_OBJECTIVES: dict[str, ObjectiveSpec] = {
    "sft": ObjectiveSpec(sft, needs_reference=False),
    "rjs": ObjectiveSpec(rjs, needs_reference=False, selection=_rjs_selection),
    "rrhf": ObjectiveSpec(rrhf, needs_reference=False),
    "dpo": ObjectiveSpec(dpo, needs_reference=True, selection=_pairwise_selection),
    "ipo": ObjectiveSpec(ipo, needs_reference=True, selection=_pairwise_selection),
    "slic": ObjectiveSpec(slic, needs_reference=False, selection=_pairwise_selection),
    "lipo": ObjectiveSpec(lipo, needs_reference=True),
    # online: the reference log-probs are computed in every step, not once per round
    "rloo": ObjectiveSpec(rl.rloo, needs_reference=False, online=True),
    "grpo": ObjectiveSpec(rl.grpo, needs_reference=False, online=True),
    "ppo": ObjectiveSpec(rl.ppo, needs_reference=False, online=True),
}


@dataclass(frozen=True)
class PolicyObjective:
    """A registered objective bound to its options (see `policy_objective`)."""

    name: str
    options: Mapping[str, Any] = field(hash=False)

    @property
    def spec(self) -> ObjectiveSpec:
        return POLICY_OBJECTIVES[self.name]

    @property
    def needs_reference(self) -> bool:
        return self.spec.needs_reference

    @property
    def online(self) -> bool:
        return self.spec.online

    def rl(self) -> dict[str, Any]:
        """An online objective's settings (`apo.losses.rl`)."""
        if not self.online:
            raise ValueError(f"{self.name} is not an online objective")
        return self.spec.fn(**self.options)

    @property
    def selection(self) -> str:
        return self.spec.selection(self.options)

    def loss(
        self,
        logps: torch.Tensor,
        ref_logps: torch.Tensor | None,
        scores: torch.Tensor,
        mask: torch.Tensor,
        lengths: torch.Tensor,
    ) -> tuple[torch.Tensor, Stats]:
        if self.online:
            raise ValueError(f"{self.name} is online: its fit computes its own loss each step")
        return self.spec.fn(logps, ref_logps, scores, mask, lengths, **self.options)

    def select(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Per record (`prompt`, `responses`, `rm_scores`), the samples the loss reads, best
        first by RM score. The sort is stable: ties keep sample order, as the losses do."""
        mode = self.selection
        out = []
        for rec in records:
            order = sorted(range(len(rec["responses"])), key=lambda j: -rec["rm_scores"][j])
            if mode == "best":
                order = order[:1]
            elif mode == "best_worst" and len(order) > 1:
                order = [order[0], order[-1]]
            out.append(
                {
                    "prompt": rec["prompt"],
                    "responses": [rec["responses"][j] for j in order],
                    "rm_scores": [rec["rm_scores"][j] for j in order],
                }
            )
        return out


def policy_objective(name: str, **options: Any) -> PolicyObjective:
    """The objective `name` with `options`; an unknown name, a missing or an unknown option is
    an error naming the config key (`objective.name`, `objective.loss.<option>`)."""
    if name not in POLICY_OBJECTIVES:
        raise ValueError(
            f"objective.name: unknown policy objective {name!r}; known: {sorted(POLICY_OBJECTIVES)}"
        )
    spec = POLICY_OBJECTIVES[name]
    missing = [o for o in spec.options if o not in options]
    unknown = sorted(set(options) - set(spec.options))
    if missing or unknown:
        raise ValueError(
            f"objective.loss for {name!r}: "
            + "; ".join(
                part
                for part in (
                    f"missing {missing}" if missing else "",
                    f"unknown {unknown}" if unknown else "",
                )
                if part
            )
            + f" (its options: {list(spec.options)})"
        )
    objective = PolicyObjective(name, dict(options))
    if objective.selection not in SELECTIONS:
        raise ValueError(f"{name}: selection {objective.selection!r} is not one of {SELECTIONS}")
    return objective


#: the warm start's objective (SFT has no options)
SFT = PolicyObjective("sft", {})
