"""The plots of a report (matplotlib's Agg canvas: no display, no global backend)."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

from apo.records import read_jsonl
from apo.report.jobs import Job, by_group


def _figure(width: float = 6.4, height: float = 4.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _save(fig, ax, path: Path, xlabel: str, ylabel: str, title: str = "") -> Path:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    # outside the axes: with a dozen groups an inside legend hides the curves
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_metric(
    table: dict[str, dict[int, tuple[float, float, int]]],
    metric: str,
    path: Path,
    baseline: str = "",
) -> Path:
    """One line per group (mean ± s.e. band). Groups that differ only in the baseline's key
    share a colour; the baseline is dashed and the others differ in marker and line style.
    Overrides common to every group are left out of the legend."""
    from matplotlib import colormaps

    fig, ax = _figure(9.0, 4.2)
    key = baseline.partition("=")[0]

    def stem(group: str) -> str:
        return " ".join(p for p in group.split(" ") if not (key and p.startswith(f"{key}=")))

    common = set.intersection(*(set(g.split(" ")) for g in table)) if len(table) > 1 else set()
    stems = sorted({stem(g) for g in table})
    colors = colormaps["tab10" if len(stems) <= 10 else "tab20"]
    seen: dict[str, int] = defaultdict(int)
    for group, cells in table.items():
        rounds = sorted(cells)
        m = [cells[r][0] for r in rounds]
        se = [cells[r][1] if math.isfinite(cells[r][1]) else 0.0 for r in rounds]
        color = colors(stems.index(stem(group)) % colors.N)
        if baseline and baseline in group.split(" "):
            style, marker = "--", "o"
        else:
            i = seen[stem(group)]
            seen[stem(group)] += 1
            style, marker = ("-", "-.", ":")[i % 3], ("s", "^", "D", "v")[i % 4]
        label = " ".join(p for p in group.split(" ") if p not in common) or group
        line = ax.plot(rounds, m, style, marker=marker, label=label, color=color)[0]
        ax.set_xticks(rounds)
        ax.fill_between(
            rounds,
            [a - b for a, b in zip(m, se)],
            [a + b for a, b in zip(m, se)],
            color=line.get_color(),
            alpha=0.12,
        )
    ax.grid(alpha=0.3)
    return _save(fig, ax, path, "round", metric, f"{metric} by round (mean ± s.e. over seeds)")


def plot_reliability(jobs: list[Job], path: Path) -> Path | None:
    """Reliability curves of the final RM of each group, bins pooled over its seeds."""
    fig, ax = _figure(5.0, 5.0)
    drawn = False
    for group, members in by_group(jobs).items():
        counts = conf = acc = None
        for job in members:
            d = job.last_round_dir()
            if d is None or not (d / "calibration.json").exists():
                continue
            c = json.loads((d / "calibration.json").read_text())
            n = [x or 0.0 for x in c["counts"]]
            cs = [(x or 0.0) * k for x, k in zip(c["confidence"], n)]
            ac = [(x or 0.0) * k for x, k in zip(c["accuracy"], n)]
            counts = n if counts is None else [a + b for a, b in zip(counts, n)]
            conf = cs if conf is None else [a + b for a, b in zip(conf, cs)]
            acc = ac if acc is None else [a + b for a, b in zip(acc, ac)]
        if counts is None:
            continue
        pts = [(cs / n, a / n) for n, cs, a in zip(counts, conf, acc) if n > 0]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=group)
        drawn = True
    if not drawn:
        return None
    ax.plot([0, 1], [0, 1], color="gray", linestyle="--", linewidth=1)
    return _save(
        fig,
        ax,
        path,
        "predicted P(preferred)  (mean confidence per bin)",
        "observed frequency",
        "final RM reliability on held-out human pairs",
    )


def plot_reward_histograms(jobs: list[Job], path: Path) -> Path | None:
    """Histograms of the final RM's scores of the last round's samples, one per group."""
    fig, ax = _figure()
    drawn = False
    for group, members in by_group(jobs).items():
        scores = []
        for job in members:
            d = job.last_round_dir()
            if d is not None and (d / "samples.jsonl").exists():
                scores += [
                    row["rm_score"]
                    for row in read_jsonl(d / "samples.jsonl")
                    if row.get("rm_score") is not None
                ]
        if scores:
            ax.hist(scores, bins=40, alpha=0.45, label=group, density=True)
            drawn = True
    if not drawn:
        return None
    return _save(fig, ax, path, "RM score of the last round's samples", "density")
