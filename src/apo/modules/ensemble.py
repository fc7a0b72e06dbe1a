"""An ensemble of reward models played as one RM (`rm.ensemble.size`): every member is fitted on
every RM step (each on its own bag of the human pairs with `rm.ensemble.bootstrap`), the game
scores with the members' mean, and their spread (std) measures how sure the RM is — on the
policy's shifted samples it should rise above its value on held-out human pairs (Secrets of RLHF
Part II; an oracle-free distribution-shift monitor).

A Bradley-Terry reward has no fixed offset or scale, so the raw std of the members' rewards mixes
their disagreement about a response with the constant gap between their offsets. Two measures
free of both: `z_spread` (each member's rewards standardised on the held-out human responses)
and `order_disagreement` (how often two members order two responses of one prompt differently).

A single RM is an ensemble of one: `members(model)` is `[model]`, so the RM module has one code
path for both.
"""

from __future__ import annotations

import hashlib
from typing import Any

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


def member_scales(rows: list[list[list[float]]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Each member's mean and std `[M]` over every response of `rows` (records, each a list of
    responses, each a list of M member rewards): the held-out human responses."""
    r = torch.tensor([x for rec in rows for x in rec], dtype=torch.float64)
    return r.mean(0), r.std(0, unbiased=False).clamp(min=1e-12)


def z_spread(rows: list[list[list[float]]], loc: torch.Tensor, scale: torch.Tensor) -> list[float]:
    """Per response, the std over members of `(r_m - loc_m) / scale_m`."""
    r = torch.tensor([x for rec in rows for x in rec], dtype=torch.float64)
    return ((r - loc) / scale).std(-1, unbiased=False).tolist()


def order_disagreement(
    rows: list[list[list[float]]], responses: list[list[Any] | None] | None = None
) -> float:
    """The chance that two distinct members order two responses of one record differently,
    over every pair of a record's responses that some member does not tie (an exact tie for all
    members tells nothing) and, where `responses` gives each response's tokens, that are not the
    same response: one response scored twice differs only by float noise (another place in a
    packed row, another batch), and its "order" is a coin flip. NaN without such a pair."""
    total, n = 0.0, 0
    for idx, rec in enumerate(rows):
        r = torch.tensor(rec, dtype=torch.float64)  # [k, M]
        m = r.shape[-1]
        i, j = torch.triu_indices(r.shape[0], r.shape[0], 1)
        sign = torch.sign(r[i] - r[j])  # [pairs, M]
        keep = (sign != 0).any(-1)
        resp = responses[idx] if responses is not None else None
        if resp is not None:
            keys = [tuple(x) if isinstance(x, list) else x for x in resp]
            keep &= torch.tensor([keys[a] != keys[b] for a, b in zip(i.tolist(), j.tolist())])
        up, down = (sign[keep] > 0).sum(-1), (sign[keep] < 0).sum(-1)
        total += float((up * down).sum()) / (m * (m - 1) / 2)
        n += int(keep.sum())
    return total / n if n else float("nan")
