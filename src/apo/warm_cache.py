"""A content-addressed cache of warm starts (SFT policy + base RM) shared by the jobs of a sweep.

The warm start depends on the seed and the warm-start settings only, not on the APO coefficient
or the policy objective, so a sweep over those would otherwise redo it in every job. The key
hashes every config value the warm start reads; anything else may differ between the jobs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from apo.config import plain
from apo.records import atomic_file

#: config paths that change the warm start (everything else is ignored by the key)
KEY_PATHS = (
    "seed",
    "task",
    "data",
    "trainer",
    "strategy",
    "rm_strategy",
    "policy_strategy",
    "policy.backbone",
    "policy.optimizer",
    "policy.sft_batch_size",
    "policy.warmup",
    "rm.backbone",
    "rm.optimizer",
    "rm.batch_size",
    "rm.warmup",
    "rm.pooling",
    "game.rm_kl_coeff",
    "game.rm_loss",
    "game.rm_margin",
    "game.rm_centering_coeff",
)
#: player settings that change the warm start but enter the key only when set (off/null), so the
#: keys of caches written before they existed stay the same
OPTIONAL_KEY_PATHS = tuple(
    f"{player}.{name}"
    for player in ("policy", "rm")
    for name in (
        "model_name_or_path",
        "trust_remote_code",
        "prompt_template",
        "separator",
        "chat_template",
        "lora",
    )
)


def _is_unset(path: str, value: Any) -> bool:
    if path.endswith(".chat_template"):
        # Its default `auto` (or no such key, in configs older than it) keeps the keys of older
        # caches; `false` differs from it on conversational data with a chat-template checkpoint.
        return value in ("auto", None)
    return value in (None, False) or (isinstance(value, dict) and value.get("r") is None)


def warm_start_key(cfg: DictConfig) -> str:
    picked: dict[str, Any] = {}
    for path in KEY_PATHS:
        picked[path] = plain(OmegaConf.select(cfg, path, default=None))
    for path in OPTIONAL_KEY_PATHS:
        value = plain(OmegaConf.select(cfg, path, default=None))
        if not _is_unset(path, value):
            picked[path] = value
    blob = json.dumps(picked, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load(cache_dir: str | Path, key: str) -> dict[str, Any] | None:
    path = Path(cache_dir) / f"warm_start_{key}.pt"
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def save(cache_dir: str | Path, key: str, state: dict[str, Any]) -> Path:
    """Write atomically: a job that dies mid-write leaves no half file for the next one."""
    path = Path(cache_dir) / f"warm_start_{key}.pt"
    with atomic_file(path, "wb") as f:
        torch.save(state, f)
    return path
