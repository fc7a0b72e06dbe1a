"""Round time and peak memory per process of every strategy, against `auto`, on any config.

    python benchmarks/strategies.py                          # experiment=tiny, 2 rounds
    python benchmarks/strategies.py game.rounds=3 ...        # more Hydra overrides
    STRATEGIES=auto,fsdp python benchmarks/strategies.py     # a subset

Each strategy plays one game through `apo-train` (multi-process ones with their config's
`devices`); the round time is the mean over rounds >= 1 of the phases a round runs, peak RSS
is each training process's high-water mark (VmHWM), sampled while it runs. Not a test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from apo.strategies import STRATEGIES

ROOT = Path(__file__).resolve().parents[1]


def _peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def run(strategy: str, overrides: list[str], out: Path) -> dict:
    exe = shutil.which("apo-train") or str(Path(sys.executable).parent / "apo-train")
    # experiment=tiny unless the overrides pick one (e.g. experiment=scale, the 300M players)
    base = [] if any(o.startswith("experiment=") for o in overrides) else ["experiment=tiny"]
    cmd = [exe, *base, f"strategy={strategy}", *overrides, f"hydra.run.dir={out}"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    peaks: dict[int, float] = {}
    root = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            procs = []
        for p in procs:
            try:
                # the training ranks (rank > 0 re-runs the command), not DeepSpeed's helpers
                if any("apo-train" in arg for arg in p.cmdline()):
                    peaks[p.pid] = max(peaks.get(p.pid, 0.0), _peak_rss_mb(p.pid))
            except (psutil.NoSuchProcess, FileNotFoundError, ProcessLookupError):
                pass
        time.sleep(0.2)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"strategy={strategy} failed:\n{proc.stderr.read()[-3000:]}")
    rounds = json.loads((out / "summary.json").read_text())["rounds"]
    # a round's time: every phase timer of it (`time/<phase>_s`)
    per_round = [
        sum(v for k, v in r.items() if k.startswith("time/") and k.endswith("_s"))
        for r in rounds
        if r["round"] >= 1
    ]
    return {
        "strategy": strategy,
        "processes": len(peaks),
        "round_s": sum(per_round) / max(len(per_round), 1),
        "warm_start_s": rounds[0].get("time/warm_start_s", float("nan")),
        "wall_s": wall,
        "peak_rss_mb": sorted(peaks.values(), reverse=True),
        "gold_reward": rounds[-1]["policy/gold_reward"],
    }


def main(overrides: list[str]) -> None:
    names = [f for fs in STRATEGIES.values() for f in fs]
    names = os.environ.get("STRATEGIES", ",".join(names)).split(",")
    tmp = Path(tempfile.mkdtemp(prefix="apo-bench-strategies-"))
    results = [run(s, overrides, tmp / s) for s in names]
    base = next((r for r in results if r["strategy"] == "auto"), None)
    print(
        "| strategy | processes | round (s) | vs auto | warm start (s) | wall (s) "
        "| peak RSS per process (MB) | gold reward, last round |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        ratio = f"{r['round_s'] / base['round_s']:.2f}x" if base else "-"
        rss = ", ".join(f"{m:.0f}" for m in r["peak_rss_mb"])
        print(
            f"| {r['strategy']} | {r['processes']} | {r['round_s']:.1f} | {ratio} "
            f"| {r['warm_start_s']:.1f} | {r['wall_s']:.0f} | {rss} | {r['gold_reward']:.4f} |"
        )
    (tmp / "results.json").write_text(json.dumps(results, indent=1))
    print(f"\nraw results: {tmp / 'results.json'}")


if __name__ == "__main__":
    main(sys.argv[1:])
