"""Save a player as a plain transformers checkpoint: safetensors weights, config and tokenizer.

`rounds/round_XX/{policy,rm}/` (with `game.save_weights`) and `final/{policy,rm}/` hold such
directories; `AutoModelForCausalLM` / `AutoModelForSequenceClassification` and `AutoTokenizer` load
them without this package, and so does `policy.model_name_or_path` / `rm.model_name_or_path`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn
from transformers import PreTrainedTokenizerBase

from apo.modules.lora import has_lora, merged_copy


def save_player(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    directory: str | Path,
    state_dict: dict[str, Any] | None = None,
) -> Path:
    """Write `model` (LoRA adapters merged in) and `tokenizer` to `directory` with
    `save_pretrained`; transformers 5 always writes `model.safetensors`.

    `state_dict` replaces the module's own weights (e.g. full weights gathered from a sharded
    strategy); it must have the keys of `model.state_dict()`.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    if has_lora(model):
        model, state_dict = merged_copy(model, state_dict), None
    model.save_pretrained(str(d), state_dict=state_dict)
    tokenizer.save_pretrained(str(d))
    return d
