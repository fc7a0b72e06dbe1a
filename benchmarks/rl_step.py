"""Where an online RL step's time goes (sampling, log-probs, scoring, update) at a config's size.

    python benchmarks/rl_step.py                          # the default game with objective=rloo
    python benchmarks/rl_step.py objective=grpo ...       # any Hydra overrides

Builds the game's players (randomly initialised: the split does not depend on what they
learned), plays one round's RL fit and prints the median of every part over its steps. Not a
test: the numbers go in the notes.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_module

from apo.train import CONFIG_MODULE, quiet_libraries


def main(overrides: list[str]) -> None:
    quiet_libraries()
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        cfg = compose(config_name="train", overrides=["objective=rloo", *overrides])
    from omegaconf import open_dict

    from apo.game import GameLoop
    from apo.game.online import online_fit

    with open_dict(cfg):
        cfg.run_dir = tempfile.mkdtemp(prefix="apo-rl-bench-")
    game = GameLoop(cfg)
    game.players.snapshot_reference()
    game.players.snapshot_rm_base()
    module, loader = online_fit(game, 1, game.plan.round(1))
    trainer = game.trainers.make("policy", "round", {"gradient_clip_val": None, "max_epochs": 1})
    t0 = time.perf_counter()
    trainer.fit(module, train_dataloaders=loader)
    wall = time.perf_counter() - t0
    steps = len(module.split["update"])
    print(
        f"\n{cfg.objective.name}: {steps} steps of {cfg.policy.batch_size} prompts x "
        f"{cfg.game.samples_per_prompt} samples in {wall:.1f} s ({Path(cfg.run_dir)})"
    )
    total = sum(statistics.median(v) for v in module.split.values())
    for part, values in module.split.items():
        med = statistics.median(values)
        print(
            f"  {part:>7}: median {1000 * med:8.1f} ms  ({100 * med / total:4.1f} %)  "
            f"min {1000 * min(values):.1f}  max {1000 * max(values):.1f}"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
