"""Entry point: `apo-train [hydra overrides]` composes the packaged `train.yaml` and plays one game.

Importing this module is cheap on purpose: `apo-train --help`, `--cfg job` and every TAB
completion import it and need none of torch, Lightning or transformers, which take seconds to
import; they are imported when a game is played (`run_game`)."""

from __future__ import annotations

import logging
import math
import warnings
from importlib.resources import files
from typing import Any

import hydra
from omegaconf import DictConfig

from apo.cluster import adopt_submitit_local_tasks

log = logging.getLogger(__name__)

#: the package that holds the shipped configs (the project's top-level `configs/`, mapped to
#: `apo.configs` in pyproject.toml): found the same way in an editable install and in a wheel
CONFIG_MODULE = "apo.configs"
#: how every command's `@hydra.main` finds them; a user's own directory joins with
#: `--config-dir <dir>` or `hydra.searchpath=[file://<dir>]`
CONFIG_PATH = f"pkg://{CONFIG_MODULE}"
#: the same configs as a directory on disk, for tools that read one YAML file directly
CONFIG_DIR = str(files(CONFIG_MODULE))


def quiet_libraries() -> None:
    """Every round builds several Trainers; their banners and progress bars drown the game's log."""
    from transformers.utils import logging as hf_logging

    for name in (
        "lightning.pytorch.utilities.rank_zero",
        "lightning.fabric.utilities.rank_zero",
        "lightning.pytorch.accelerators.cuda",
    ):
        logging.getLogger(name).setLevel(logging.WARNING)
    for message in (
        r".*isinstance\(treespec, LeafSpec\)",
        r"The number of training batches",
        r"Found \d+ module\(s\) in eval mode",
        r".*does not have many workers",
    ):
        # the frozen reference policy is in eval mode on purpose; tiny fits log less often
        warnings.filterwarnings("ignore", message=message)
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def run_game(cfg: DictConfig) -> dict[str, Any]:
    """Play the game `cfg` describes; return its summary rounds and their table.

    The config is validated first (`apo.validation`): a bad value stops here, before any file
    is written (an empty run dir Hydra made for it is removed again)."""
    from apo.allocator import fix_mmap_threshold, use_hugepages
    from apo.progress import announce

    use_hugepages(bool(cfg.hugepages))  # before any library allocates a tensor
    from apo.validation import validated_or_clean

    validated_or_clean(cfg)  # before the first log line creates the run dir's train.log
    logs = _log_files()
    announce(cfg)  # before the seconds the libraries take to import
    import lightning as L

    from apo.checkpoint import ResumeRefused
    from apo.game import GameLoop

    quiet_libraries()
    adopt_submitit_local_tasks()
    from apo.distributed import destroy_process_group_at_exit

    destroy_process_group_at_exit()
    fix_mmap_threshold(cfg.get("malloc_mmap_threshold_kb"))
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    try:
        game = GameLoop(cfg)
        return game.run()
    except (ResumeRefused, FileExistsError):
        _truncate(logs)  # a refused resume leaves the run dir as it was, its log included
        raise


def _log_files() -> dict[str, int]:
    """The log files the root logger writes, and their sizes now (0: not there yet). Only
    regular files (or files not there yet): a handler writing to a device such as /dev/null
    reports size 0, and truncating "back to nothing" would delete the device."""
    import os

    out = {}
    for h in logging.getLogger().handlers:
        name = getattr(h, "baseFilename", None)
        if name and (os.path.isfile(name) or not os.path.exists(name)):
            out[name] = os.path.getsize(name) if os.path.exists(name) else 0
    return out


def _truncate(sizes: dict[str, int]) -> None:
    import os

    for h in logging.getLogger().handlers:
        h.flush()
    for name, size in sizes.items():
        if os.path.exists(name):
            if size:
                os.truncate(name, size)
            else:
                os.remove(name)


def train(cfg: DictConfig) -> float | None:
    """Play the game `cfg` describes; return the metric a sweeper optimises (last round's)."""
    result = run_game(cfg)
    value = result["rounds"][-1].get(cfg.get("optimized_metric"))
    return None if value is None or not math.isfinite(value) else float(value)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
def main(cfg: DictConfig) -> float | None:
    return train(cfg)


if __name__ == "__main__":
    main()
