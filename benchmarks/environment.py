"""What a benchmark ran on, printed and kept with its numbers: the packages that set the speed
(pinned or not) and the CPU. The same code measured TRL's round 10-15 % faster on one machine
and package set than on another, and the default game's float path differed between two
machines of the same kind; without this record the cause could not be told afterwards."""

from __future__ import annotations

import os
import platform
from importlib.metadata import PackageNotFoundError, version

from apo.allocator import thp_mode

PACKAGES = (
    "torch",
    "transformers",
    "lightning",
    "trl",
    "accelerate",
    "datasets",
    "tokenizers",
    "numpy",
    "deepspeed",
)
#: instruction-set flags the math libraries choose kernels by
FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile")


def _cpu() -> tuple[str, list[str]]:
    """The CPU's model name and which of `FLAGS` it has (Linux; unknown elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
    except OSError:
        return platform.processor() or "unknown", []
    first = info.split("\n\n")[0]  # the first processor's fields
    fields = {k.strip(): v.strip() for k, v in (ln.split(":", 1) for ln in first.splitlines())}
    flags = set(fields.get("flags", "").split())
    return fields.get("model name", "unknown"), [f for f in FLAGS if f in flags]


def environment() -> dict:
    """Package versions (None: not installed), CPU model, flags and cores, huge-page mode."""
    packages = {}
    for name in PACKAGES:
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            packages[name] = None
    model, flags = _cpu()
    return {
        "python": platform.python_version(),
        "packages": packages,
        "cpu": model,
        "cpu_flags": flags,
        "cores": os.cpu_count(),
        "transparent_hugepages": thp_mode() or "unknown",
    }


def describe(env: dict) -> str:
    """One line for a benchmark's printout."""
    pkgs = ", ".join(f"{k} {v}" for k, v in env["packages"].items() if v is not None)
    flags = " ".join(env["cpu_flags"]) or "none of " + " ".join(FLAGS)
    return (
        f"{env['cpu']} ({env['cores']} cores; {flags}; THP {env['transparent_hugepages']}); "
        f"Python {env['python']}; {pkgs}"
    )


if __name__ == "__main__":
    print(describe(environment()))
