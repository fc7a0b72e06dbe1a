"""Policy objectives on listwise batches of RM-scored samples.

Every objective takes `logps [B, k]` (summed response log-likelihood under the policy),
`ref_logps [B, k]` (the same under the frozen reference, or None), `scores [B, k]` (RM scores),
`mask [B, k]` and `lengths [B, k]` (response tokens), plus its own keyword options, and returns
`(loss, stats)`. They are registered, with the samples each needs, in `apo.losses.objectives`.

Conventions shared by all objectives: masked items never contribute (their values are zeroed
before any arithmetic, so padding that holds -inf or NaN cannot leak into the loss or its
gradient); equal scores never form a preference pair; a batch with nothing to learn from returns
0 with a graph, so that a distributed step still runs backward.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from apo.losses.pairs import best_worst, chosen_rejected, preference_pairs

Stats = dict[str, torch.Tensor]

PAIR_MODES = ("best_worst", "all")


# --------------------------------------------------------------------------------------- helpers


def _need_reference(name: str, ref_logps: torch.Tensor | None) -> None:
    if ref_logps is None:
        raise ValueError(f"{name} needs reference log-probs (ref_logps is None)")


def _token_nll(logps: torch.Tensor, lengths: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Token-mean NLL pooled over the kept items: summed NLL over their summed token counts."""
    k = keep.bool()
    nll = -torch.where(k, logps, torch.zeros_like(logps)).sum()
    return nll / torch.where(k, lengths.to(logps.dtype), torch.zeros_like(logps)).sum().clamp(min=1)


