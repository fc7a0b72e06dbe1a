"""Online RL losses for the policy: advantages and policy-gradient terms on sampled responses.

Shapes: a batch holds `B` prompts with `K` sampled responses each, flattened to `N = B * K`
rows of `T` response tokens; `mask [N, T]` marks real tokens. Sequence rewards are `[B, K]`;
per-token log-probs `[N, T]`. Every function is pure (no module state) and masked items never
contribute, so padding that holds -inf or NaN cannot leak into a loss or its gradient.
"""

from __future__ import annotations

from typing import Any

import torch

Stats = dict[str, torch.Tensor]
KL_ESTIMATORS = ("k1", "k3")


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(x.dtype)
    return (torch.where(mask.bool(), x, torch.zeros_like(x)) * m).sum() / m.sum().clamp(min=1)


def kl_per_token(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str) -> torch.Tensor:
    """A per-token estimate of KL(pi || pi_ref) from tokens sampled from pi (Schulman 2020,
    "Approximating KL Divergence"): `k1 = log pi - log pi_ref` (unbiased, high variance, can be
    negative) or `k3 = (r - 1) - log r` with `r = pi_ref / pi` (unbiased, never negative)."""
    if kind == "k1":
        return logp - ref_logp
    if kind == "k3":
        log_r = ref_logp - logp
        return torch.expm1(log_r) - log_r
    raise ValueError(f"objective.loss.kl_estimator must be one of {KL_ESTIMATORS}, got {kind!r}")


