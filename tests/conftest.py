"""Shared fixtures: configs composed from the packaged configs (`apo.configs`, the project's
`configs/` tree), shrunk per test."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from apo.train import CONFIG_DIR, CONFIG_MODULE

ROOT = Path(__file__).resolve().parents[1]
#: the shared real data sets, by default beside the project; APO_DATA_DIR moves them
DATA_DIR = Path(os.environ.get("APO_DATA_DIR", ROOT.parent / "shared" / "data"))


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on now (for a test's own process group)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, port: int, body, out: dict) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        out[rank] = body(rank)
    finally:
        dist.destroy_process_group()


def on_two_ranks(body) -> dict[int, dict]:
    """`body(rank)` (a module-level function returning a picklable dict) on 2 gloo processes;
    what each rank returned."""
    import torch.multiprocessing as mp

    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_rank, args=(free_port(), body, out), nprocs=2, join=True)
        return dict(out)


def compose_cfg(
    overrides: list[str] | None = None, run_dir: Path | None = None, hydra_config: bool = False
) -> DictConfig:
    """Compose the packaged `train.yaml` as `apo-train` would (through the package, as an
    installed wheel finds it), with `run_dir` set directly.

    `hydra_config=True` also composes the `hydra` node and installs it, so `${hydra:...}`
    interpolations resolve as in a real run."""
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        cfg = compose(
            config_name="train", overrides=list(overrides or []), return_hydra_config=hydra_config
        )
    if hydra_config:
        HydraConfig.instance().set_config(cfg)
    if run_dir is not None:
        with open_dict(cfg):
            cfg.run_dir = str(run_dir)
    return cfg


def sort_task(**overrides):
    """The built-in sort task with the settings of `configs/task/sort.yaml` (their one home),
    `overrides` replacing some."""
    from hydra.utils import get_class
    from omegaconf import OmegaConf

    node = OmegaConf.to_container(OmegaConf.load(Path(CONFIG_DIR) / "task" / "sort.yaml"))
    cls = get_class(node.pop("_target_"))
    return cls(**{**node, **overrides})


@pytest.fixture
def tiny_cfg(tmp_path: Path) -> DictConfig:
    """The `experiment=tiny` game writing into this test's tmp dir."""
    return compose_cfg(["experiment=tiny"], run_dir=tmp_path / "run")
