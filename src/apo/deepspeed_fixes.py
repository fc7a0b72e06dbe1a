"""Where DeepSpeed itself is mended for the game: each fix scoped to the engines this project
builds (`CPUDeepSpeedStrategy`), each with its test.

- `initialize_patches`: while Lightning builds an engine, DeepSpeed is given the local rank as
  its device on CPU (Lightning passes `root_device.index`, None on CPU), and ZeRO-3 keeps no
  second fp32 copy of weights that are already fp32 (`_alias_fp32_master`).
- `release_engine`: a finished engine no longer keeps itself and its optimizer alive.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from typing import Any

import torch


@contextlib.contextmanager
def initialize_patches(local_rank: int | None) -> Iterator[None]:
    """Both fixes in place while an engine is built; `local_rank` None: on an accelerator, where
    DeepSpeed finds its device itself."""
    import deepspeed
    from deepspeed.runtime.zero.stage3 import DeepSpeedZeroOptimizer_Stage3 as Stage3

    initialize, create = deepspeed.initialize, Stage3._create_fp32_partitions

    def initialize_on_rank(*args: Any, **kwargs: Any) -> Any:
        kwargs["args"] = argparse.Namespace(device_rank=local_rank)
        return initialize(*args, **kwargs)

    if local_rank is not None:
        deepspeed.initialize = initialize_on_rank
    Stage3._create_fp32_partitions = _alias_fp32_master(create)
    try:
        yield
    finally:
        deepspeed.initialize, Stage3._create_fp32_partitions = initialize, create


def _alias_fp32_master(create: Any) -> Any:
    """ZeRO-3 means to step weights that are already fp32 on its device in place, with no fp32
    master copy (its own branch for this in `_create_fp32_partitions`), but it compares the
    partition's `torch.device` with the accelerator's device *name*, a string, which is never
    equal: every fp32 game held a second copy of each rank's weight partition (0.57 GiB per rank
    for the 308M RM on 2 ranks; tests/test_deepspeed_fixes.py). The comparison is given a
    `torch.device` while the partitions are made."""

    def create_fp32_partitions(self: Any) -> Any:
        name = self.device
        if isinstance(name, str):
            self.device = torch.device(name)
        try:
            return create(self)
        finally:
            self.device = name

    return create_fp32_partitions


def release_engine(engine: Any) -> None:
    """Destroy a finished DeepSpeed engine and cut what keeps it alive after it: DeepSpeed leaves
    its forward hooks (closures over the engine) on the module, and under ZeRO-3 every parameter
    pointing at the optimizer (`_z3_optimizer`). The game fits the same players again and again,
    so each fit's optimizer (its fp32 partitions, Adam's moments and gradient buffers) outlived
    it: on the 308M game a ZeRO-3 rank held 11 GB in the round's RM fit, 5.9 GB in the warm
    start's (tests/test_deepspeed_fixes.py)."""
    engine.destroy()
    for name in ("module_forward_pre_hook", "module_forward_post_hook", "first_dataloader_check"):
        handle = getattr(engine, name, None)
        if handle is not None:
            handle.remove()
    for p in engine.module.parameters():
        p.__dict__.pop("_z3_optimizer", None)
