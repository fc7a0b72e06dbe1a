"""Memory a fit freed goes back to the system (`apo.game.trainers.return_freed_memory`)."""

from __future__ import annotations

import os

import pytest
import torch

from apo.game.trainers import malloc_trim, return_freed_memory


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(malloc_trim() is None, reason="no C library with malloc_trim (glibc) here")
def test_freed_tensor_memory_leaves_the_process():
    base = _rss()
    # 400 MB of 100 KB tensors (below glibc's mmap threshold: heap memory, as a fit's many
    # activations and small states are), then one more, so the heap's top stays in use
    tensors = [torch.ones(25_000) for _ in range(4000)]
    pin = torch.ones(25_000)
    del tensors
    held = _rss() - base
    return_freed_memory()
    after = _rss() - base
    assert held > 300e6  # glibc kept what was freed: what the 300M game's RSS showed
    assert after < 0.2 * held, (held, after)
    assert pin.sum() == 25_000
