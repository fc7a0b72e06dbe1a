"""The numbers of a report: mean ± standard error over seeds per group and round, win rates."""

from __future__ import annotations

import csv
import math
import statistics
from collections import defaultdict
from pathlib import Path

from apo.records import read_jsonl
from apo.report.jobs import Job, by_group


def mean_se(values: list[float]) -> tuple[float, float, int]:
    """Mean, standard error of the mean (NaN for one value) and count of the finite values."""
    xs = [v for v in values if v is not None and math.isfinite(v)]
    n = len(xs)
    if n == 0:
        return math.nan, math.nan, 0
    m = statistics.fmean(xs)
    if n == 1:
        return m, math.nan, 1
    return m, statistics.stdev(xs) / math.sqrt(n), n


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


def cell(m: float, se: float, n: int) -> str:
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
        row = " | ".join(cell(*cells[r]) if r in cells else "-" for r in rounds)
        lines.append(f"| `{group}` ({n}) | {row} |")
    return "\n".join(lines)


def _number(x: float) -> str:
    # full precision, so the CSV holds what the table rounds; an undefined s.e. (one seed) is empty
    return repr(float(x)) if math.isfinite(x) else ""


def write_table_csv(
    path: Path, tables: dict[str, dict[str, dict[int, tuple[float, float, int]]]]
) -> Path:
    """`report.csv`: one row per (group, metric, round) of every metric table."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["group", "metric", "round", "mean", "se", "n"])
        for metric, table in tables.items():
            for group, cells in table.items():
                for r, (m, se, n) in sorted(cells.items()):
                    w.writerow([group, metric, r, _number(m), _number(se), n])
    return path


def write_win_rates_csv(
    path: Path, wins: dict[str, tuple[float, float, int]], baseline: str
) -> Path:
    """`win_rates.csv`: one row per group with a baseline group (named in `baseline_group`): the
    win rate of its final policies, mean and s.e. over the `n` seed pairs."""
    key, _, value = baseline.partition("=")
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["group", "baseline_group", "mean", "se", "n"])
        for group, (m, se, n) in wins.items():
            w.writerow([group, baseline_group_of(group, key, value), _number(m), _number(se), n])
    return path


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


# ---- paired differences -----------------------------------------------------------------------
def _final(job: Job, metric: str) -> float | None:
    v = job.rounds[-1].get(metric) if job.rounds else None
    return float(v) if v is not None else None


def final_deltas(jobs: list[Job], baseline: str, metric: str) -> dict[str, dict[str, tuple]]:
    """group -> the final round's `metric`: `start` (round 0), `final`, `vs_start` (final minus
    round 0, per job) and, where the group has a baseline, `vs_baseline` (final minus the
    baseline's final, paired by seed) with `wins` (pairs with a positive difference, of n).
    Each is `(mean, se, n)` over seeds; `wins` is `(wins, n)`."""
    key, _, value = baseline.partition("=")
    groups = by_group([j for j in jobs if j.complete])
    out: dict[str, dict[str, tuple]] = {}
    for group, members in groups.items():
        finals = {j.seed: _final(j, metric) for j in members}
        starts = {j.seed: j.rounds[0].get(metric) for j in members}
        kept = [s for s in finals if finals[s] is not None and starts[s] is not None]
        if not kept:
            continue
        row = {
            "start": mean_se([float(starts[s]) for s in kept]),
            "final": mean_se([finals[s] for s in kept]),
            "vs_start": mean_se([finals[s] - float(starts[s]) for s in kept]),
        }
        base = groups.get(baseline_group_of(group, key, value)) if key else None
        if base is not None and base is not members:
            theirs = {j.seed: _final(j, metric) for j in base}
            diffs = [finals[s] - theirs[s] for s in kept if theirs.get(s) is not None]
            if diffs:
                row["vs_baseline"] = mean_se(diffs)
                row["wins"] = (sum(d > 0 for d in diffs), len(diffs))
        out[group] = row
    return out


def deltas_markdown(deltas: dict[str, dict[str, tuple]], metric: str, baseline: str) -> list[str]:
    lines = [
        f"**Final {metric} against the start and against `{baseline}`** (mean ± standard error "
        "over seeds; the baseline difference is paired by seed, wins = seeds with a positive "
        "difference)",
        "",
        f"| group | start | final | Δ vs start | Δ vs `{baseline}` | wins |",
        "|---|---|---|---|---|---|",
    ]
    for group, row in deltas.items():
        base = cell(*row["vs_baseline"]) if "vs_baseline" in row else "-"
        wins = f"{row['wins'][0]}/{row['wins'][1]}" if "wins" in row else "-"
        lines.append(
            f"| `{group}` | {cell(*row['start'])} | {cell(*row['final'])} | "
            f"{cell(*row['vs_start'])} | {base} | {wins} |"
        )
    return lines + [""]
