"""Save a player as a plain transformers checkpoint: safetensors weights, config and tokenizer.

`rounds/round_XX/{policy,rm}/` (with `game.save_weights`) and `final/{policy,rm}/` hold such
directories; `AutoModelForCausalLM` / `AutoModelForSequenceClassification` and `AutoTokenizer` load
them without this package, and so does `policy.model_name_or_path` / `rm.model_name_or_path`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from torch import nn
from transformers import PreTrainedTokenizerBase

from apo.modules.lora import has_lora, merged_copy
from apo.records import umask


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
    if has_lora(model):
        model, state_dict = merged_copy(model, state_dict), None
    # written beside and renamed into place (an old `directory` is replaced), so a killed run
    # never leaves a half-written checkpoint
    tmp, old = d.with_name(f".{d.name}.tmp"), d.with_name(f".{d.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        # a copy: save_pretrained empties the dict it is given, and a caller may save one
        # state dict to several directories (a round's and final/)
        model.save_pretrained(
            str(tmp), state_dict=dict(state_dict) if state_dict is not None else None
        )
        tokenizer.save_pretrained(str(tmp))
    except (OSError, SafetensorError) as e:
        # e.g. a full disk (safetensors reports it as its own error, without the path): nothing
        # half-written is left, and the message says where
        shutil.rmtree(tmp, ignore_errors=True)
        msg = f"{d}: cannot write the checkpoint ({getattr(e, 'strerror', None) or e})"
        errno = getattr(e, "errno", None)
        raise (OSError(errno, msg) if errno is not None else OSError(msg)) from e
    # some writers (safetensors) make private files; give them the mode open() would
    mask = umask()
    for f in tmp.rglob("*"):
        f.chmod((0o777 if f.is_dir() else 0o666) & ~mask)
    if d.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(d, old)
    os.replace(tmp, d)
    shutil.rmtree(old, ignore_errors=True)
    return d
