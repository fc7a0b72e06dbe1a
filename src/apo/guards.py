"""Guards that stop a game loudly instead of letting it train on garbage: non-finite losses and
gradients inside every fit, non-finite scores, and configurable limits on the policy's KL and
entropy (`game.guard`). A stop leaves the game state at the last finished phase."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from torch.distributed.tensor import DTensor

from apo.distributed import sharding
from apo.monitors import logs_this_step

log = logging.getLogger(__name__)


class GuardStop(RuntimeError):
    """A guard stopped the game; the message says what crossed which limit. `rewind_before`
    names the phase of the round whose result is rejected (the game state goes back to before
    it), or None (the state stays after the last finished phase)."""

    def __init__(self, message: str, rewind_before: str | None = None) -> None:
        super().__init__(message)
        self.rewind_before = rewind_before


class DivergenceError(GuardStop, FloatingPointError):
    """A fit or a score went non-finite, or the policy's log-probs broke down; the message names
    the player, the round and the step, and how to continue."""


#: a Monte-Carlo KL per response below this is not noise but broken log-probabilities
BROKEN_KL = -1.0
RESUME_HINT = (
    "lower the learning rate (or change what diverged) and continue the saved game with "
    "resume=true resume_allow=[<the changed keys>], e.g. resume_allow=[objective.lr]."
)


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if isinstance(t, DTensor) else t


class FiniteGuard(L.Callback):
    """Stops a fit on the first non-finite loss (before its backward) or gradient (before the
    optimizer step), so the weights are still those of the last good step. Every rank takes the
    same decision (a reduction over ranks), so none is left waiting in a collective.

    It also logs the gradient norm before clipping as `<log_prefix>/grad_norm`.

    Args:
        player: `policy` or `rm`, for the message.
        round_idx: the game round of the fit (0 = the warm start).
        step_offset: the player's steps before this fit (the message counts the game's steps).
        log_prefix: where the module logs its step metrics.
    """

    def __init__(self, player: str, round_idx: int, step_offset: int, log_prefix: str) -> None:
        self.player, self.round_idx, self.step_offset = player, round_idx, step_offset
        self.log_prefix = log_prefix
        self.sharded = False  # set when the fit starts: the engine has set the model up

    def _where(self, trainer: L.Trainer) -> str:
        fit = "warm-start fit" if self.round_idx == 0 else f"fit of round {self.round_idx}"
        return f"{self.player} {fit}, step {self.step_offset + trainer.global_step + 1}"

    def on_before_backward(self, trainer: L.Trainer, pl_module: Any, loss: torch.Tensor) -> None:
        ok = bool(torch.isfinite(loss.detach()).all())
        if not trainer.strategy.reduce_boolean_decision(ok, all=True):
            raise DivergenceError(
                f"{self._where(trainer)}: non-finite loss ({float(loss.detach()):.4g}); "
                + RESUME_HINT
            )

    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        self.sharded = sharding(pl_module) is not None

    def on_train_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        pl_module._guard_grad_norm = None  # nothing of a fit's steps outlives it

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: Any, optimizer) -> None:
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if not params:  # DeepSpeed keeps its own gradients; the loss check still guards it
            return
        if self.sharded:  # each rank's shards: their squares summed
            grads = [_local(p.grad).detach() for p in params]
            norms = torch._foreach_norm(grads, 2, dtype=torch.float32)
            total = trainer.strategy.reduce(torch.stack(norms).square().sum(), reduce_op="sum")
            total = total.sqrt()
        else:  # what `clip_grad_norm_` computes, which then clips with it (`GuardNormClipping`)
            total = torch.nn.utils.get_total_norm([p.grad for p in params], 2.0)
            pl_module._guard_grad_norm = (params, total)
        norm = float(total)
        if not trainer.strategy.reduce_boolean_decision(math.isfinite(norm), all=True):
            raise DivergenceError(f"{self._where(trainer)}: non-finite gradient; " + RESUME_HINT)
        if logs_this_step(trainer):  # every step checks, the written steps log
            pl_module.log(f"{self.log_prefix}/grad_norm", norm, on_step=True, on_epoch=False)


class GuardNormClipping:
    """A LightningModule mixin: clipping by norm (`trainer.gradient_clip_val`) with the norm
    `FiniteGuard` has just computed for the step, instead of Lightning's `clip_grad_norm_`
    computing it a second time (one norm per parameter each time: 1 ms of a 40 ms step of the
    default game's policy). The same torch functions as `clip_grad_norm_` on the same
    gradients: the same clipped gradients, bit for bit (tests/test_guards.py). Lightning clips
    where there is no such norm: a sharded model, DeepSpeed, a precision plugin of its own, or
    clipping by value."""

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        stashed, self._guard_grad_norm = getattr(self, "_guard_grad_norm", None), None
        plain = type(self.trainer.precision_plugin) in (Precision, MixedPrecision)
        if (
            stashed is None
            or not plain
            or getattr(self.trainer.precision_plugin, "scaler", None) is not None
            or gradient_clip_val is None
            or (gradient_clip_algorithm or "norm") != "norm"
        ):
            super().configure_gradient_clipping(  # type: ignore[misc]
                optimizer, gradient_clip_val, gradient_clip_algorithm
            )
            return
        if gradient_clip_val > 0:  # as Lightning's precision plugins: 0 = no clipping
            params, total = stashed
            torch.nn.utils.clip_grads_with_norm_(params, gradient_clip_val, total)


def check_finite(values: Iterable[float], what: str) -> None:
    """Raise `DivergenceError` naming `what` when any value is NaN or infinite."""
    bad = [v for v in values if not math.isfinite(v)]
    if bad:
        raise DivergenceError(
            f"{what}: {len(bad)} non-finite values (e.g. {bad[0]}); " + RESUME_HINT
        )


def check_limits(metrics: dict[str, Any], guard: dict[str, Any], r: int) -> list[str]:
    """The `game.guard` limits crossed by round `r`'s evaluation: `max_kl` (policy/kl above it)
    and `min_entropy` (policy/entropy below it). With `action: stop` they raise, else they are
    logged as warnings and returned. A KL estimate below `BROKEN_KL` always raises."""
    crossed = []
    kl, ent = metrics.get("policy/kl"), metrics.get("policy/entropy")
    if guard.get("max_kl") is not None and kl is not None and kl > guard["max_kl"]:
        crossed.append(f"policy/kl={kl:.4g} above game.guard.max_kl={guard['max_kl']}")
    if guard.get("min_entropy") is not None and ent is not None and ent < guard["min_entropy"]:
        crossed.append(
            f"policy/entropy={ent:.4g} below game.guard.min_entropy={guard['min_entropy']}"
        )
    if kl is not None and math.isfinite(kl) and kl < BROKEN_KL:
        # a Monte-Carlo KL(pi || pi_ref) is >= 0 up to sampling noise: far below, the
        # log-probabilities themselves have broken down, whatever the guard settings
        raise DivergenceError(
            f"round {r} evaluation: policy/kl={kl:.4g} < {BROKEN_KL}, but a KL estimate on the "
            "policy's own samples is >= 0 up to noise: its log-probabilities broke down in the "
            "round's policy fit; " + RESUME_HINT,
            rewind_before="policy_fit",
        )
    for msg in crossed:
        if guard["action"] == "stop":
            raise GuardStop(f"round {r} evaluation: {msg}; " + RESUME_HINT, "policy_fit")
        log.warning("round %d: %s", r, msg)
    return crossed


def check_health(
    metrics: dict[str, Any], guard: dict[str, Any], keys: Any, r: int = 0
) -> list[str]:
    """After the warm start (round 0's evaluation): is the SFT policy near its demonstrations
    (`game/warm_start_ratio` >= `game.guard.min_warm_start`) and can the base RM rank the
    policy's own samples (its on-policy accuracy >= `game.guard.min_onpolicy_acc`; 0.5 is
    chance)? After every later round: can the round's RM still rank them? A miss is a warning
    naming the numbers, or with `action: stop` a `GuardStop` (a later round's rewinds to
    before its policy fit)."""
    problems = []
    ratio, acc = metrics.get("game/warm_start_ratio"), metrics.get(keys.onpolicy_acc)
    low = guard.get("min_warm_start")
    if r == 0 and low is not None and ratio is not None and math.isfinite(ratio) and ratio < low:
        problems.append(
            f"the warm-started policy scores {metrics[keys.reward]:.3f}, {ratio:.0%} of its "
            f"demonstrations' {metrics['game/demo_reward']:.3f} (game.guard.min_warm_start="
            f"{low}): the warm start did not learn the task; try a larger player "
            "(backbone@policy.backbone=small_llama) or a longer SFT (policy.warmup.max_epochs)"
        )
    chance = guard.get("min_onpolicy_acc")
    if chance is not None and acc is not None and math.isfinite(acc) and acc < chance:
        rm = "the base RM" if r == 0 else f"round {r}'s RM"
        problems.append(
            f"{rm} ranks the policy's own samples at {keys.onpolicy_acc}={acc:.3f} "
            f"(game.guard.min_onpolicy_acc={chance}; 0.5 is chance): it cannot judge them"
            + ("" if r == 0 else ", so the next policy fits align on noise")
        )
    where = "warm start" if r == 0 else f"round {r}"
    for msg in problems:
        if guard["action"] == "stop":
            if r == 0:
                raise GuardStop(f"warm start: {msg}")
            raise GuardStop(f"round {r} evaluation: {msg}; " + RESUME_HINT, "policy_fit")
        log.warning("%s: %s", where, msg)
    return problems
