"""The players' transformers backbones: tiny ones built from a config object, or local checkpoints.

Nothing here downloads: a checkpoint is a local directory (`save_pretrained` layout) read with
`local_files_only=True`, and a name that is not a directory is an error naming the config key.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedTokenizerBase,
)

from apo.modules.lora import add_lora

log = logging.getLogger(__name__)


def _with_tokenizer(config: PretrainedConfig, tok: PreTrainedTokenizerBase) -> PretrainedConfig:
    config.vocab_size = len(tok)
    config.pad_token_id = tok.pad_token_id
    config.bos_token_id = tok.bos_token_id
    config.eos_token_id = tok.eos_token_id
    return config


def _set_special_ids(model: Any, tok: PreTrainedTokenizerBase) -> None:
    """The sampler stops on, and pads with, the tokenizer's ids (not a checkpoint's id lists)."""
    model.config.pad_token_id = tok.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tok.pad_token_id
        model.generation_config.eos_token_id = tok.eos_token_id
        model.generation_config.bos_token_id = tok.bos_token_id


def build_causal_lm(config: PretrainedConfig, tokenizer: PreTrainedTokenizerBase, seed: int) -> Any:
    """A randomly initialised causal LM (e.g. a tiny Llama) sized to the tokenizer."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_with_tokenizer(config, tokenizer))
    _set_special_ids(model, tokenizer)
    return model


def build_sequence_classifier(
    config: PretrainedConfig, tokenizer: PreTrainedTokenizerBase, seed: int
) -> Any:
    """A randomly initialised one-label sequence classifier: a backbone with a scalar head."""
    torch.manual_seed(seed)
    config = _with_tokenizer(config, tokenizer)
    config.num_labels = 1
    return AutoModelForSequenceClassification.from_config(config)


# ---- local checkpoints ------------------------------------------------------------------------
class CheckpointError(ValueError):
    """A checkpoint directory that cannot be read; the message names the key and the path."""


#: files a saved tokenizer leaves (any one of them)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


@contextmanager
def reading(key: str, path: Path | str, what: str) -> Iterator[None]:
    """Turn a library's failure to read `path` (a truncated safetensors file, a missing shard, a
    bad config) into a `CheckpointError` naming `key` and `path`."""
    try:
        yield
    except (CheckpointError, FileNotFoundError):
        raise
    except Exception as e:
        raise CheckpointError(
            f"{key}={str(path)!r}: cannot load the {what} from it ({type(e).__name__}: {e})"
        ) from e


def checkpoint_dir(path: str | Path, key: str) -> Path:
    """`path` as an existing local directory, or a clear error (hub names are never fetched)."""
    d = Path(str(path)).expanduser()
    if not d.is_dir():
        raise FileNotFoundError(
            f"{key}={path!r}: not an existing directory. Checkpoints are read from local "
            "directories only (no downloads); save one with `save_pretrained` and give its path"
        )
    if not (d / "config.json").is_file():
        raise FileNotFoundError(f"{key}={path!r}: the directory has no config.json")
    return d.resolve()


def load_tokenizer(
    path: Path, key: str, trust_remote_code: bool = False
) -> PreTrainedTokenizerBase:
    """The checkpoint's tokenizer, padding on the right and truncating on the left (prompts keep
    their end). Without a pad token, eos doubles as pad (logged); without eos it is an error."""
    if not any((Path(path) / f).is_file() for f in TOKENIZER_FILES):
        raise CheckpointError(
            f"{key}={str(path)!r}: no tokenizer in it (none of {', '.join(TOKENIZER_FILES)}); "
            "save the tokenizer beside the model with save_pretrained"
        )
    with reading(key, path, "tokenizer"):
        tok = AutoTokenizer.from_pretrained(
            str(path), local_files_only=True, trust_remote_code=trust_remote_code
        )
    tok.padding_side, tok.truncation_side = "right", "left"
    if tok.eos_token_id is None:
        raise ValueError(
            f"{key}={str(path)!r}: the tokenizer has no eos token; set `eos_token` in its "
            "tokenizer_config.json (responses end with it)"
        )
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
        log.warning(
            "%s: the tokenizer of %s has no pad token; using eos %r as pad",
            key,
            path,
            tok.eos_token,
        )
    return tok


def _check_vocab(model: Any, tok: PreTrainedTokenizerBase, key: str, path: Path) -> None:
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tok) > rows:
        raise ValueError(
            f"{key}={str(path)!r}: the tokenizer has {len(tok)} tokens but the model's embedding "
            f"only {rows} rows; save a tokenizer that matches the model"
        )


