"""Optional LoRA adapters (peft) on a player's backbone, merged back into plain weights for export.

The adapters are injected in place (`peft.inject_adapter_in_model`), so the player keeps its
transformers model (`base_model`, `score`, `generation_config` stay where the modules expect them)
and only the adapter weights train; the reward model's new scalar head trains in full.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from torch import nn

#: defaults of a player's `lora` config node; `r: null` leaves LoRA off
LORA_DEFAULTS = {"r": None, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"}


def add_lora(
    model: nn.Module, cfg: Mapping[str, Any] | None, key: str, head: str | None
) -> nn.Module:
    """Inject LoRA adapters of rank `cfg["r"]` into `model` (unchanged when `r` is null).

    `head` names a module to train in full (the reward model's `score`); everything else but the
    adapters is frozen. `key` names the config node in errors.
    """
    opts = {**LORA_DEFAULTS, **dict(cfg or {})}
    unknown = sorted(set(opts) - set(LORA_DEFAULTS))
    if unknown:
        raise ValueError(f"{key}: unknown LoRA settings {unknown}; known: {sorted(LORA_DEFAULTS)}")
    if opts["r"] is None:
        return model
    if int(opts["r"]) < 1:
        raise ValueError(f"{key}.r must be a positive rank or null (off), got {opts['r']}")
    from peft import LoraConfig, TaskType, inject_adapter_in_model

    targets = opts["target_modules"]
    config = LoraConfig(
        r=int(opts["r"]),
        lora_alpha=float(opts["alpha"]),
        lora_dropout=float(opts["dropout"]),
        target_modules=list(targets) if not isinstance(targets, str) else targets,
        bias="none",
        # GPT-2 style Conv1D layers store their weight transposed
        fan_in_fan_out=any(type(m).__name__ == "Conv1D" for m in model.modules()),
        # `all-linear` skips the output layer: lm_head, or the classifier head for SEQ_CLS
        task_type=TaskType.SEQ_CLS if head else TaskType.CAUSAL_LM,
    )
    model = inject_adapter_in_model(config, model)
    if head is not None:
        getattr(model, head).requires_grad_(True)
    return model


def has_lora(model: nn.Module) -> bool:
    """Whether peft layers are injected (checked without importing peft)."""
    return any(type(m).__module__.startswith("peft.") for m in model.modules())


def merged_copy(model: nn.Module, state_dict: Mapping[str, Any] | None = None) -> nn.Module:
    """A copy of `model` (with `state_dict` loaded, if given) whose adapters are merged into their
    base layers and removed, so the result is a plain transformers model; `model` itself is left
    as it was (adapters still training)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    out = copy.deepcopy(model)
    if state_dict is not None:
        out.load_state_dict(state_dict)
    for name, module in list(out.named_modules()):
        if isinstance(module, BaseTunerLayer):
            module.merge()
            parent, _, child = name.rpartition(".")
            setattr(out.get_submodule(parent), child, module.get_base_layer())
    if hasattr(out, "peft_config"):
        del out.peft_config
    return out