def rloo_advantages(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """REINFORCE leave-one-out (Ahmadian et al. 2024, "Back to Basics", Eq. 7): each sample's
    reward minus the mean reward of the prompt's other valid samples. `[B, K]` -> `[B, K]`; a
    prompt with one valid sample has no baseline and gets advantage 0."""
    valid = mask.bool()
    r = torch.where(valid, rewards, torch.zeros_like(rewards))
    n = valid.sum(-1, keepdim=True).to(r.dtype)
    others = (r.sum(-1, keepdim=True) - r) / (n - 1).clamp(min=1)
    adv = torch.where(n > 1, r - others, torch.zeros_like(r))
    return torch.where(valid, adv, torch.zeros_like(adv))


def group_advantages(
    rewards: torch.Tensor, mask: torch.Tensor, scale: bool = True, eps: float = 1e-4
) -> torch.Tensor:
    """GRPO's group-relative advantages (Shao et al. 2024, "DeepSeekMath", Sec. 4.1.2): each
    sample's reward minus its prompt's mean, divided by the prompt's (population) standard
    deviation plus `eps` when `scale` (Dr. GRPO, Liu et al. 2025, drops the division)."""
    valid = mask.bool()
    m = valid.to(rewards.dtype)
    n = m.sum(-1, keepdim=True).clamp(min=1)
    r = torch.where(valid, rewards, torch.zeros_like(rewards))
    mean = r.sum(-1, keepdim=True) / n
    centred = torch.where(valid, r - mean, torch.zeros_like(r))
    if scale:
        std = (centred.square().sum(-1, keepdim=True) / n).sqrt()
        # a group of ties has no signal (and no division by zero)
        centred = torch.where(std > 0, centred / (std + eps), torch.zeros_like(centred))
    return centred


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation (Schulman et al. 2016, Eq. 16) over each row's real
    tokens `[N, T]` (right-padded): `delta_t = r_t + gamma V_{t+1} - V_t` with `V` after the last
    real token 0, `A_t = sum_l (gamma lam)^l delta_{t+l}`; returns `(advantages, returns =
    advantages + values)`, zero on padding."""
    m = mask.to(values.dtype)
    v = values * m
    r = rewards * m
    T = r.shape[-1]
    next_v = torch.cat([v[:, 1:], torch.zeros_like(v[:, :1])], dim=-1) * torch.cat(
        [m[:, 1:], torch.zeros_like(m[:, :1])], dim=-1
    )
    delta = (r + gamma * next_v - v) * m
    adv = torch.zeros_like(delta)
    running = torch.zeros_like(delta[:, 0])
    for t in range(T - 1, -1, -1):
        running = delta[:, t] + gamma * lam * running * m[:, t]
        adv[:, t] = running
    adv = adv * m
    return adv, (adv + v) * m


def clipped_policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip: float | None,
) -> tuple[torch.Tensor, Stats]:
    """The PPO-clip surrogate (Schulman et al. 2017, Eq. 7), token-mean over the batch's real
    tokens: `-min(rho A, clip(rho, 1 - eps, 1 + eps) A)` with `rho = exp(logp - old_logp)`.
    `advantages` are per token `[N, T]` or per sequence `[N]` (broadcast over its tokens).
    `clip=None` is plain REINFORCE on the same tokens (`-rho A` with `rho` = 1 at the sampling
    weights, whose gradient is `-A grad log pi`)."""
    if advantages.dim() == 1:
        advantages = advantages[:, None].expand_as(logp)
    valid = mask.bool()
    diff = torch.where(valid, logp - old_logp.detach(), torch.zeros_like(logp))
    ratio = torch.exp(diff)
    a = torch.where(valid, advantages.detach(), torch.zeros_like(logp))
    surrogate = ratio * a
    stats: Stats = {}
    if clip is not None:
        clipped = torch.clamp(ratio, 1.0 - clip, 1.0 + clip) * a
        surrogate = torch.minimum(surrogate, clipped)
        out = ((ratio - 1.0).abs() > clip) & valid
        stats["clip_frac"] = out.sum().to(logp.dtype).detach() / valid.sum().clamp(min=1)
    stats["ratio"] = _masked_mean(ratio.detach(), mask)
    return -_masked_mean(surrogate, mask), stats


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip: float | None,
) -> torch.Tensor:
    """PPO's value loss, token-mean: `0.5 max((V - R)^2, (clip(V, V_old - eps, V_old + eps) - R)^2)`
    (the clipped form of the PPO implementations; `clip=None`: `0.5 (V - R)^2`)."""
    err = (values - returns.detach()).square()
    if clip is not None:
        v_clip = old_values.detach() + torch.clamp(values - old_values.detach(), -clip, clip)
        err = torch.maximum(err, (v_clip - returns.detach()).square())
    return 0.5 * _masked_mean(err, mask)


# ---- the online objectives: their options ----------------------------------------------------
KL_PLACES = ("reward", "loss")


def _check(name: str, beta: float, kl_estimator: str, kl_in: str, epochs: int) -> None:
    if beta < 0:
        raise ValueError(f"{name}: objective.loss.beta must be >= 0, got {beta}")
    if kl_estimator not in KL_ESTIMATORS:
        raise ValueError(f"{name}: objective.loss.kl_estimator must be one of {KL_ESTIMATORS}")
    if kl_in not in KL_PLACES:
        raise ValueError(f"{name}: objective.loss.kl_in must be one of {KL_PLACES}, got {kl_in!r}")
    if epochs < 1:
        raise ValueError(f"{name}: objective.loss.epochs must be >= 1, got {epochs}")


def rloo(
    *, beta: float, kl_estimator: str, kl_in: str, clip: float | None, epochs: int
) -> dict[str, Any]:
    """RLOO (Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization for
    Learning from Human Feedback", Eq. 7-8): K samples per prompt from the current policy, each
    rewarded `r = RM(x, y) - beta KL(pi || pi_ref)` (`kl_in: reward`; or the KL as a loss term,
    `kl_in: loss`), advantages `r_i - mean_{j != i} r_j` (`rloo_advantages`), and the
    REINFORCE gradient (`clip: null`) or the PPO-clip surrogate, `epochs` passes per batch."""
    _check("rloo", beta, kl_estimator, kl_in, epochs)
    return {
        "advantage": "rloo",
        "beta": beta,
        "kl_estimator": kl_estimator,
        "kl_in": kl_in,
        "clip": clip,
        "epochs": epochs,
    }


def grpo(
    *,
    beta: float,
    kl_estimator: str,
    kl_in: str,
    clip: float | None,
    epochs: int,
    scale_std: bool,
) -> dict[str, Any]:
    """GRPO (Shao et al. 2024, "DeepSeekMath", Sec. 4.1, Eq. 3 and 4): group-normalised
    advantages `(r_i - mean) / std` over a prompt's K samples (`scale_std: false` keeps only the
    centring, as Dr. GRPO), the clipped ratio per token, several optimisation epochs per batch,
    and the KL as a loss term (`kl_in: loss`, k3 estimator) as in the paper."""
    _check("grpo", beta, kl_estimator, kl_in, epochs)
    return {
        "advantage": "group",
        "beta": beta,
        "kl_estimator": kl_estimator,
        "kl_in": kl_in,
        "clip": clip,
        "epochs": epochs,
        "scale_std": scale_std,
    }


def ppo(
    *,
    beta: float,
    kl_estimator: str,
    clip: float,
    value_clip: float | None,
    gamma: float,
    lam: float,
    vf_coeff: float,
    epochs: int,
    minibatches: int,
) -> dict[str, Any]:
    """PPO (Schulman et al. 2017, Eq. 7 and 9; Stiennon et al. 2020, "Learning to summarize
    from human feedback", Sec. 3.4): per-token rewards `-beta KL_t` with the RM's score added at
    the response's last token, a value model (a copy of the RM: its per-token scalar head) with
    GAE(gamma, lambda) advantages, the clipped policy and value losses (`vf_coeff`), `epochs`
    passes over `minibatches` per batch."""
    _check("ppo", beta, kl_estimator, "reward", epochs)
    if minibatches < 1 or not 0 <= lam <= 1 or not 0 < gamma <= 1 or vf_coeff < 0:
        raise ValueError("ppo: need minibatches >= 1, 0 <= lam <= 1, 0 < gamma <= 1, vf_coeff >= 0")
    return {
        "advantage": "gae",
        "beta": beta,
        "kl_estimator": kl_estimator,
        "kl_in": "reward",
        "clip": clip,
        "value_clip": value_clip,
        "gamma": gamma,
        "lam": lam,
        "vf_coeff": vf_coeff,
        "epochs": epochs,
        "minibatches": minibatches,
    }
