"""The over-optimisation picture of online RL fits (Gao et al. 2023, "Scaling Laws for Reward
Model Overoptimization", Fig. 1): per group, the gold (oracle) and the RM reward of the RL
steps' own samples against their KL to pi_ref and against steps, means over the group's seeds."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

from apo.report.jobs import Job, by_group

TAGS = ("policy/train/gold_reward", "policy/train/rm_reward", "policy/train/kl")


def step_curves(job: Job) -> dict[str, dict[int, float]] | None:
    """tag -> step -> value of the job's RL fits (None when it has no RL steps)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted((job.path / "tensorboard").rglob("events.out.tfevents.*"))
    out: dict[str, dict[int, float]] = {t: {} for t in TAGS}
    for f in files:
        ea = EventAccumulator(str(f), size_guidance={"scalars": 0})
        ea.Reload()
        for tag in TAGS:
            if tag in ea.Tags()["scalars"]:
                out[tag].update({e.step: float(e.value) for e in ea.Scalars(tag)})
    return out if all(out[t] for t in TAGS) else None


def group_curves(jobs: list[Job]) -> dict[str, dict[str, list[tuple[int, float, int]]]]:
    """group -> tag -> [(step, mean over seeds, seeds)] at the steps every seed logged."""
    out = {}
    for group, members in by_group(jobs).items():
        curves = [c for c in (step_curves(j) for j in members) if c is not None]
        if not curves:
            continue
        per: dict[str, list[tuple[int, float, int]]] = {}
        for tag in TAGS:
            values: dict[int, list[float]] = defaultdict(list)
            for c in curves:
                for step, v in c[tag].items():
                    values[step].append(v)
            per[tag] = [
                (s, sum(v) / len(v), len(v))
                for s, v in sorted(values.items())
                if len(v) == len(curves) and all(math.isfinite(x) for x in v)
            ]
        out[group] = per
    return out


def plot_overoptimization(jobs: list[Job], path: Path) -> Path | None:
    """Two panels: gold and RM reward against KL, and against steps (None without RL fits)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    curves = group_curves(jobs)
    if not curves:
        return None
    fig = Figure(figsize=(12, 4.8), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    by_kl, by_step = fig.subplots(1, 2)
    colors = [f"C{i}" for i in range(10)]
    for i, (group, c) in enumerate(curves.items()):
        kl = {s: v for s, v, _ in c["policy/train/kl"]}
        n = max((k for _, _, k in c["policy/train/gold_reward"]), default=0)
        for tag, style, name in (
            ("policy/train/gold_reward", "-", "gold"),
            ("policy/train/rm_reward", "--", "RM"),
        ):
            pts = [(s, v) for s, v, _ in c[tag] if s in kl]
            label = f"{group} {name} (n={n})"
            by_kl.plot(
                [math.sqrt(max(kl[s], 0.0)) for s, _ in pts],
                [v for _, v in pts],
                style,
                color=colors[i % 10],
                label=label,
            )
            by_step.plot([s for s, _ in pts], [v for _, v in pts], style, color=colors[i % 10])
    by_kl.set_xlabel("sqrt(KL(pi || pi_ref)) of the step's samples (nats^0.5)")
    by_kl.set_ylabel("reward of the step's samples")
    by_kl.set_title("gold (solid) and RM (dashed) reward against KL")
    by_step.set_xlabel("policy step")
    by_step.set_title("against steps")
    for ax in (by_kl, by_step):
        ax.grid(alpha=0.3)
    fig.legend(loc="outside lower center", ncols=2, fontsize=7)
    fig.savefig(path)
    return path


def overoptimization_table(jobs: list[Job]) -> list[str]:
    """Markdown: per group, the peak gold reward of the RL steps and the KL where it peaked,
    the final gold and RM reward (mean ± s.e. over seeds)."""
    from apo.report.stats import cell, mean_se

    lines = [
        "**Over-optimisation of the online RL fits** (the RL steps' own samples; mean ± s.e. "
        "over seeds)",
        "",
        "| group | peak gold reward | KL at the peak | final gold reward | final RM reward | seeds |",
        "|---|---|---|---|---|---|",
    ]
    for group, members in by_group(jobs).items():
        rows = []
        for job in members:
            c = step_curves(job)
            if c is None:
                continue
            steps = sorted(c["policy/train/gold_reward"])
            peak = max(steps, key=lambda s: c["policy/train/gold_reward"][s])
            last = steps[-1]
            rows.append(
                (
                    c["policy/train/gold_reward"][peak],
                    c["policy/train/kl"].get(peak, math.nan),
                    c["policy/train/gold_reward"][last],
                    c["policy/train/rm_reward"].get(last, math.nan),
                )
            )
        if rows:
            cols = [mean_se([r[i] for r in rows]) for i in range(4)]
            lines.append(
                f"| `{group}` | " + " | ".join(cell(*c) for c in cols) + f" | {len(rows)} |"
            )
    return [*lines, ""]
