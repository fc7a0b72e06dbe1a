"""Batched sampling with the KV cache, optionally from a geometric mixture with the reference.

`pi_mix(y_t | x, y_<t) ∝ pi(y_t | .)^(1 - w) * pi_ref(y_t | .)^w` token by token: the online
mixture sampling of Nash-MD (Munos et al. 2023, Sec. 5) and IPO-MD (Calandriello et al. 2024).
`w = 0` is plain sampling from the policy (the reference is not run).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from apo.distributed import sharding


@dataclass(frozen=True)
class SamplingSpec:
    """How the policy samples: `policy.generation.*` plus the objective's `mixture`."""

    max_new_tokens: int
    temperature: float
    top_k: int
    top_p: float
    #: weight of pi_ref in the geometric mixture (0 = sample the policy itself)
    mixture: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.mixture <= 1.0:
            raise ValueError(f"objective.mixture must be in [0, 1], got {self.mixture}")
        if self.max_new_tokens < 1:
            raise ValueError(
                f"policy.generation.max_new_tokens must be >= 1, got {self.max_new_tokens}"
            )


def _filter(logp: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    if top_k and top_k < logp.shape[-1]:
        kth = logp.topk(top_k, dim=-1).values[:, -1:]
        logp = logp.masked_fill(logp < kth, float("-inf"))
    if top_p < 1.0:
        sorted_lp, order = logp.sort(dim=-1, descending=True)
        cum = sorted_lp.softmax(-1).cumsum(-1)
        # keep the smallest prefix whose mass reaches top_p (the first token always stays)
        drop = cum - sorted_lp.softmax(-1) >= top_p
        logp = logp.scatter(-1, order, sorted_lp.masked_fill(drop, float("-inf")))
    return logp


class _Stream:
    """One model's incremental forward over the growing batch."""

    def __init__(self, model: nn.Module, ids: torch.Tensor, att: torch.Tensor) -> None:
        self.model = model
        self.pos = (att.cumsum(-1) - 1).clamp(min=0)
        out = model(input_ids=ids, attention_mask=att, position_ids=self.pos, use_cache=True)
        self.past, self.logits = out.past_key_values, out.logits[:, -1].float()
        self.pos = self.pos[:, -1:]

    def step(self, token: torch.Tensor, att: torch.Tensor) -> None:
        self.pos = self.pos + 1
        out = self.model(
            input_ids=token[:, None],
            attention_mask=att,
            position_ids=self.pos,
            past_key_values=self.past,
            use_cache=True,
        )
        self.past, self.logits = out.past_key_values, out.logits[:, -1].float()


@torch.no_grad()
def sample(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    num_samples: int,
    spec: SamplingSpec,
    eos_token_id: int,
    pad_token_id: int,
    ref_model: nn.Module | None = None,
    greedy: bool = False,
    stop_together: Callable[[bool], bool] | None = None,
) -> list[list[list[int]]]:
    """`num_samples` responses per left-padded prompt: `[B][K]` lists of token ids, eos excluded.

    `spec.mixture > 0` samples the geometric mixture with `ref_model`; `greedy` takes the most
    likely token instead of sampling. `stop_together(done)` is True when every rank is done
    (e.g. the strategy's `reduce_boolean_decision`); it is called at each step when a model is
    sharded, whose forward is a collective, so that every rank runs the same number of steps."""
    mixture, temperature, max_new_tokens = spec.mixture, spec.temperature, spec.max_new_tokens
    top_k, top_p = spec.top_k, spec.top_p
    if mixture > 0 and ref_model is None:
        raise ValueError("mixture sampling needs the reference model")
    ids = input_ids.repeat_interleave(num_samples, 0)
    att = attention_mask.repeat_interleave(num_samples, 0)
    streams = [_Stream(model, ids, att)]
    if mixture > 0:
        streams.append(_Stream(ref_model, ids, att))
    n = ids.shape[0]
    # A sharded model gathers its weights in every forward, a collective: all ranks must run
    # the same number of steps, so they stop together when every rank's rows are done.
    lockstep = any(sharding(s.model) is not None for s in streams)
    done = torch.zeros(n, dtype=torch.bool, device=ids.device)
    out = torch.full((n, max_new_tokens), pad_token_id, dtype=torch.long, device=ids.device)
    for t in range(max_new_tokens):
        logp = torch.log_softmax(streams[0].logits / max(temperature, 1e-6), -1)
        if mixture > 0:
            ref_logp = torch.log_softmax(streams[1].logits / max(temperature, 1e-6), -1)
            logp = torch.log_softmax((1 - mixture) * logp + mixture * ref_logp, -1)
        if greedy:
            token = logp.argmax(-1)
        else:
            token = torch.multinomial(_filter(logp, top_k, top_p).softmax(-1), 1).squeeze(-1)
        token = torch.where(done, torch.full_like(token, pad_token_id), token)
        out[:, t] = token
        done |= token == eos_token_id
        finished = bool(done.all())
        if lockstep and stop_together is not None:
            finished = stop_together(finished)
        if finished or t == max_new_tokens - 1:
            break
        att = torch.cat([att, torch.ones_like(att[:, :1])], dim=-1)
        for s in streams:
            s.step(token, att)
    rows = []
    for row in out.tolist():
        cut = row.index(eos_token_id) if eos_token_id in row else len(row)
        rows.append(row[:cut])
    return [rows[i : i + num_samples] for i in range(0, n, num_samples)]