def load_causal_lm(
    path: Path, tokenizer: PreTrainedTokenizerBase, key: str, trust_remote_code: bool = False
) -> Any:
    """Any `AutoModelForCausalLM` checkpoint, in float32 (Lightning's `precision` casts)."""
    with reading(key, path, "causal LM"):
        model = AutoModelForCausalLM.from_pretrained(
            str(path),
            local_files_only=True,
            trust_remote_code=trust_remote_code,
            dtype=torch.float32,
        )
    _check_vocab(model, tokenizer, key, path)
    _set_special_ids(model, tokenizer)
    return model


def load_sequence_classifier(
    path: Path,
    tokenizer: PreTrainedTokenizerBase,
    key: str,
    seed: int,
    trust_remote_code: bool = False,
) -> Any:
    """A one-label sequence classifier from a checkpoint of one, or from a causal LM checkpoint
    with a new scalar head (`score`, initialised N(0, initializer_range) from `seed`; the LM head
    is dropped)."""
    with reading(key, path, "config"):
        config = AutoConfig.from_pretrained(
            str(path), local_files_only=True, trust_remote_code=trust_remote_code
        )
    archs = list(getattr(config, "architectures", None) or [])
    is_classifier = any(a.endswith("ForSequenceClassification") for a in archs)
    if is_classifier and config.num_labels != 1:
        raise ValueError(
            f"{key}={str(path)!r}: a sequence classifier with {config.num_labels} labels; the "
            "reward model needs one (a scalar reward)"
        )
    torch.manual_seed(seed)
    with reading(key, path, "reward model"):
        model = AutoModelForSequenceClassification.from_pretrained(
            str(path),
            num_labels=1,
            local_files_only=True,
            trust_remote_code=trust_remote_code,
            dtype=torch.float32,
        )
    if not isinstance(getattr(model, "score", None), torch.nn.Module):
        raise ValueError(
            f"{key}={str(path)!r}: {type(model).__name__} has no `score` head; the reward model "
            "needs a decoder-style classifier (a backbone with a per-token linear `score` head)"
        )
    if not is_classifier:
        log.info("%s: %s %s + a new scalar head `score`", key, path, archs or "checkpoint")
    _check_vocab(model, tokenizer, key, path)
    _set_special_ids(model, tokenizer)
    return model


def check_model_positions(model: Any, needed: int, key: str, path: Path | str) -> None:
    cfg = getattr(model, "config", None) or model.base_model.config
    limit = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
    if limit is not None and needed > limit:
        raise ValueError(
            f"{key}={str(path)!r}: the game needs {needed} positions but the model has "
            f"{limit}; lower data.max_len / data.max_prompt_len / policy.generation.max_new_tokens"
        )


def build_player(
    kind: str,
    cfg: Any,
    seed: int,
    tokenizer: PreTrainedTokenizerBase,
    own_tokenizer: bool = True,
) -> tuple[Any, PreTrainedTokenizerBase]:
    """`(model, tokenizer)` of the `policy` or `rm` player from its config node.

    `model_name_or_path: null` builds a tiny model from `backbone` with `tokenizer` (the task's);
    a directory loads that checkpoint and its tokenizer (`tokenizer` instead, when
    `own_tokenizer` is false: both players load one directory). `lora.r` adds LoRA adapters.
    A checkpoint's positions are checked once the token budgets are known
    (`apo.game.players.check_positions`).
    """
    if kind not in ("policy", "rm"):
        raise ValueError(f"build_player: kind must be 'policy' or 'rm', got {kind!r}")
    path = cfg.get("model_name_or_path")
    if path is None:
        from hydra.utils import instantiate

        build = build_causal_lm if kind == "policy" else build_sequence_classifier
        model = build(instantiate(cfg.backbone), tokenizer, seed)
    else:
        key = f"{kind}.model_name_or_path"
        d = checkpoint_dir(path, key)
        trust = bool(cfg.trust_remote_code)
        if own_tokenizer:
            tokenizer = load_tokenizer(d, key, trust)
        if kind == "policy":
            model = load_causal_lm(d, tokenizer, key, trust)
        else:
            model = load_sequence_classifier(d, tokenizer, key, seed, trust)
    if cfg.get("activation_checkpointing"):
        enable_activation_checkpointing(model)
    model = add_lora(model, cfg.get("lora"), f"{kind}.lora", "score" if kind == "rm" else None)
    return model, tokenizer


def enable_activation_checkpointing(model: torch.nn.Module) -> None:
    """Recompute each decoder layer's activations in the backward instead of keeping them
    (`<player>.activation_checkpointing`); non-reentrant, which recomputes correctly when only
    adapters (LoRA) or the head train. The last layer is not recomputed: its backward comes
    right after the forward's end, when its activations would be rebuilt at once, so keeping them
    costs no memory at the peak and recomputing them is pure work."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 names it so
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    if layers:
        layers[-1].gradient_checkpointing = False
