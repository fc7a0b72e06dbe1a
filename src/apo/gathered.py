"""Plain copies of sharded players for sampling, gathered once per version of their weights.

Under FSDP or ZeRO-3 the policy samples from a plain copy of its weights, gathered when a
sampling prediction starts (`policy.generation.weights: gathered`). The weights change only in
a fit, and a round's evaluation and the next round's generation sample from the same policy:
the copy the evaluation gathered serves the generation too, so a round gathers the policy once
instead of twice (on this machine a 308M policy's gather over 2 gloo processes takes 1.2-3.6 s,
nearly all of it the kernel zeroing fresh pages; on a cluster it is the whole model over the
network).

A copy is reused only when every rank finds its own pieces of the model as they were when the
copy was made (`fingerprint`: the sum of each piece, in float64, so any writer is seen, not
only those that bump a tensor's version counter). It is freed at every fit (`drop`, called by
the Trainer factory before a fit starts), so no fit ever runs beside one, and when the game
ends.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn

from apo.distributed import local_tensor, plain_copy, resharded, sharding


@torch.no_grad()
def fingerprint(model: nn.Module) -> torch.Tensor:
    """`[n]` float64 sums of this rank's pieces of `model`'s parameters and buffers (its shards
    or partitions when sharded): what changes when anything writes the weights."""
    if sharding(model) == "fsdp":
        resharded(model)
    tensors = [local_tensor(p) for p in model.parameters()] + list(model.buffers())
    if not tensors:
        return torch.zeros(0, dtype=torch.float64)
    return torch.stack([torch.sum(t.detach(), dtype=torch.float64).cpu() for t in tensors])


class GatheredCopies:
    """The plain copies of sharded models made for sampling, one per model, each kept with
    the fingerprint of the weights it was gathered from (see the module's docstring)."""

    def __init__(self, skeleton: nn.Module) -> None:
        # the architecture the copies are built in (`apo.distributed.skeleton`); not a module
        # attribute of anything an engine wraps
        self.skeleton = skeleton
        self._copies: dict[int, tuple[torch.Tensor, nn.Module]] = {}
        #: how many copies were gathered and how many reused, and the seconds the gathers
        #: took (the game reports them per phase, `perf/<phase>/gather_s`)
        self.gathered = self.reused = 0
        self.seconds = 0.0

    def get(self, model: nn.Module, all_ranks: Callable[[bool], bool]) -> nn.Module:
        """A plain copy of sharded `model`'s current weights, in eval mode: the one kept from
        an earlier call when no rank's weights changed since, else a new one (a collective:
        every rank calls it together; `all_ranks(flag)` is True when it is True on every
        rank)."""
        fp = fingerprint(model)
        kept = self._copies.get(id(model))
        same = kept is not None and torch.equal(kept[0], fp)  # False for another shape
        if all_ranks(same):
            self.reused += 1
            return kept[1]
        self._copies.pop(id(model), None)  # freed before the new copy is gathered
        t0 = time.perf_counter()
        copy = plain_copy(model, self.skeleton).eval()
        self.seconds += time.perf_counter() - t0
        self._copies[id(model)] = (fp, copy)
        self.gathered += 1
        return copy

    def drop(self) -> None:
        """Free every copy (before a fit, at the game's end)."""
        self._copies.clear()

    def __len__(self) -> int:
        return len(self._copies)
