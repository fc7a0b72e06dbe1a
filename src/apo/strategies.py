"""The one place that chooses hardware: a `strategy` config node -> a Lightning strategy + devices."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.strategies import DDPStrategy, Strategy
from omegaconf import DictConfig, OmegaConf


def build_strategy(cfg: DictConfig | dict[str, Any]) -> tuple[Strategy | str, int | str]:
    """Return `(strategy, devices)` for a Trainer.

    `cfg.name` picks the engine; `cfg.devices` is the number of processes (CPU) or accelerators
    per node. On CPU, DDP uses gloo; on GPUs the same config uses NCCL.
    """
    c = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    name = c.get("name", "auto")
    devices = c.get("devices", 1)
    if name == "auto":
        return "auto", devices
    if name == "ddp":
        return (
            DDPStrategy(
                process_group_backend=c.get("process_group_backend"),
                find_unused_parameters=bool(c.get("find_unused_parameters", False)),
                start_method="popen",
            ),
            devices,
        )
    raise ValueError(f"unknown strategy {name!r}: expected one of auto, ddp")
