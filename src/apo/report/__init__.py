"""`apo-report`: read one run or a multirun sweep and write tables and plots a person reads at a glance.

    apo-report logs/multiruns/2026-11-23_10-00-00            # writes <dir>/report/
    apo-report <dir> --baseline game.apo_coeff=0 --out docs/

Jobs are grouped by their Hydra overrides without `seed`; each table cell is the mean over the
group's seeds ± the standard error, and `report.csv` / `win_rates.csv` hold the same numbers
unrounded. Jobs that are still running or failed are listed, not fatal. A job that repeats
another's group and seed (the same sweep given twice) is listed as a duplicate, with a warning,
and counted once.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from apo.report.jobs import Job, by_group, find_jobs, load_jobs, mark_duplicates
from apo.report.panels import plot_panels
from apo.report.plots import plot_metric, plot_reliability, plot_reward_histograms
from apo.report.rl import overoptimization_table, plot_overoptimization
from apo.report.stats import (
    cell,
    deltas_markdown,
    final_deltas,
    markdown_table,
    mean_se,
    metric_table,
    win_rates,
    write_table_csv,
    write_win_rates_csv,
)

__all__ = [
    "Job",
    "build_report",
    "by_group",
    "find_jobs",
    "load_jobs",
    "main",
    "mark_duplicates",
    "mean_se",
    "metric_table",
    "win_rates",
]

#: metrics tabulated by default, in this order; missing ones are skipped (games on file data
#: have no oracle: the test RM's `policy/test_rm_reward` stands in for `policy/gold_reward`)
DEFAULT_METRICS = [
    "policy/gold_reward",
    "policy/test_rm_reward",
    "policy/win_rate_vs_prev",
    "rm/onpolicy/acc",
    "rm/onpolicy/test_rm_acc",
    "rm/val/acc",
    "rm/val/ece",
    "policy/kl",
    "policy/length",
]
#: metrics that also get a plot over rounds
PLOTTED = (
    "policy/gold_reward",
    "policy/test_rm_reward",
    "rm/onpolicy/acc",
    "rm/onpolicy/test_rm_acc",
)


def build_report(
    roots: Path | list[Path],
    out: Path | None = None,
    baseline: str = "game.apo_coeff=0",
    metrics: list[str] | None = None,
    plots: list[str] | None = None,
    panels: str | None = None,
) -> tuple[Path, str]:
    """Write `report.md`, `report.csv`, `win_rates.csv` (when there are baselines) and the PNGs
    into `out` (default `<first root>/report`); return the path and the Markdown text. Several
    roots (e.g. two sweeps) are read as one set of jobs, each (group, seed) counted once. With
    `panels` (an override key, e.g. `task`), every plot over rounds has one panel per value."""
    roots = [Path(r) for r in (roots if isinstance(roots, list | tuple) else [roots])]
    jobs = load_jobs(roots)
    out = Path(out) if out is not None else roots[0] / "report"
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"# APO report: {', '.join(f'`{r}`' for r in roots)}", ""]
    lines += ["| job | group | seed | status |", "|---|---|---|---|"]
    lines += [
        f"| `{j.path.parent.name}/{j.path.name}` | `{j.group}` | {j.seed or '-'} | {j.status} |"
        for j in jobs
    ]
    lines.append("")
    tables = {}
    for metric in metrics or DEFAULT_METRICS:
        table = metric_table(jobs, metric)
        if not table:
            continue
        tables[metric] = table
        lines += [markdown_table(table, metric), ""]
        if metric in PLOTTED or metric in (plots or ()):
            name = metric.replace("/", "_") + ".png"
            if panels:
                plot_panels(table, metric, out / name, panels, baseline)
            else:
                plot_metric(table, metric, out / name, baseline)
            lines += [f"![{metric}]({name})", ""]
    write_table_csv(out / "report.csv", tables)
    lines += ["Every number of these tables, unrounded: [report.csv](report.csv)", ""]
    for metric in ("policy/gold_reward", "policy/test_rm_reward"):
        deltas = final_deltas(jobs, baseline, metric)
        if deltas:
            lines += deltas_markdown(deltas, metric, baseline)
            break
    wins = win_rates(jobs, baseline)
    (out / "win_rates.csv").unlink(missing_ok=True)  # a stale one would contradict report.md
    if wins:
        write_win_rates_csv(out / "win_rates.csv", wins, baseline)
        lines += [
            f"**Win rate of the final policy against `{baseline}`** (same seed, same held-out "
            "prompts, judged by the oracle, or by the test RM where there is none; ties count half)",
            "",
            "| group | win rate | seed pairs |",
            "|---|---|---|",
        ]
        lines += [f"| `{g}` | {cell(m, se, n)} | {n} |" for g, (m, se, n) in wins.items()]
        lines += ["", "Unrounded: [win_rates.csv](win_rates.csv)", ""]
    for name, fn in (
        ("reliability.png", plot_reliability),
        ("reward_histograms.png", plot_reward_histograms),
    ):
        if fn(jobs, out / name, baseline) is not None:
            lines += [f"![{name}]({name})", ""]
    # games with online RL fits: the over-optimisation picture (gold and RM reward against KL)
    kept = [j for j in jobs if j.duplicate_of is None]
    if plot_overoptimization(kept, out / "overoptimization.png") is not None:
        lines += ["![overoptimization.png](overoptimization.png)", ""]
        lines += overoptimization_table(kept)
    text = "\n".join(lines)
    (out / "report.md").write_text(text + "\n")
    return out / "report.md", text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="apo-report", description=__doc__.split("\n")[0])
    parser.add_argument(
        "run_dirs", type=Path, nargs="+", help="run directories or multirun sweep directories"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="where to write (default <run_dir>/report)"
    )
    parser.add_argument(
        "--baseline",
        default="game.apo_coeff=0",
        help="override that marks each group's baseline (default game.apo_coeff=0)",
    )
    parser.add_argument("--metrics", nargs="*", default=None, help="metrics to tabulate")
    parser.add_argument(
        "--plot", nargs="*", default=None, help="tabulated metrics to plot over rounds as well"
    )
    parser.add_argument(
        "--panels",
        default=None,
        metavar="KEY",
        help="plot over rounds in one panel per value of this override (e.g. task)",
    )
    args = parser.parse_args(argv)
    try:
        path, text = build_report(
            args.run_dirs, args.out, args.baseline, args.metrics, args.plot, args.panels
        )
    except FileNotFoundError as e:
        print(e, file=sys.stderr)
        return 2
    print(text)
    print(f"\nwritten: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
