"""A metric by round in one panel per value of an override (`apo-report --panels task`): the
transfer experiment's tasks start from different gold rewards, so their lines belong side by
side, not on one axis. Groups that differ only in that override share colour and line style
across the panels, and one legend serves them all."""

from __future__ import annotations

from pathlib import Path

from apo.report.plots import MIN_SEEDS_FOR_BAND, _legend, _wrap, band_mask, group_styles

#: inches per panel
PANEL_WIDTH, PANEL_HEIGHT = 4.2, 4.4


def split(group: str, key: str) -> tuple[str, str]:
    """`(panel, rest)`: the group's `key=value` override (or `key=(unset)`) and the others."""
    parts = group.split(" ")
    own = [p for p in parts if p.startswith(f"{key}=")]
    rest = " ".join(p for p in parts if not p.startswith(f"{key}="))
    return (own[0] if own else f"{key}=(unset)"), rest


def plot_panels(
    table: dict[str, dict[int, tuple[float, float, int]]],
    metric: str,
    path: Path,
    key: str,
    baseline: str = "",
):
    """`plot_metric`'s lines (mean over seeds by round, ± s.e. band with enough seeds), one
    panel per value of `key`; returns the matplotlib Figure (also saved to `path`)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels: dict[str, dict[str, str]] = {}  # panel -> rest -> group
    for group in table:
        panel, rest = split(group, key)
        panels.setdefault(panel, {})[rest] = group
    rests = sorted({r for by_rest in panels.values() for r in by_rest})
    styles = group_styles(rests, baseline)
    # the overrides every line shares go in the legend's title; seeds are counted per panel
    common = set.intersection(*(set(r.split(" ")) for r in rests)) if len(rests) > 1 else set()
    labels = {r: _wrap(" ".join(p for p in r.split(" ") if p not in common) or r) for r in rests}
    shared = " ".join(p for p in rests[0].split(" ") if p in common) if rests else ""
    fig = Figure(figsize=(PANEL_WIDTH * len(panels) + 1.0, PANEL_HEIGHT + 1.0), dpi=110)
    fig.set_layout_engine("constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, sorted(panels)):
        for rest in styles:  # the legend's order, the same in every panel
            group = panels[panel].get(rest)
            if group is None:
                continue
            cells, st = table[group], styles[rest]
            rounds = sorted(cells)
            m = [cells[r][0] for r in rounds]
            ax.plot(rounds, m, st.linestyle, marker=st.marker, color=st.color, label=labels[rest])
            mask = band_mask([cells[r] for r in rounds])
            if any(mask):
                se = [cells[r][1] if ok else 0.0 for r, ok in zip(rounds, mask)]
                lo = [a - b for a, b in zip(m, se)]
                hi = [a + b for a, b in zip(m, se)]
                ax.fill_between(rounds, lo, hi, where=mask, color=st.color, alpha=0.12)
            ax.set_xticks(rounds)
        n = sorted({max(c[2] for c in table[g].values()) for g in panels[panel].values()})
        seeds = f"{n[0]}" if len(n) == 1 else f"{n[0]}-{n[-1]}"
        ax.set_title(_wrap(f"{panel} ({seeds} seeds)", int(8 * PANEL_WIDTH)))
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(_wrap(metric, 45))
    # one legend below the panels for all of them, from the panel with the most lines
    fullest = max(axes, key=lambda a: len(a.get_legend_handles_labels()[1]))
    fig.suptitle(
        _wrap(
            f"{metric} by round and {key} (mean over seeds; ± s.e. band where n ≥ "
            f"{MIN_SEEDS_FOR_BAND})",
            int(10 * fig.get_figwidth()),
        )
    )
    _legend(fig, fullest, _wrap(f"all groups: {shared}", 90) if shared else "", below=True)
    fig.savefig(path)
    return fig
