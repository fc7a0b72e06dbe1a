"""The one place that chooses hardware: a `strategy` config node -> a Lightning strategy + devices.

Engines (`name` in a `configs/strategy/` file): `auto`, `ddp`, `fsdp` (`version: 2` = FSDP2
through `ModelParallelStrategy`, `version: 1` = Lightning's `FSDPStrategy`, GPUs only) and
`deepspeed` (ZeRO `stage` 2 or 3, optional CPU offload). The same config runs on CPU processes
(gloo) and on GPUs (NCCL); only the CPU path needs the small adaptations in `CPUDeepSpeedStrategy`.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_class
from lightning.pytorch.strategies import (
    DDPStrategy,
    DeepSpeedStrategy,
    FSDPStrategy,
    ModelParallelStrategy,
    Strategy,
)
from omegaconf import DictConfig
from torch import nn

from apo import deepspeed_fixes, zero_sizes
from apo.config import plain
from apo.zero_sizes import decoder_layer_names

log = logging.getLogger(__name__)

#: engine name -> the config file in `configs/strategy/` that shows it (a test keeps them in sync)
STRATEGIES = {
    "auto": ["auto"],
    "ddp": ["ddp"],
    "fsdp": ["fsdp"],
    "deepspeed": ["deepspeed_stage_2", "deepspeed_stage_3", "deepspeed_stage_3_offload"],
}

# DeepSpeed compiles its CPU ops (cpu_adam) on first use into TORCH_EXTENSIONS_DIR; pin the
# default (~/.cache/torch_extensions) so every run and every rank reuses one build (30-75 s).
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "torch_extensions"))


class FSDP2Strategy(ModelParallelStrategy):
    """FSDP2 over all processes: a one-dimensional data-parallel mesh (no tensor parallelism).

    The LightningModules shard themselves in `configure_model` (see `shard_fsdp2`)."""

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes
        self._tensor_parallel_size = 1
        super().setup_environment()


class CPUDeepSpeedStrategy(DeepSpeedStrategy):
    """Lightning's DeepSpeedStrategy, also on CPU processes (gloo).

    On CPU it skips the CUDA-only checks and gives DeepSpeed the local rank as its device (CPU
    devices have no index). On GPUs every override falls through to the stock behaviour, except
    `teardown`, which destroys the engine so that its hooks do not outlive the Trainer (the game
    builds a new Trainer, and engine, on the same module for every phase), and `backward`, which
    keeps the loss of an accumulated micro-batch from being divided twice.

    `cpu_adam=True` swaps the module's Adam/AdamW for `DeepSpeedCPUAdam` with the same
    hyperparameters, which DeepSpeed needs for optimizer offload.
    """

    def __init__(
        self, *args: Any, cpu_adam: bool = False, zero: dict | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.cpu_adam, self.zero = cpu_adam, zero_sizes.check(zero)

    def _size_zero(self, model: nn.Module) -> None:
        """Buffers and ZeRO-3's working set sized from the player (`strategy.zero`)."""
        self.config["zero_optimization"].update(zero_sizes.zero_sizes(model, self.zero))

    @property
    def _on_cpu(self) -> bool:
        return self.root_device.type == "cpu"

    def setup_environment(self) -> None:
        if self._on_cpu:
            DDPStrategy.setup_environment(self)  # the parent refuses any non-CUDA accelerator
        else:
            super().setup_environment()

    def setup_distributed(self) -> None:
        if not self._on_cpu:
            return super().setup_distributed()
        # the parent also checks that device indices equal local ranks; CPU devices have none
        self.set_world_ranks()
        self._init_deepspeed_distributed()

    def _patches(self) -> contextlib.AbstractContextManager:
        return deepspeed_fixes.initialize_patches(self.local_rank if self._on_cpu else None)

    def _setup_model_and_optimizer(self, model, optimizer, lr_scheduler=None):  # type: ignore[override]
        self._size_zero(model)
        with self._patches():
            return super()._setup_model_and_optimizer(model, optimizer, lr_scheduler)

    def _initialize_deepspeed_inference(self, model: nn.Module) -> None:
        self._size_zero(model)
        with self._patches():
            super()._initialize_deepspeed_inference(model)

    def _init_optimizers(self):  # type: ignore[override]
        optimizer, scheduler = super()._init_optimizers()
        if self.cpu_adam:
            optimizer = to_cpu_adam(optimizer)
            if scheduler is not None:
                raise ValueError(
                    "cpu_adam: the optimizer is replaced, so it cannot keep a scheduler"
                )
        return optimizer, scheduler

    def setup(self, trainer: Any) -> None:
        super().setup(trainer)
        zero = self.config["zero_optimization"]
        log.info(
            "DeepSpeed ZeRO stage %d over %d processes (%s)",
            zero["stage"],
            self.world_size,
            ", ".join(f"{k} {zero[k]:,}" for k in zero_sizes.KEYS if k in zero),
        )

    def backward(self, closure_loss: torch.Tensor, optimizer: Any, *args: Any, **kwargs: Any):
        # Lightning has already divided the loss by `accumulate_grad_batches`; the engine would
        # divide it by its `gradient_accumulation_steps` (the same number) once more, so every
        # accumulated gradient came out k times too small (tests/test_strategies.py)
        kwargs.setdefault("scale_wrt_gas", False)
        return super().backward(closure_loss, optimizer, *args, **kwargs)

    def teardown(self) -> None:
        engine = self.model
        super().teardown()
        if hasattr(engine, "destroy"):
            deepspeed_fixes.release_engine(engine)


