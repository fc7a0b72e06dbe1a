"""The plots of a report (matplotlib's Agg canvas: no display, no global backend).

Every text of a plot stays inside its figure: constrained layout makes room for the title, the
axis labels and a legend outside the axes (beside them for a few groups, below for many), and
long labels are wrapped rather than left to run off the canvas.
"""

from __future__ import annotations

import json
import math
import statistics
import textwrap
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from apo.records import read_jsonl
from apo.report.jobs import Job, by_group

#: a mean ± s.e. band needs this many seeds at a round: the s.e. of two values is mostly noise
MIN_SEEDS_FOR_BAND = 3
#: a legend with more entries goes below the axes, in columns, instead of beside them
MANY_GROUPS = 6
#: characters per line of a legend entry (and of its title)
LABEL_WIDTH = 40
LEGEND_FONTSIZE = 8


@dataclass(frozen=True)
class Style:
    """How one group is drawn: the colour of its stem, the line style of its role."""

    color: tuple[float, ...]
    linestyle: str
    marker: str


def stem(group: str, baseline: str) -> str:
    """The group without the baseline's key: a baseline and its APO games share a stem."""
    key = baseline.partition("=")[0]
    return " ".join(p for p in group.split(" ") if not (key and p.startswith(f"{key}=")))


def group_styles(groups: list[str], baseline: str) -> dict[str, Style]:
    """One colour per stem; the baseline dashed, the stem's other groups solid, dash-dot, dotted.
    In drawing (and legend) order: by stem, its baseline first, so a colour's entries are adjacent."""
    from matplotlib import colormaps

    def is_baseline(group: str) -> bool:
        return bool(baseline) and baseline in group.split(" ")

    stems = sorted({stem(g, baseline) for g in groups})
    colors = colormaps["tab10" if len(stems) <= 10 else "tab20"]
    seen: dict[str, int] = defaultdict(int)
    out = {}
    for group in sorted(groups, key=lambda g: (stem(g, baseline), not is_baseline(g), g)):
        s = stem(group, baseline)
        color = colors(stems.index(s) % colors.N)
        if is_baseline(group):
            out[group] = Style(color, "--", "o")
        else:
            i = seen[s]
            seen[s] += 1
            out[group] = Style(color, ("-", "-.", ":")[i % 3], ("s", "^", "D", "v")[i % 4])
    return out


def _wrap(text: str, width: int = LABEL_WIDTH) -> str:
    # overrides are words: break between them, and inside one only if it alone is too long
    return textwrap.fill(text, width, break_on_hyphens=False)


def legend_labels(seeds: dict[str, int]) -> tuple[dict[str, str], str]:
    """Legend entries for groups -> number of seeds: each group's overrides less those every
    group shares, wrapped, with `(n=seeds)`; and the shared overrides (the legend's title)."""
    parts = {g: g.split(" ") for g in seeds}
    common = set.intersection(*(set(p) for p in parts.values())) if len(parts) > 1 else set()
    labels = {}
    for group, n in seeds.items():
        own = " ".join(p for p in parts[group] if p not in common) or "(no other overrides)"
        labels[group] = _wrap(f"{own} (n={n})")
    first = next(iter(parts.values()), [])
    shared = " ".join(p for p in first if p in common)
    return labels, _wrap(f"all groups: {shared}") if shared else ""


def band_mask(cells: list[tuple[float, float, int]]) -> list[bool]:
    """For each (mean, se, n) of a line: draw its ± s.e. band there? Only with enough seeds."""
    return [n >= MIN_SEEDS_FOR_BAND and math.isfinite(se) for _, se, n in cells]


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _legend(fig, ax, title: str, below: bool | None = None) -> None:
    """The figure's legend of `ax`'s lines: beside the axes for a few, else (or with `below`)
    under them in as many columns as fit."""
    handles, labels = ax.get_legend_handles_labels()
    options = {
        "fontsize": LEGEND_FONTSIZE,
        "title": title or None,
        "title_fontsize": LEGEND_FONTSIZE,
    }
    if not below and len(labels) <= MANY_GROUPS:
        fig.legend(handles, labels, loc="outside right upper", **options)
        return
    # below the axes in as many columns as fit the figure's width, measured, not guessed
    renderer = fig.canvas.get_renderer()
    for ncols in range(min(len(labels), 4), 0, -1):
        legend = fig.legend(handles, labels, loc="outside lower center", ncols=ncols, **options)
        if ncols == 1 or legend.get_window_extent(renderer).width <= 0.98 * fig.bbox.width:
            return
        legend.remove()


def _save(fig, ax, path: Path, xlabel: str, ylabel: str, title: str, legend_title: str):
    ax.set_xlabel(_wrap(xlabel, 70))
    ax.set_ylabel(_wrap(ylabel, 45))
    # ~8 characters per inch at the title's 12 pt
    ax.set_title(_wrap(title, int(8 * fig.get_figwidth())))
    ax.grid(alpha=0.3)
    _legend(fig, ax, legend_title)
    fig.savefig(path)
    return fig


