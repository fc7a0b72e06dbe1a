"""Start-up time of the command line: `apo-train --help`, `apo-train --cfg job` and one bash TAB
completion query, each in a fresh process, as a user meets them (not a test).

    python benchmarks/startup.py [--runs 5] [--exe .venv/bin/apo-train]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

#: what bash's completion function runs on TAB after `apo-train objective=` (Hydra's
#: `-sc install=bash` script passes the line so far in COMP_LINE / COMP_POINT)
COMPLETION_LINE = "apo-train objective="


def commands(exe: str) -> dict[str, tuple[list[str], dict[str, str]]]:
    env = dict(os.environ)
    comp = {**env, "COMP_LINE": COMPLETION_LINE, "COMP_POINT": str(len(COMPLETION_LINE))}
    return {
        "apo-train --help": ([exe, "--help"], env),
        "apo-train --cfg job": ([exe, "--cfg", "job"], env),
        "TAB completion (-sc query=bash)": ([exe, "-sc", "query=bash"], comp),
    }


def time_once(argv: list[str], env: dict[str, str], cwd: Path) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    return seconds


def main() -> None:
    here = Path(__file__).resolve().parents[1]
    default_exe = shutil.which("apo-train") or str(Path(sys.executable).parent / "apo-train")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="fresh processes per command (>= 3)")
    parser.add_argument("--exe", default=default_exe, help="the apo-train console script")
    args = parser.parse_args()
    if args.runs < 3:
        parser.error(
            "--runs must be at least 3 (a median of fewer says little on a shared machine)"
        )
    print(f"{args.exe}, {args.runs} fresh processes each; load average {os.getloadavg()[0]:.2f}")
    print(f"{'command':<34} {'median s':>9} {'min s':>7} {'max s':>7}")
    for name, (argv, env) in commands(args.exe).items():
        times = [time_once(argv, env, here) for _ in range(args.runs)]
        print(f"{name:<34} {statistics.median(times):9.2f} {min(times):7.2f} {max(times):7.2f}")


if __name__ == "__main__":
    main()
