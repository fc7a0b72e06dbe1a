"""Build the players' transformers backbones from a config object (never from the hub)."""

from __future__ import annotations

from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    PretrainedConfig,
    PreTrainedTokenizerBase,
)


def _with_tokenizer(config: PretrainedConfig, tok: PreTrainedTokenizerBase) -> PretrainedConfig:
    config.vocab_size = len(tok)
    config.pad_token_id = tok.pad_token_id
    config.bos_token_id = tok.bos_token_id
    config.eos_token_id = tok.eos_token_id
    return config


def build_causal_lm(config: PretrainedConfig, tokenizer: PreTrainedTokenizerBase, seed: int) -> Any:
    """A randomly initialised causal LM (e.g. a tiny Llama) sized to the tokenizer."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_with_tokenizer(config, tokenizer))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model


def build_sequence_classifier(
    config: PretrainedConfig, tokenizer: PreTrainedTokenizerBase, seed: int
) -> Any:
    """A randomly initialised one-label sequence classifier: a backbone with a scalar head."""
    torch.manual_seed(seed)
    config = _with_tokenizer(config, tokenizer)
    config.num_labels = 1
    return AutoModelForSequenceClassification.from_config(config)
