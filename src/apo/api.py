"""The Python API: play a game from a script or a notebook with the config `apo-train` uses.

from apo import play
result = play(["experiment=tiny", "objective=dpo"], run_dir="runs/dpo")
print(result["table"]); result["rounds"][-1]["policy/gold_reward"]
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_module
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from apo.train import CONFIG_MODULE, run_game

#: the game's log lines as `apo-train` prints them (Hydra's default job log format)
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"


def compose_config(
    overrides: Sequence[str] = (),
    run_dir: str | Path | None = None,
    config_dir: str | Path | None = None,
) -> DictConfig:
    """The packaged `train.yaml` composed with Hydra `overrides`, as `apo-train` composes it.

    Args:
        overrides: Hydra overrides, e.g. `["objective=dpo", "game.rounds=2"]`.
        run_dir: where the game writes; None = `hydra.run.dir` (`logs/runs/<date>_<time>` under
            the current directory), as on the command line.
        config_dir: a directory of your own configs (e.g. `task/<name>.yaml`), searched besides
            the packaged ones, as `--config-dir` does on the command line.
    """
    overrides = list(overrides)
    if config_dir is not None:
        overrides.append(f"hydra.searchpath=[file://{Path(config_dir).resolve()}]")
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    # `${hydra:...}` interpolations (e.g. a sweep's warm-start cache) resolve as in a real run
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.run_dir = str(Path(run_dir if run_dir is not None else cfg.hydra.run.dir))
        cfg.pop("hydra")
    return cfg


def play(
    overrides: Sequence[str] = (),
    run_dir: str | Path | None = None,
    config_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Compose the config (see `compose_config`), play one game and return its summary:
    `{"rounds": [one dict of metrics per round, round 0 first], "table": the printed table}`.

    The run dir gets the files `apo-train` writes (`summary.json`, the rounds, `final/`, and
    `.hydra/config.yaml` + `overrides.yaml`, so `apo-report` groups API runs like CLI runs).
    The game's log (`apo.*` loggers) goes to stdout unless you set up logging yourself;
    Lightning's banners are switched off; the progress is `progress=auto`'s (`apo.progress`)."""
    cfg = compose_config(overrides, run_dir, config_dir)
    with game_log():
        result = run_game(cfg)
    hydra_dir = Path(cfg.run_dir) / ".hydra"
    hydra_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, hydra_dir / "config.yaml")
    OmegaConf.save(OmegaConf.create(list(overrides)), hydra_dir / "overrides.yaml")
    return result


@contextmanager
def game_log() -> Iterator[None]:
    """Show the `apo.*` INFO lines while a game plays: a stdout handler if no handler would
    take them (a fresh notebook), and INFO level unless the caller set one for `apo`."""
    logger = logging.getLogger("apo")
    handler = None
    if not logger.hasHandlers():
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        logger.addHandler(handler)
    level = logger.level
    if level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.setLevel(level)
        if handler is not None:
            logger.removeHandler(handler)