def _desc_rank(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """0-based rank of each item in its row by descending value, valid items first.

    The sort is stable, so ties keep column order: the same tie-break as the data module's
    stable `sorted`, which keeps what it selects and what the loss uses consistent.
    """
    filled = values.masked_fill(~valid, -math.inf)
    order = torch.sort(filled, dim=-1, descending=True, stable=True).indices
    ranks = torch.arange(values.shape[-1], device=values.device).expand_as(order)
    return torch.empty_like(order).scatter_(-1, order, ranks)


def _best_item(scores: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """`[B, k]` boolean, True on the best valid item of each row (first column among ties)."""
    return valid & (_desc_rank(scores, valid) == 0)


def _pair_matrix(scores: torch.Tensor, mask: torch.Tensor, pairs: str) -> torch.Tensor:
    """`[B, k, k]` boolean, True at (w, l) when (w, l) is a training pair under `pairs`."""
    if pairs == "all":
        return preference_pairs(scores, mask)
    if pairs == "best_worst":
        best, worst, ok = best_worst(scores, mask)
        B, k = scores.shape
        P = torch.zeros(B, k, k, dtype=torch.bool, device=scores.device)
        P[torch.arange(B, device=scores.device), best, worst] = ok
        return P
    raise ValueError(f"pairs must be one of {PAIR_MODES}, got {pairs!r}")


def _margins(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """`[B, k, k]` with entry (i, j) = x_i - x_j, masked items zeroed first."""
    x = torch.where(valid, x, torch.zeros_like(x))
    return x.unsqueeze(-1) - x.unsqueeze(-2)


def _pair_mean(values: torch.Tensor, P: torch.Tensor) -> torch.Tensor:
    w = P.to(values.dtype)
    return (values * w).sum() / w.sum().clamp(min=1)


def _margin_stats(margin: torch.Tensor, P: torch.Tensor, name: str = "reward") -> Stats:
    # Detached: stats are for logging and must not hold the graph alive.
    m = margin.detach()
    acc = _pair_mean((m > 0).to(m.dtype), P)
    return {f"{name}_margin": _pair_mean(m, P), f"{name}_acc": acc}


def _implicit_reward_stats(beta, logps, ref_logps, mask, P, m) -> Stats:
    """The margin statistics and TRL's chosen / rejected statistics of the implicit reward
    `beta * (logp - ref_logp)` (DPO, IPO)."""
    valid = mask.bool()
    rewards = beta * (logps - ref_logps)
    return {**_margin_stats(beta * m, P), **chosen_rejected(rewards, P, valid, logps)}


# ---------------------------------------------------------------------------------- objectives


def sft(logps, ref_logps, scores, mask, lengths) -> tuple[torch.Tensor, Stats]:
    """Supervised fine-tuning: token-mean negative log-likelihood of every valid item."""
    return _token_nll(logps, lengths, mask), {}


def rjs(
    logps, ref_logps, scores, mask, lengths, *, top_n: int, threshold: float | None
) -> tuple[torch.Tensor, Stats]:
    """Rejection sampling / RAFT (Dong et al. 2023, "RAFT: Reward rAnked FineTuning", Alg. 1).

    Token-mean NLL (pooled over the kept items of the batch) of the `top_n` best RM-scored valid
    items of each row; with `threshold`, only those whose score is `>= threshold` are kept, so a
    row with none contributes nothing. Ties at the `top_n` cut keep the earlier column.
    """
    if top_n < 1:
        raise ValueError(f"rjs: top_n must be >= 1, got {top_n}")
    valid = mask.bool()
    keep = valid & (_desc_rank(scores, valid) < top_n)
    if threshold is not None:
        keep &= scores >= threshold
    kept = keep.sum().to(logps.dtype) / valid.sum().clamp(min=1)
    return _token_nll(logps, lengths, keep), {"kept_frac": kept}


def rrhf(
    logps, ref_logps, scores, mask, lengths, *, sft_weight: float
) -> tuple[torch.Tensor, Stats]:
    """RRHF (Yuan et al. 2023, "RRHF: Rank Responses to Align Language Models with Human
    Feedback", Eq. 1-4).

    With length-normalised log-likelihoods `p_i = logp_i / len_i` (Eq. 1), the ranking loss
    (Eq. 2) is `sum_{score_i < score_j} max(0, p_i - p_j)` over the valid pairs of a row, and the
    fine-tuning loss (Eq. 3) is the token-mean NLL of the row's best-scored item. Normalisation:
    the per-row pair sum is averaged over the rows that have at least one valid item (so a
    prompt's term is the paper's per-prompt sum, and all-tie rows count as zero-ranking-loss
    prompts), and the NLL is pooled over the best items like `sft`. Loss (Eq. 4):
    `rank + sft_weight * nll`.
    """
    valid = mask.bool()
    p = logps / lengths.to(logps.dtype).clamp(min=1)
    P = preference_pairs(scores, mask)
    # (w, l) entry: p_w - p_l; the hinge fires when the worse item is more likely than the better.
    per_pair = F.relu(-_margins(p, valid)) * P.to(p.dtype)
    rows = valid.any(-1).sum().clamp(min=1)
    rank = per_pair.sum() / rows
    nll = _token_nll(logps, lengths, _best_item(scores, valid))
    return rank + sft_weight * nll, {"rank_loss": rank.detach(), "sft_loss": nll.detach()}


def dpo(
    logps,
    ref_logps,
    scores,
    mask,
    lengths,
    *,
    beta: float,
    label_smoothing: float,
    pairs: str,
) -> tuple[torch.Tensor, Stats]:
    """Direct Preference Optimization (Rafailov et al. 2023, Eq. 7).

    `-log sigmoid(beta * m)` with `m = (logp_w - ref_w) - (logp_l - ref_l)`, averaged over pairs:
    the best vs worst RM-scored item of each row with a strict preference (`pairs="best_worst"`),
    or every ordered pair with a strictly higher score (`pairs="all"`). With `label_smoothing`
    eps, the conservative DPO loss of Mitchell 2023 ("A note on DPO with noisy preferences &
    relationship to IPO"): `(1 - eps) * softplus(-beta m) + eps * softplus(beta m)`, i.e. the
    expected DPO loss when each preference label is flipped with probability eps.
    """
    _need_reference("dpo", ref_logps)
    if not 0.0 <= label_smoothing <= 0.5:
        raise ValueError(f"dpo: label_smoothing must lie in [0, 0.5], got {label_smoothing}")
    P = _pair_matrix(scores, mask, pairs)
    m = _margins(logps - ref_logps, mask.bool())
    eps = label_smoothing
    per_pair = (1 - eps) * F.softplus(-beta * m) + eps * F.softplus(beta * m)
    return _pair_mean(per_pair, P), _implicit_reward_stats(beta, logps, ref_logps, mask, P, m)


def ipo(
    logps, ref_logps, scores, mask, lengths, *, beta: float, pairs: str
) -> tuple[torch.Tensor, Stats]:
    """Identity Preference Optimization (Azar et al. 2023, "A General Theoretical Paradigm to
    Understand Learning from Human Preferences", Eq. 17).

    `(m - 1 / (2 beta))^2` with `m` the reference-adjusted log-ratio margin of `dpo` (on summed,
    not token-averaged, log-likelihoods, as in the paper), averaged over pairs chosen as in `dpo`.
    The square regresses the margin to a finite target instead of pushing it to infinity.
    """
    _need_reference("ipo", ref_logps)
    if beta <= 0:
        raise ValueError(f"ipo: beta must be > 0, got {beta}")
    P = _pair_matrix(scores, mask, pairs)
    m = _margins(logps - ref_logps, mask.bool())
    per_pair = (m - 1.0 / (2.0 * beta)) ** 2
    return _pair_mean(per_pair, P), _implicit_reward_stats(beta, logps, ref_logps, mask, P, m)


def slic(
    logps,
    ref_logps,
    scores,
    mask,
    lengths,
    *,
    delta: float,
    reg_weight: float,
    pairs: str,
) -> tuple[torch.Tensor, Stats]:
    """SLiC-HF (Zhao et al. 2023, "SLiC-HF: Sequence Likelihood Calibration with Human Feedback",
    Eq. 1, the rank-calibration hinge plus the cross-entropy regulariser).

    `max(0, delta - (logp_w - logp_l))` on summed log-likelihoods, averaged over pairs chosen as in
    `dpo`, plus `reg_weight` times the token-mean NLL of the best-scored item of every row that has
    a pair (one regularisation target per prompt, whatever the number of pairs). The paper
    regularises towards the SFT target; the best sample stands in for it here, as in its
    sample-and-rank variant. `reg_weight = 0` (default) is the bare calibration hinge; no reference
    model is needed either way.
    """
    valid = mask.bool()
    P = _pair_matrix(scores, mask, pairs)
    m = _margins(logps, valid)
    hinge = _pair_mean(F.relu(delta - m), P)
    has_pair = P.flatten(1).any(-1)
    nll = _token_nll(logps, lengths, _best_item(scores, valid) & has_pair[:, None])
    stats = {"hinge_loss": hinge.detach(), "reg_loss": nll.detach(), **_margin_stats(m, P, "logp")}
    # no reference: the "reward" SLiC calibrates is the summed log-likelihood itself
    stats.update(chosen_rejected(logps, P, valid, logps))
    return hinge + reg_weight * nll, stats


def lipo(logps, ref_logps, scores, mask, lengths, *, beta: float) -> tuple[torch.Tensor, Stats]:
    """LiPO-lambda (Liu et al. 2024, "LiPO: Listwise Preference Optimization through
    Learning-to-Rank", Sec. 4, the LambdaLoss objective).

    With `s_i = beta * (logp_i - ref_i)`, the loss of a row is
    `sum_{psi_i > psi_j} Delta_ij * -log sigmoid(s_i - s_j)` over its valid items, where
    `Delta_ij = |G_i - G_j| * |1/D(tau_i) - 1/D(tau_j)|`, `G = 2^psi - 1`, `D(tau) = log2(1 + tau)`
    and `tau` is the 1-based rank of an item under the (detached) model scores `s`.

    Labels: as in the paper, `psi_i` is item i's average win probability against the other valid
    items of its row. The RM is a Bradley-Terry model, so `P(i beats j) = sigmoid(score_i -
    score_j)`; this puts `psi` in (0, 1) (hence `G` in (0, 1)), is invariant to a shift of the
    scores, and orders items exactly as the scores do. Which pairs count is read from the raw
    scores, so exact ties never form a pair. Normalisation: summed over the pairs of a row and
    averaged over the rows that have at least one pair.
    """
    _need_reference("lipo", ref_logps)
    valid = mask.bool()
    dtype = logps.dtype
    zeros = torch.zeros_like(logps)
    s = beta * torch.where(valid, logps - ref_logps, zeros)
    P = preference_pairs(scores, mask)

    sc = torch.where(valid, scores.to(dtype), zeros)
    k = scores.shape[-1]
    others = valid.unsqueeze(-1) & valid.unsqueeze(-2)
    others &= ~torch.eye(k, dtype=torch.bool, device=scores.device)
    win = torch.sigmoid(sc.unsqueeze(-1) - sc.unsqueeze(-2)) * others.to(dtype)
    psi = win.sum(-1) / others.sum(-1).clamp(min=1).to(dtype)
    gain = torch.exp2(psi) - 1

    tau = (_desc_rank(s.detach(), valid) + 1).to(dtype)
    inv_disc = 1.0 / torch.log2(1.0 + tau)
    lam = (gain.unsqueeze(-1) - gain.unsqueeze(-2)).abs()
    lam = lam * (inv_disc.unsqueeze(-1) - inv_disc.unsqueeze(-2)).abs()
    # Scores are data, not parameters: the lambda weights must not carry gradient.
    lam = lam.detach()

    per_pair = lam * F.softplus(-(s.unsqueeze(-1) - s.unsqueeze(-2))) * P.to(dtype)
    rows = P.flatten(1).any(-1).sum().clamp(min=1)
    loss = per_pair.sum() / rows
    stats = _margin_stats(s.unsqueeze(-1) - s.unsqueeze(-2), P)
    return loss, {**stats, **chosen_rejected(s, P, valid, logps)}
