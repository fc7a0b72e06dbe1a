"""What an optimizer-offloading engine keeps in host memory, so that a CPU-only machine can say
what the accelerator would hold: DeepSpeed's offload moves the fp32 master partitions, their
gradients and Adam's moments off the GPU, but on a CPU-only host both sides are the same RAM, so
a rank's resident memory cannot show it. `host_bytes` counts those tensors (each storage once);
a phase reports the largest count of its fits as `perf/<phase>/offloaded_mb` (`apo.monitors`),
and the resident peak less it is what would have stayed on the device."""

from __future__ import annotations

from typing import Any

import torch

#: the largest `host_bytes` counted since the last `reset`
_largest = [0]


def host_bytes(optimizer: Any) -> int:
    """Bytes a DeepSpeed ZeRO optimizer with `offload_optimizer` keeps on the host: its fp32
    master partitions and their gradients, the flat gradient buffer and the wrapped optimizer's
    state; 0 for any other optimizer."""
    if not getattr(optimizer, "offload_optimizer", False):
        return 0
    storages: dict[int, int] = {}

    def add(t: Any) -> None:
        if isinstance(t, torch.Tensor) and t.numel():
            s = t.untyped_storage()
            storages[s.data_ptr()] = s.nbytes()

    masters = getattr(optimizer, "fp32_partitioned_groups_flat", None)
    for t in masters or getattr(optimizer, "single_partition_of_fp32_groups", []):
        add(t)
        add(t.grad)
    add(getattr(optimizer, "grad_partitions_flat_buffer", None))
    for state in optimizer.optimizer.state.values():
        for value in state.values():
            add(value)
    return sum(storages.values())


def count(optimizer: Any) -> None:
    """Note `optimizer`'s host bytes (see `host_bytes`), keeping the largest since `reset`."""
    _largest[0] = max(_largest[0], host_bytes(optimizer))


def reset() -> None:
    _largest[0] = 0


def offloaded_mb() -> float:
    """The largest host bytes counted since `reset`, in MiB."""
    return _largest[0] / 2**20
