"""Memory a fit freed goes back to the system (`apo.allocator.return_freed_memory`)."""

from __future__ import annotations

import os

import pytest
import torch

from apo.allocator import (
    fix_mmap_threshold,
    libc_function,
    malloc_trim,
    return_freed_memory,
    thp_mode,
)
from apo.monitors import peak_rss_mb, reset_peak_rss


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


@pytest.mark.skipif(not reset_peak_rss(), reason="the peak RSS cannot be reset here (no procfs)")
def test_the_peak_memory_starts_again_at_a_reset():
    spike = torch.ones(100_000_000)  # 400 MB, touched
    spike += 1
    peak = peak_rss_mb()
    del spike
    return_freed_memory()
    assert peak_rss_mb() == pytest.approx(peak, abs=1)  # a high-water mark: it stays
    assert reset_peak_rss()
    after = peak_rss_mb()
    assert after < peak - 300, (peak, after)  # the next phase's peak is its own
    keep = torch.ones(50_000_000)  # 200 MB after the reset: counted again
    keep += 1
    assert peak_rss_mb() > after + 150


_ARM = """
import os, sys, torch
from apo.allocator import fix_mmap_threshold
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
assert fix_mmap_threshold(int(sys.argv[1]))
base = rss()
# 300 MB of 1 MB tensors, each followed by a small one that stays (as a fit's small states do)
parts = [(torch.ones(250_000), torch.ones(100)) for _ in range(300)]
held = rss() - base
pins = [pin for _, pin in parts]
del parts
print(held, rss() - base)
"""


@pytest.mark.skipif(libc_function("mallopt") is None, reason="not glibc: no mallopt")
@pytest.mark.parametrize("kib", [128, 4096])
def test_the_mmap_threshold_decides_whether_freed_tensors_leave_at_once(kib: int):
    import subprocess
    import sys

    # a fresh process: the threshold decides where blocks go as they are allocated
    out = subprocess.run(
        [sys.executable, "-c", _ARM, str(kib)], capture_output=True, text=True, check=True
    )
    held, after = map(int, out.stdout.split())
    assert held > 250e6
    if kib == 128:  # each 1 MB block was its own mapping, unmapped as it was freed
        assert after < 0.1 * held, (held, after)
    else:  # below the threshold: in the heap between blocks still in use, kept (until a trim)
        assert after > 0.5 * held, (held, after)
    assert not fix_mmap_threshold(None)


_HUGE = """
import os, sys
from apo.allocator import use_hugepages
print(use_hugepages(sys.argv[1] == "on"))
import torch
x = torch.empty(50_000_000)  # 200 MB, every page touched
x.fill_(1.0)
with open("/proc/self/smaps_rollup") as f:
    print(next(int(line.split()[1]) for line in f if line.startswith("AnonHugePages")))
"""


@pytest.mark.skipif(
    thp_mode() not in ("madvise", "always") or not os.path.exists("/proc/self/smaps_rollup"),
    reason="no transparent huge pages here (Linux with THP in madvise or always mode)",
)
@pytest.mark.parametrize(("switch", "env"), [("on", None), ("off", None), ("on", "0")])
def test_hugepages_back_large_tensors_unless_switched_off(switch: str, env: str | None):
    import subprocess
    import sys

    # a fresh process: PyTorch reads the variable at its first tensor
    environ = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    if env is not None:
        environ["THP_MEM_ALLOC_ENABLE"] = env  # the user's own setting wins
    out = subprocess.run(
        [sys.executable, "-c", _HUGE, switch],
        capture_output=True,
        text=True,
        check=True,
        env=environ,
    )
    asked, huge_kb = out.stdout.split()
    on = switch == "on" and env is None
    assert asked == str(on)
    if on:
        assert int(huge_kb) > 100_000, huge_kb  # most of the 200 MB in 2 MiB pages
    elif thp_mode() == "madvise":
        assert int(huge_kb) == 0, huge_kb  # PyTorch did not ask: 4 KiB pages