def plot_metric(
    table: dict[str, dict[int, tuple[float, float, int]]],
    metric: str,
    path: Path,
    baseline: str = "",
):
    """One line per group, mean over seeds by round, with a ± s.e. band where the group has at
    least `MIN_SEEDS_FOR_BAND` seeds. Returns the matplotlib Figure (also saved to `path`)."""
    fig, ax = _figure(10.0, 5.5)
    styles = group_styles(list(table), baseline)
    labels, shared = legend_labels(
        {g: max(c[2] for c in cells.values()) for g, cells in table.items()}
    )
    all_rounds: set[int] = set()
    for group in styles:
        cells = table[group]
        rounds = sorted(cells)
        all_rounds.update(rounds)
        m = [cells[r][0] for r in rounds]
        st = styles[group]
        ax.plot(rounds, m, st.linestyle, marker=st.marker, color=st.color, label=labels[group])
        mask = band_mask([cells[r] for r in rounds])
        if any(mask):
            se = [cells[r][1] if ok else 0.0 for r, ok in zip(rounds, mask)]
            ax.fill_between(
                rounds,
                [a - b for a, b in zip(m, se)],
                [a + b for a, b in zip(m, se)],
                where=mask,
                color=st.color,
                alpha=0.12,
            )
    ax.set_xticks(sorted(all_rounds))
    title = f"{metric} by round (mean over seeds; ± s.e. band where n ≥ {MIN_SEEDS_FOR_BAND})"
    return _save(fig, ax, path, "round", metric, title, shared)


def _pooled_calibration(members: list[Job]) -> tuple[list[tuple[float, float]], int]:
    """Reliability points (confidence, accuracy) with the bins pooled over the group's jobs."""
    counts = conf = acc = None
    used = 0
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
        used += 1
    if counts is None:
        return [], 0
    return [(c / n, a / n) for n, c, a in zip(counts, conf, acc) if n > 0], used


def plot_reliability(jobs: list[Job], path: Path, baseline: str = ""):
    """Reliability curves of the final RM of each group, bins pooled over its seeds. Returns the
    Figure, or None when no job has a `calibration.json`."""
    curves = {}
    for group, members in by_group(jobs).items():
        pts, used = _pooled_calibration(members)
        if pts:
            curves[group] = (pts, used)
    if not curves:
        return None
    fig, ax = _figure(9.0, 6.0)
    styles = group_styles(list(curves), baseline)
    labels, shared = legend_labels({g: used for g, (_, used) in curves.items()})
    for group, st in styles.items():
        pts = curves[group][0]
        ax.plot(
            [p[0] for p in pts],
            [p[1] for p in pts],
            st.linestyle,
            marker=st.marker,
            color=st.color,
            label=labels[group],
        )
    ax.plot([0, 1], [0, 1], color="gray", linestyle=":", linewidth=1)
    return _save(
        fig,
        ax,
        path,
        "predicted P(preferred) (mean confidence per bin)",
        "observed frequency",
        "final RM reliability on held-out human pairs (bins pooled over seeds; grey: perfect)",
        shared,
    )


def zscores(values: list[float]) -> list[float]:
    """`values` in units of their own standard deviation around their own mean; [] when that is
    undefined (fewer than two values, or all equal)."""
    if len(values) < 2:
        return []
    m, sd = statistics.fmean(values), statistics.pstdev(values)
    return [(v - m) / sd for v in values] if sd > 0 else []


def plot_reward_histograms(jobs: list[Job], path: Path, baseline: str = ""):
    """Histograms of the final RMs' scores of the last round's samples, one per group. Each RM
    has its own scale, so each job's scores are z-scored with that job's mean and s.d. before the
    group's jobs are pooled. Returns the Figure, or None when no job has scored samples."""
    pooled: dict[str, tuple[list[float], int]] = {}
    for group, members in by_group(jobs).items():
        scores: list[float] = []
        used = 0
        for job in members:
            d = job.last_round_dir()
            if d is None or not (d / "samples.jsonl").exists():
                continue
            raw = [
                float(row["rm_score"])
                for row in read_jsonl(d / "samples.jsonl")
                if row.get("rm_score") is not None
            ]
            z = zscores(raw)
            if z:
                scores += z
                used += 1
        if scores:
            pooled[group] = (scores, used)
    if not pooled:
        return None
    fig, ax = _figure(10.0, 5.5)
    styles = group_styles(list(pooled), baseline)
    labels, shared = legend_labels({g: used for g, (_, used) in pooled.items()})
    lo = min(min(s) for s, _ in pooled.values())
    hi = max(max(s) for s, _ in pooled.values())
    # the same bins for every group, so their heights compare
    edges = [lo + (hi - lo) * i / 40 for i in range(41)] if hi > lo else 40
    for group, st in styles.items():
        scores = pooled[group][0]
        ax.hist(
            scores,
            bins=edges,
            density=True,
            histtype="step",
            linewidth=1.6,
            linestyle=st.linestyle,
            color=st.color,
            label=labels[group],
        )
    return _save(
        fig,
        ax,
        path,
        "final RM score of the last round's samples, z-scored per job "
        "(each RM's own mean and s.d.), pooled over the group's seeds",
        "density",
        "final RM scores of the last round's samples (per-RM z-scores)",
        shared,
    )
