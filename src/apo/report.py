"""`apo-report`: read one run or a multirun sweep and write tables and plots a person reads at a glance.

    apo-report logs/multiruns/2026-11-23_10-00-00            # writes <dir>/report/
    apo-report <dir> --baseline game.apo_coeff=0 --out docs/

Jobs are grouped by their Hydra overrides without `seed`; each table cell is the mean over the
group's seeds ± the standard error. Jobs that are still running or failed are listed, not fatal.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from apo.records import read_jsonl

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
#: overrides that do not change results: they never split a group
IGNORED_OVERRIDE_KEYS = ("seed", "hydra.", "run_dir", "+run_dir", "game.warm_start_cache")


@dataclass
class Job:
    """One run directory of a sweep (or a single run)."""

    path: Path
    overrides: list[str]
    rounds: list[dict[str, Any]] = field(default_factory=list)
    expected_rounds: int | None = None

    @property
    def group(self) -> str:
        kept = [o for o in self.overrides if not o.lstrip("+~").startswith(IGNORED_OVERRIDE_KEYS)]
        return " ".join(sorted(kept)) or "(defaults)"

    @property
    def seed(self) -> str | None:
        for o in self.overrides:
            if o.lstrip("+").startswith("seed="):
                return o.split("=", 1)[1]
        return None

    @property
    def complete(self) -> bool:
        return bool(self.rounds) and (
            self.expected_rounds is None or len(self.rounds) >= self.expected_rounds
        )

    @property
    def status(self) -> str:
        if self.complete:
            return "complete"
        if not self.rounds:
            return "no summary yet (running or failed)"
        return f"incomplete: {len(self.rounds)} of {self.expected_rounds} rounds"

    def last_round_dir(self) -> Path | None:
        if not self.rounds:
            return None
        return self.path / "rounds" / f"round_{self.rounds[-1]['round']:02d}"


def _load_job(path: Path) -> Job:
    hydra_dir = path / ".hydra"
    overrides: list[str] = []
    expected = None
    if (hydra_dir / "overrides.yaml").exists():
        overrides = [
            str(o) for o in (yaml.safe_load((hydra_dir / "overrides.yaml").read_text()) or [])
        ]
    if (hydra_dir / "config.yaml").exists():
        cfg = yaml.safe_load((hydra_dir / "config.yaml").read_text()) or {}
        rounds = (cfg.get("game") or {}).get("rounds")
        expected = None if rounds is None else int(rounds) + 1
    job = Job(path=path, overrides=overrides, expected_rounds=expected)
    summary = path / "summary.json"
    if summary.exists():
        try:
            job.rounds = json.loads(summary.read_text())["rounds"]
        except (json.JSONDecodeError, KeyError):
            job.rounds = []
    return job


def find_jobs(root: Path) -> list[Job]:
    """Every job under `root`: `root` itself if it is a run, else its job subdirectories."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"apo-report: {root} is not a directory")
    if (root / "summary.json").exists() or (root / ".hydra").is_dir():
        return [_load_job(root)]
    subdirs = sorted(
        (
            p
            for p in root.iterdir()
            if p.is_dir() and ((p / ".hydra").is_dir() or (p / "summary.json").exists())
        ),
        key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name),
    )
    if not subdirs:
        raise FileNotFoundError(
            f"apo-report: no run directories (with .hydra/ or summary.json) in {root}"
        )
    return [_load_job(p) for p in subdirs]


def mean_se(values: list[float]) -> tuple[float, float, int]:
    """Mean, standard error of the mean (NaN for one value) and count of the finite values."""
    xs = [v for v in values if v is not None and math.isfinite(v)]
    n = len(xs)
    if n == 0:
        return math.nan, math.nan, 0
    m = sum(xs) / n
    if n == 1:
        return m, math.nan, 1
    var = sum((x - m) ** 2 for x in xs) / (n - 1)
    return m, math.sqrt(var / n), n


def by_group(jobs: list[Job]) -> dict[str, list[Job]]:
    groups: dict[str, list[Job]] = defaultdict(list)
    for job in jobs:
        if job.rounds:
            groups[job.group].append(job)
    return dict(sorted(groups.items()))


def metric_table(jobs: list[Job], metric: str) -> dict[str, dict[int, tuple[float, float, int]]]:
    """group -> round -> (mean, se, n) of `metric` over the group's jobs that reached the round."""
    out: dict[str, dict[int, tuple[float, float, int]]] = {}
    for group, members in by_group(jobs).items():
        per_round: dict[int, list[float]] = defaultdict(list)
        for job in members:
            for r in job.rounds:
                if r.get(metric) is not None:
                    per_round[int(r["round"])].append(float(r[metric]))
        if per_round:
            out[group] = {r: mean_se(v) for r, v in sorted(per_round.items())}
    return out


def _cell(m: float, se: float, n: int) -> str:
    if n == 0 or not math.isfinite(m):
        return "-"
    return f"{m:.3f}" if n == 1 or not math.isfinite(se) else f"{m:.3f} ± {se:.3f}"


