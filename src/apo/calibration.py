"""Calibration of a reward model's pairwise preferences (pure functions over 1-D tensors).

A Bradley-Terry RM predicts `P(i beats j) = sigmoid(r_i - r_j)`. The APO paper (Cheng et al. 2024,
following Guo et al. 2017, "On Calibration of Modern Neural Networks", Sec. 2) reports
ECE, ACE and MCE of these probabilities over 10 uniform bins on [0, 1].

Orientation matters. Bins group pairs by predicted probability and compare the mean prediction
with the share of pairs whose label is 1, so the orientation of a pair must not depend on its
label. Pass every pair in both orientations, `(p, 1)` for "preferred first" and `(1 - p, 0)` for
the reverse, as `preference_probs` does (and as the reference implementation of the paper does);
or in one orientation chosen without looking at the label (e.g. dataset order, if that is not
itself "chosen first"). Passing each pair once with the preferred item first (labels all 1) is
not a calibration measurement: every non-empty bin's accuracy is then 1, and the "ECE" reduces to
`1 - mean(p)`. With both orientations the bins are mirror images (bin `b` at accuracy `a`,
bin `1 - b` at `1 - a`), so the errors do not depend on which item is called `i`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torchmetrics.functional.classification import binary_calibration_error

from apo.losses.pairs import preference_pairs


def preference_probs(
    rewards: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both orientations of every strict pair of a listwise batch `[B, k]`, flattened.

    For each (i, j) with `score_i > score_j` (both valid; ties skipped) returns
    `sigmoid(r_i - r_j)` with label 1 and `sigmoid(r_j - r_i)` with label 0.
    """
    pairs = preference_pairs(scores, mask)
    r = torch.where(mask.bool(), rewards, torch.zeros_like(rewards)).detach().double()
    p = torch.sigmoid(r.unsqueeze(-1) - r.unsqueeze(-2))[pairs]
    probs = torch.cat([p, 1.0 - p])
    labels = torch.cat([torch.ones_like(p), torch.zeros_like(p)])
    return probs, labels


def calibration_errors(
    probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 10
) -> dict[str, torch.Tensor]:
    """ECE, ACE and MCE of binary predictions over `n_bins` uniform bins on [0, 1].

    Bin b holds `edges[b] <= p < edges[b + 1]`, the last bin also holds p = 1 (torchmetrics gives
    p = 1 a bin of its own; the two agree whenever no prediction is exactly 1; the paper's
    reference code bins with sklearn's `calibration_curve`, which puts a value lying exactly on
    an inner edge into the lower bin). Per bin,
    confidence is the mean prediction and accuracy the share of labels equal to 1.

    - `ece`: bin-size-weighted mean of `|accuracy - confidence|` (Guo et al. 2017, Eq. 3);
    - `ace`: unweighted mean over the non-empty bins, the APO paper's "average calibration error";
    - `mce`: the largest gap over the non-empty bins (Guo et al. 2017, Eq. 5).

    ECE and MCE come from torchmetrics' `binary_calibration_error` (`norm="l1"` / `"max"`),
    which bins the same way except that p = 1 exactly falls in a bin of its own there (this
    function's bins below put it in the last one); ACE and the bins are computed here.

    Also returns the per-bin arrays `counts`, `confidence`, `accuracy` (NaN for empty bins) and
    `edges` for `reliability_diagram`. All errors are NaN when there are no predictions.
    """
    probs = probs.detach().reshape(-1).double()
    labels = labels.detach().reshape(-1).double()
    if probs.shape != labels.shape:
        raise ValueError(f"probs and labels differ in size: {probs.numel()} vs {labels.numel()}")
    if probs.numel() and (probs.min() < 0 or probs.max() > 1):
        raise ValueError("probs must lie in [0, 1]")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    edges = torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64)
    # bucketize(right=True) - 1 gives [lo, hi) bins, the same boundaries as torchmetrics.
    idx = (torch.bucketize(probs, edges, right=True) - 1).clamp(0, n_bins - 1)
    counts = torch.zeros(n_bins, dtype=torch.float64).scatter_add_(0, idx, torch.ones_like(probs))
    conf_sum = torch.zeros(n_bins, dtype=torch.float64).scatter_add_(0, idx, probs)
    acc_sum = torch.zeros(n_bins, dtype=torch.float64).scatter_add_(0, idx, labels)
    filled = counts > 0
    nan = torch.full_like(counts, torch.nan)
    confidence = torch.where(filled, conf_sum / counts.clamp(min=1), nan)
    accuracy = torch.where(filled, acc_sum / counts.clamp(min=1), nan)
    gap = (accuracy - confidence).abs()[filled]
    if gap.numel():
        target = labels.long()
        ece = binary_calibration_error(probs, target, n_bins=n_bins, norm="l1")
        mce = binary_calibration_error(probs, target, n_bins=n_bins, norm="max")
        ace = gap.mean()
    else:
        ece = ace = mce = torch.tensor(torch.nan, dtype=torch.float64)
    return {
        "ece": ece,
        "ace": ace,
        "mce": mce,
        "counts": counts,
        "confidence": confidence,
        "accuracy": accuracy,
        "edges": edges,
    }


def reliability_diagram(bins: dict[str, torch.Tensor], path: str | Path, title: str = "") -> Path:
    """Write a reliability diagram of `calibration_errors(...)` output to a PNG; return its path.

    Bars are the per-bin accuracy, dots the per-bin mean confidence, the diagonal is perfect
    calibration; the bin counts sit above the bars and ECE / ACE / MCE go in the title.
    """
    # Figure + Agg canvas rather than pyplot: no global backend switch, no GUI, thread-safe.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    edges = bins["edges"].double()
    lo, width = edges[:-1], edges[1:] - edges[:-1]
    centers = lo + width / 2
    filled = bins["counts"] > 0

    fig = Figure(figsize=(5, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect")
    ax.bar(
        lo[filled].tolist(),
        bins["accuracy"][filled].tolist(),
        width=width[filled].tolist(),
        align="edge",
        edgecolor="black",
        alpha=0.7,
        label="accuracy",
    )
    ax.plot(
        centers[filled].tolist(),
        bins["confidence"][filled].tolist(),
        "o",
        color="tab:red",
        label="mean confidence",
    )
    for x, y, n in zip(
        centers[filled].tolist(), bins["accuracy"][filled].tolist(), bins["counts"][filled].tolist()
    ):
        ax.annotate(
            f"{int(n)}", (x, y), textcoords="offset points", xytext=(0, 2), ha="center", fontsize=7
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("predicted P(i beats j)")
    ax.set_ylabel("observed frequency")
    errs = "  ".join(f"{k.upper()} {float(bins[k]):.3f}" for k in ("ece", "ace", "mce"))
    ax.set_title(f"{title}\n{errs}" if title else errs, fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out
