"""APO game framework: a reward model and a policy play the Adversarial Preference Optimization game.

`from apo import play` is the Python API (`apo.api`); it is imported on first use, so that
`import apo` stays cheap for the command line (`apo-train --help`, TAB completion)."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "compose_config", "play"]

_API = ("compose_config", "play")


def __getattr__(name: str) -> Any:
    if name in _API:
        from apo import api

        return getattr(api, name)
    raise AttributeError(f"module 'apo' has no attribute {name!r}")
