"""Time the optimizer steps of a game's fits (warm start, round-1 RM fit and policy fit), to see
what the per-step logging and the progress display cost.

    python benchmarks/fit_steps.py [--repeats N] [--rich] [hydra overrides]

Both wall and CPU time per step are shown: on a shared machine the CPU time (of every thread
of the process) is the steadier. `--rich` draws the live view to a terminal console writing to
/dev/null (the progress display of a terminal, without one). Run it on two checkouts (e.g. a
`git archive` of the commit before a change, with `PYTHONPATH=<it>/src`) to compare. Not a
test: it prints numbers.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import lightning as L
from hydra import compose, initialize_config_module
from omegaconf import open_dict

import apo
from apo.game import GameLoop
from apo.train import CONFIG_MODULE, quiet_libraries


def one_game(overrides: list[str], rich: bool) -> dict[str, tuple[int, float, float]]:
    """Per fit (its prefix and round): steps, wall and CPU seconds (every thread of the
    process: the live view's refresh thread counts) of one game's first round."""
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    with open_dict(cfg):
        cfg.run_dir = tempfile.mkdtemp(prefix="apo-steps-")
        cfg.game.save_weights = False
    L.seed_everything(cfg.seed, verbose=False)
    game = GameLoop(cfg)
    if rich and hasattr(game, "watch"):
        from rich.console import Console

        game.watch.console = Console(file=open(os.devnull, "w"), force_terminal=True)  # noqa: SIM115
    fits: dict[str, tuple[int, float, float]] = {}
    fit = game.trainers.fit

    def timed_fit(player, stage, module, loader, step_offset, round_idx):
        t0, c0 = time.perf_counter(), time.process_time()
        result = fit(player, stage, module, loader, step_offset, round_idx)
        fits[f"{module.log_prefix} (round {round_idx})"] = (
            result.steps,
            time.perf_counter() - t0,
            time.process_time() - c0,
        )
        return result

    game.trainers.fit = timed_fit
    with open_dict(game.cfg):
        game.cfg.game.rounds = 1
    game.run()
    return fits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rich", action="store_true")
    args, overrides = parser.parse_known_args()
    quiet_libraries()
    runs = [one_game(overrides, args.rich) for _ in range(args.repeats)]
    print(f"\napo from {os.path.dirname(apo.__file__)}; overrides {overrides}; rich {args.rich}")
    print(f"{'fit':<26}{'steps':>6}  ms/step: {'wall':>8}{'CPU':>8}  (medians; CPU min-max)")
    for name in runs[0]:
        steps = runs[0][name][0]
        wall = [1000 * r[name][1] / max(r[name][0], 1) for r in runs]
        cpu = [1000 * r[name][2] / max(r[name][0], 1) for r in runs]
        print(
            f"{name:<26}{steps:>6}  {'':9}{statistics.median(wall):>8.2f}"
            f"{statistics.median(cpu):>8.2f}  ({min(cpu):.2f}-{max(cpu):.2f})"
        )


if __name__ == "__main__":
    main()
