"""Small helpers every part shares to read the composed Hydra config."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf


def plain(node: Any) -> Any:
    """A config node as plain Python containers (interpolations resolved); other values as they
    are. `None` stays `None`."""
    if isinstance(node, DictConfig | ListConfig):
        return OmegaConf.to_container(node, resolve=True)
    return node