def markdown_table(table: dict[str, dict[int, tuple[float, float, int]]], metric: str) -> str:
    rounds = sorted({r for g in table.values() for r in g})
    head = "| group (seeds) | " + " | ".join(f"round {r}" for r in rounds) + " |"
    lines = [
        f"**{metric}** (mean ± standard error over seeds)",
        "",
        head,
        "|---|" + "---|" * len(rounds),
    ]
    for group, cells in table.items():
        n = max(c[2] for c in cells.values())
        row = " | ".join(_cell(*cells[r]) if r in cells else "-" for r in rounds)
        lines.append(f"| `{group}` ({n}) | {row} |")
    return "\n".join(lines)


# ---- win rates --------------------------------------------------------------------------------
def _judge_scores(job: Job) -> dict[str, float] | None:
    """Per test prompt, the mean judge score of the job's final test samples (oracle, else test RM)."""
    d = job.last_round_dir()
    if d is None or not (d / "eval_samples.jsonl").exists():
        return None
    per_prompt: dict[str, list[float]] = defaultdict(list)
    for row in read_jsonl(d / "eval_samples.jsonl"):
        judge = row.get("oracle_reward", row.get("test_rm_score"))
        if judge is not None:
            per_prompt[row["prompt"]].append(float(judge))
    return {p: sum(v) / len(v) for p, v in per_prompt.items()} or None


def baseline_group_of(group: str, key: str, value: str) -> str:
    """The group with the same overrides but `key=value` (added if the group lacks `key`)."""
    parts = [p for p in group.split(" ") if p and p != "(defaults)" and not p.startswith(f"{key}=")]
    return " ".join(sorted(parts + [f"{key}={value}"]))


def win_rates(jobs: list[Job], baseline: str) -> dict[str, tuple[float, float, int]]:
    """group -> (win rate, se over seed pairs, pairs) of its final policy against its baseline.

    A prompt counts 1 if the group's test samples score higher on average than the baseline's
    on the same prompt, 0.5 on a tie; jobs are paired by seed.
    """
    key, _, value = baseline.partition("=")
    groups = by_group([j for j in jobs if j.complete])
    out = {}
    for group, members in groups.items():
        base = groups.get(baseline_group_of(group, key, value))
        if base is None or base is members:
            continue
        base_by_seed = {j.seed: j for j in base}
        rates = []
        for job in members:
            other = base_by_seed.get(job.seed)
            mine, theirs = _judge_scores(job), other and _judge_scores(other)
            if not mine or not theirs:
                continue
            shared = sorted(set(mine) & set(theirs))
            if shared:
                wins = [
                    1.0 if mine[p] > theirs[p] else 0.5 if mine[p] == theirs[p] else 0.0
                    for p in shared
                ]
                rates.append(sum(wins) / len(wins))
        if rates:
            out[group] = mean_se(rates)
    return out


# ---- plots -----------------------------------------------------------------------------------
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


# ---- the report ---------------------------------------------------------------------------------
def build_report(
    roots: Path | list[Path],
    out: Path | None = None,
    baseline: str = "game.apo_coeff=0",
    metrics: list[str] | None = None,
) -> tuple[Path, str]:
    """Write `report.md` and the PNGs into `out` (default `<first root>/report`); return the path
    and the Markdown text. Several roots (e.g. two sweeps) are read as one set of jobs."""
    roots = [Path(r) for r in (roots if isinstance(roots, list | tuple) else [roots])]
    jobs = [job for root in roots for job in find_jobs(root)]
    out = Path(out) if out is not None else roots[0] / "report"
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"# APO report: {', '.join(f'`{r}`' for r in roots)}", ""]
    lines += ["| job | group | seed | status |", "|---|---|---|---|"]
    lines += [
        f"| `{j.path.parent.name}/{j.path.name}` | `{j.group}` | {j.seed or '-'} | {j.status} |"
        for j in jobs
    ]
    lines.append("")
    for metric in metrics or DEFAULT_METRICS:
        table = metric_table(jobs, metric)
        if not table:
            continue
        lines += [markdown_table(table, metric), ""]
        if metric in PLOTTED:
            name = metric.replace("/", "_") + ".png"
            plot_metric(table, metric, out / name, baseline)
            lines += [f"![{metric}]({name})", ""]
    wins = win_rates(jobs, baseline)
    if wins:
        lines += [
            f"**Win rate of the final policy against `{baseline}`** (same seed, same held-out "
            "prompts, judged by the oracle, or by the test RM where there is none; ties count half)",
            "",
            "| group | win rate | seed pairs |",
            "|---|---|---|",
        ]
        lines += [f"| `{g}` | {_cell(m, se, n)} | {n} |" for g, (m, se, n) in wins.items()]
        lines.append("")
    for name, fn in (
        ("reliability.png", plot_reliability),
        ("reward_histograms.png", plot_reward_histograms),
    ):
        if fn(jobs, out / name) is not None:
            lines += [f"![{name}]({name})", ""]
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
    args = parser.parse_args(argv)
    try:
        path, text = build_report(args.run_dirs, args.out, args.baseline, args.metrics)
    except FileNotFoundError as e:
        print(e, file=sys.stderr)
        return 2
    print(text)
    print(f"\nwritten: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
