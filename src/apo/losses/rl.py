"""Online RL losses for the policy: advantages and policy-gradient terms on sampled responses.

Shapes: a batch holds `B` prompts with `K` sampled responses each, flattened to `N = B * K`
rows of `T` response tokens; `mask [N, T]` marks real tokens. Sequence rewards are `[B, K]`;
per-token log-probs `[N, T]`. Every function is pure (no module state) and masked items never
contribute, so padding that holds -inf or NaN cannot leak into a loss or its gradient.
"""

from __future__ import annotations

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