def to_cpu_adam(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The same parameter groups and hyperparameters in DeepSpeed's CPU Adam (for offload)."""
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    if not isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW):
        raise ValueError(
            f"cpu_adam replaces Adam or AdamW by DeepSpeedCPUAdam; got {type(optimizer).__name__}"
        )
    keys = ("params", "lr", "betas", "eps", "weight_decay")
    groups = [{k: g[k] for k in keys} for g in optimizer.param_groups]
    return DeepSpeedCPUAdam(groups, adamw_mode=isinstance(optimizer, torch.optim.AdamW))


def build_optimizer(
    trainer: Any, factory: Any, params: Any, **kwargs: Any
) -> torch.optim.Optimizer:
    """The player's optimizer from its config partial, on `trainer`'s engine.

    A fused optimizer (`fused: true`, one kernel for all parameters) unscales gradients inside
    its step, so Lightning's mixed precision (`16-mixed`, `bf16-mixed`) refuses to clip its
    gradients; there it falls back to the unfused one, with the same settings."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    optimizer = factory(params, **kwargs)
    clips = bool(getattr(trainer, "gradient_clip_val", None))
    if (
        getattr(optimizer, "_step_supports_amp_scaling", False)
        and clips
        and isinstance(trainer.precision_plugin, MixedPrecision)
    ):
        params = [p for g in optimizer.param_groups for p in g["params"]]
        optimizer = factory(params, **kwargs, fused=False)
    return optimizer


def shards_parameters(strategy: Any) -> bool:
    """Whether `strategy` splits the parameters themselves over ranks (FSDP, ZeRO-3)."""
    if isinstance(strategy, ModelParallelStrategy | FSDPStrategy):
        return True
    return isinstance(strategy, DeepSpeedStrategy) and strategy.zero_stage_3


def shard(module: Any, roots: list[nn.Module | None], frozen: list[nn.Module | None] = ()) -> None:
    """Prepare `module` for its Trainer's engine; called from the players' `configure_model`.

    `frozen` modules (the reference policy) are sharded like the others. Under FSDP2, each root
    (the modules the LightningModule calls directly; their forward gathers their own
    parameters) gets `fully_shard` on its decoder layers, then on itself. Modules sharded by an
    earlier Trainer are kept as they are, so the same module can be fitted and used again.
    """
    from torch.distributed.fsdp import FSDPModule, fully_shard

    strategy = module.trainer.strategy
    if not shards_parameters(strategy):
        return
    if not isinstance(strategy, ModelParallelStrategy):
        return
    mesh = strategy.device_mesh["data_parallel"]
    for root in roots:
        if root is None or isinstance(root, FSDPModule):
            continue
        layers, name, n = decoder_layer_names(root), type(root).__name__, 0
        for m in root.modules():
            if type(m).__name__ in layers and not isinstance(m, FSDPModule):
                fully_shard(m, mesh=mesh)
                n += 1
        fully_shard(root, mesh=mesh)
        log.info(
            "FSDP2: sharded %s (%d decoder layers) over %d ranks",
            name,
            n,
            mesh.size(),
        )


def _fsdp(c: dict[str, Any]) -> Strategy:
    version = c["version"]
    if version == 2:
        return FSDP2Strategy(process_group_backend=c.get("process_group_backend"))
    if version != 1:
        raise ValueError(f"strategy fsdp: version must be 1 or 2, got {version!r}")
    layers = {get_class(path) for path in c["layer_classes"] or []}
    if not layers:
        raise ValueError("strategy fsdp version 1: layer_classes (decoder-layer classes) is empty")
    return FSDPStrategy(
        auto_wrap_policy=layers,
        activation_checkpointing_policy=layers if c["activation_checkpointing"] else None,
        sharding_strategy=c["sharding_strategy"],
        cpu_offload=bool(c["cpu_offload"]),
        process_group_backend=c.get("process_group_backend"),
        state_dict_type="full",
    )


def _deepspeed(c: dict[str, Any]) -> Strategy:
    stage = c["stage"]
    if stage not in (1, 2, 3):
        raise ValueError(f"strategy deepspeed: stage must be 1, 2 or 3, got {stage!r}")
    offload_optimizer = bool(c["offload_optimizer"])
    return CPUDeepSpeedStrategy(
        stage=stage,
        offload_optimizer=offload_optimizer,
        offload_parameters=bool(c["offload_parameters"]),
        process_group_backend=c.get("process_group_backend"),
        # only DeepSpeed's throughput log reads it; Lightning would read it off the train loader,
        # which fails on the RM's combined loader
        logging_batch_size_per_gpu=1,
        # DeepSpeed's offloaded optimizer step runs in its CPU Adam
        cpu_adam=offload_optimizer,
        zero=c.get("zero"),
    )


def build_strategy(cfg: DictConfig | dict[str, Any]) -> tuple[Strategy | str, int | str]:
    """Return `(strategy, devices)` for a Trainer.

    `cfg.name` picks the engine (see `STRATEGIES`); `cfg.devices` is the number of processes
    (CPU) or accelerators per node. On CPU the process group uses gloo; on GPUs, NCCL.
    """
    c = dict(plain(cfg))
    name = c.get("name")
    devices = c.get("devices")
    if name == "auto":
        return "auto", devices
    if name == "ddp":
        return (
            DDPStrategy(
                process_group_backend=c.get("process_group_backend"),
                find_unused_parameters=bool(c["find_unused_parameters"]),
                start_method="popen",
            ),
            devices,
        )
    if name == "fsdp":
        return _fsdp(c), devices
    if name == "deepspeed":
        return _deepspeed(c), devices
    raise ValueError(f"unknown strategy {name!r}: expected one of {', '.join(STRATEGIES)}")
