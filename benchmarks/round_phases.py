"""Time each phase of an APO round and the generation throughput, on any config.

    python benchmarks/round_phases.py                    # the default game
    python benchmarks/round_phases.py experiment=tiny    # any Hydra overrides

Not a test: it prints numbers for the issue notes and the README.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_module
from omegaconf import open_dict

from apo.train import CONFIG_MODULE, train


def main(overrides: list[str]) -> None:
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    run = Path(tempfile.mkdtemp(prefix="apo-bench-"))
    with open_dict(cfg):
        cfg.run_dir = str(run)
    t0 = time.perf_counter()
    train(cfg)
    wall = time.perf_counter() - t0
    rounds = json.loads((run / "summary.json").read_text())["rounds"]
    print(f"\nconfig overrides: {overrides or '(default game)'}; wall time {wall:.1f} s")
    print(
        f"warm start (SFT + base RM): {rounds[0]['time/warm_start_s']:.1f} s; "
        f"round-0 evaluation {rounds[0]['time/evaluate_s']:.1f} s"
    )
    timers = [f"time/{p}_s" for p in cfg.game.round_phases]
    head = ["round"] + list(cfg.game.round_phases) + ["total", "gen tok/s"]
    print("  ".join(f"{h:>10}" for h in head))
    for r in rounds[1:]:
        cells = [r.get(p, 0.0) for p in timers]
        row = (
            [str(r["round"])]
            + [f"{c:.2f}" for c in cells]
            + [f"{sum(cells):.2f}", f"{r['perf/generate_tokens_per_s']:.0f}"]
        )
        print("  ".join(f"{c:>10}" for c in row))


if __name__ == "__main__":
    main(sys.argv[1:])
