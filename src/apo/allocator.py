"""What the process's memory allocators do: huge pages for PyTorch's large tensors, glibc's
mmap threshold, and freed memory handed back to the system. No torch import here: the huge
page switch must be set before the first tensor exists."""

from __future__ import annotations

import ctypes
import functools
import os
from collections.abc import Callable


def use_hugepages(on: bool) -> bool:
    """`hugepages`: PyTorch's CPU allocator asks Linux for transparent huge pages (2 MiB) for
    tensors of 2 MiB and more (`THP_MEM_ALLOC_ENABLE`, which PyTorch reads at the process's
    first tensor: so this runs before any library allocates one; a rank the launcher starts
    inherits it). Every first touch of a fresh 4 KiB page is a fault into the kernel, and a
    game allocates and frees weight-sized tensors all the time (README, Strategies). The
    variable wins when the user set it. Whether huge pages are asked for."""
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1" if on else "0")
    return os.environ["THP_MEM_ALLOC_ENABLE"] == "1"


def thp_mode() -> str | None:
    """The system's transparent huge page mode (`always`, `madvise`, `never`), None where it
    cannot be read (not Linux)."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return f.read().split("[")[1].split("]")[0]
    except (OSError, IndexError):
        return None


def return_freed_memory() -> None:
    """Give the memory just freed back to the system where the C library keeps it: glibc holds
    freed heap memory in its arenas, so a process's RSS stays at its high-water mark after a fit
    and the next phase's peak stacks on it (measured on the 300M game; README, Strategies).
    A no-op where there is no `malloc_trim` (other C libraries, other systems)."""
    trim = malloc_trim()
    if trim is not None:
        trim(0)


def fix_mmap_threshold(kib: int | None) -> bool:
    """`malloc_mmap_threshold_kb`: glibc's `mallopt(M_MMAP_THRESHOLD)`. Allocations from this
    size on are mapped on their own and handed back when freed. Fixing it turns off glibc's
    dynamic threshold, which rises (up to 32 MiB) each time a large block is freed, so that a
    player's weight-sized tensors then land in the heap and stay there: at the peak of a 77M
    player's RM fit the process held 3.4 GiB with it, 2.7 GiB with a fixed 128 KiB (README,
    Strategies). False where there is none (other C libraries) or `kib` is None."""
    mallopt = libc_function("mallopt")
    if kib is None or mallopt is None:
        return False
    m_mmap_threshold = -3  # glibc's malloc.h
    return bool(mallopt(m_mmap_threshold, int(kib) * 1024))


def malloc_trim() -> Callable[[int], int] | None:
    """The C library's `malloc_trim` (glibc), or None."""
    return libc_function("malloc_trim")


@functools.cache
def libc_function(name: str) -> Callable[..., int] | None:
    """A function of the C library, looked up on first use among the symbols the process has
    already loaded (no library search at start-up), or None where it has none."""
    try:
        return getattr(ctypes.CDLL(None), name, None)
    except OSError:
        return None
