"""An ensemble of reward models played as one RM (`rm.ensemble.size`): every member is fitted on
every RM step (each on its own bag of the human pairs with `rm.ensemble.bootstrap`), the game
scores with the members' mean, and their spread (std) measures how sure the RM is — on the
policy's shifted samples it should rise above its value on held-out human pairs (Secrets of RLHF
Part II; an oracle-free distribution-shift monitor).

A single RM is an ensemble of one: `members(model)` is `[model]`, so the RM module has one code
path for both.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

#: seeds of member i > 0: the RM's seed + i * SEED_STRIDE (member 0 is the single RM itself)
SEED_STRIDE = 7919


class RMEnsemble(nn.Module):
    """N one-label sequence classifiers scored together (their weights are `members.<i>.*`)."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError("RMEnsemble: an ensemble needs at least 2 members")
        self.members = nn.ModuleList(members)

    @property
    def config(self):  # the members share one architecture: positions, vocabulary, pad id
        return self.members[0].config


def members(model: nn.Module) -> list[nn.Module]:
    """The RMs in `model`: its members, or the model itself."""
    return list(model.members) if isinstance(model, RMEnsemble) else [model]


def member_state(state_dict: dict, i: int) -> dict:
    """Member `i`'s weights out of an ensemble's state dict (`members.<i>.` stripped)."""
    prefix = f"members.{i}."
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}


def member_seeds(seed: int, size: int) -> list[int]:
    return [seed + i * SEED_STRIDE for i in range(size)]


def _keep(seed: int, member: int, index: int, rate: float) -> bool:
    # a hash, not a generator: the same item is in or out of a member's bag on every rank, in
    # every round and after a resume, whatever order the loader serves it in
    h = hashlib.blake2b(f"{seed}:{member}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2**64 < rate


def bag_mask(
    mask: torch.Tensor, index: torch.Tensor, member: int, seed: int, rate: float
) -> torch.Tensor:
    """`mask [B, k]` with the items outside member `member`'s bag zeroed (each item is in it with
    probability `rate`, fixed per `(seed, member, item)`); `rate` 0 = every item. A batch whose
    items all fall outside keeps them all (a step never sees an empty batch)."""
    if rate <= 0 or rate >= 1:
        return mask
    keep = torch.tensor(
        [_keep(seed, member, int(i), rate) for i in index.tolist()], device=mask.device
    )
    if not keep.any():
        return mask
    return mask * keep[:, None].to(mask.dtype)


def spread(rewards: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`(mean, std)` over the members' rewards `[M, ...]` (std 0 for a single member)."""
    if rewards.shape[0] == 1:
        return rewards[0], torch.zeros_like(rewards[0])
    return rewards.mean(0), rewards.std(0, unbiased=False)
