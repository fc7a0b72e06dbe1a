"""Loaders and writers for real preference data (HH-RLHF, ShareGPT DPO, TRL's preference
formats in local Hugging Face datasets, the APO reference formats), validated so that a bad
record is reported by file, line or record, and field."""

from apo.data.adapters.apo_formats import (
    DEFAULT_SEP,
    load_comparisons,
    load_golden,
    load_samples,
    write_comparisons,
    write_golden,
    write_samples,
)
from apo.data.adapters.errors import DataFormatError
from apo.data.adapters.hf_local import read_local_dataset
from apo.data.adapters.hh_rlhf import load_hh_rlhf, split_transcript
from apo.data.adapters.report import LoadReport
from apo.data.adapters.sharegpt import HH_TEMPLATE, ChatTemplate, load_sharegpt
from apo.data.adapters.split import golden_from_chosen, split_prompts
from apo.data.adapters.trl import load_preference, parse_preference

__all__ = [
    "DEFAULT_SEP",
    "HH_TEMPLATE",
    "ChatTemplate",
    "DataFormatError",
    "LoadReport",
    "golden_from_chosen",
    "load_comparisons",
    "load_golden",
    "load_hh_rlhf",
    "load_preference",
    "load_samples",
    "load_sharegpt",
    "parse_preference",
    "read_local_dataset",
    "split_prompts",
    "split_transcript",
    "write_comparisons",
    "write_golden",
    "write_samples",
]
