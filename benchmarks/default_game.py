"""The default game's time and gain, for several config variants side by side.

    python benchmarks/default_game.py                                  # the default game, 3 runs
    python benchmarks/default_game.py --runs 3 "" malloc_mmap_threshold_kb=null

Each argument is one variant: space-separated Hydra overrides ("" = the default game). Every run
is `apo-train` in its own process (the command a user runs, Python start-up and imports
included); the variants alternate run by run so that a change of the machine's load hits them
alike. Printed per variant: wall time, CPU time (user + system), the warm start's and each
round's phase times, and the gold-reward gain from round 0 to the last round; medians with
min-max.

Not a test: it prints numbers for the README.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from environment import describe, environment

ROOT = Path(__file__).resolve().parents[1]


def run(overrides: list[str]) -> dict:
    out = Path(tempfile.mkdtemp(prefix="apo-default-game-"))
    exe = Path(sys.executable).parent / "apo-train"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [str(exe), *overrides, "progress=off", f"hydra.run.dir={out}"],
        cwd=ROOT,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"apo-train {' '.join(overrides)} failed:\n{proc.stderr[-3000:]}")
    rounds = json.loads((out / "summary.json").read_text())["rounds"]
    gold = [r["policy/gold_reward"] for r in rounds]
    return {
        "wall_s": wall,
        "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        "warm_start_s": rounds[0]["time/warm_start_s"],
        "rounds_s": [sum(v for k, v in r.items() if k.startswith("time/")) for r in rounds[1:]],
        "gain": gold[-1] - gold[0],
        "gold": gold,
    }


def summary(runs: list[dict], key: str) -> str:
    xs = [r[key] for r in runs]
    return f"{statistics.median(xs):.1f} ({min(xs):.1f}-{max(xs):.1f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("variants", nargs="*", default=[""])
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    variants = a.variants or [""]
    results: dict[str, list[dict]] = {v: [] for v in variants}
    for i in range(a.runs):
        order = variants if i % 2 == 0 else variants[::-1]
        for v in order:
            res = run(v.split())
            results[v].append(res)
            print(
                f"  run {i + 1} [{v or 'default'}]: {json.dumps(res)}", file=sys.stderr, flush=True
            )
    load = os.getloadavg()
    print(
        f"\n{a.runs} runs per variant, interleaved; load average now {load[0]:.2f} / {load[1]:.2f}"
        f"; {describe(environment())}\n"
    )
    print("| variant | wall s | CPU s | warm start s | a round s | gold gain, round 0 -> last |")
    print("|---|---|---|---|---|---|")
    for v, runs in results.items():
        for r in runs:
            r["round_s"] = statistics.median(r["rounds_s"])
        gains = [r["gain"] for r in runs]
        print(
            f"| {v or '(default game)'} | {summary(runs, 'wall_s')} | {summary(runs, 'cpu_s')} "
            f"| {summary(runs, 'warm_start_s')} | {summary(runs, 'round_s')} "
            f"| {statistics.median(gains):+.3f} ({min(gains):+.3f} to {max(gains):+.3f}) |"
        )


if __name__ == "__main__":
    main()
