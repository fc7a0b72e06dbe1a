"""Batched sampling with the KV cache, optionally from a geometric mixture with the reference.

The cache is a buffer written in place (no copy of the whole cache per token), each prompt is
run once for all of its samples (its cache repeated after), only the last position goes
through the LM head at the prompt, finished rows leave the batch, and a token is
drawn by inverting its row's CDF at one uniform number. Dropping rows and the CDF draws change
the random stream, so the samples of a seed are not those of the sampler before them, but are
drawn from the same distribution (tests/test_sampling.py checks it against the model's exact
probabilities).

`pi_mix(y_t | x, y_<t) ∝ pi(y_t | .)^(1 - w) * pi_ref(y_t | .)^w` token by token: the online
mixture sampling of Nash-MD (Munos et al. 2023, Sec. 5) and IPO-MD (Calandriello et al. 2024).
`w = 0` is plain sampling from the policy (the reference is not run).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn
from transformers.cache_utils import DynamicCache, DynamicLayer

from apo.distributed import sharding
from apo.modules import shared_prefix

#: finished rows leave the batch once they are at least 1 / DROP_AT of it (each drop copies
#: the cache, so not at every finished row)
DROP_AT = 4


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


def _draw(probs: torch.Tensor) -> torch.Tensor:
    """One token per row by inverting the row's CDF at one uniform draw: one random number a
    row, where `torch.multinomial` draws an exponential per vocabulary entry (a quarter of the
    sampler's time at 1,024 rows x 256 tokens)."""
    cdf = probs.cumsum(-1)
    u = torch.rand(probs.shape[0], 1, device=probs.device, dtype=cdf.dtype) * cdf[:, -1:]
    # the first entry whose CDF exceeds u: an entry of probability 0 is never picked
    return torch.searchsorted(cdf, u, right=True).clamp_(max=probs.shape[-1] - 1)[:, 0]


class _BufferLayer(DynamicLayer):
    """A KV-cache layer written in place into a buffer allocated once for the whole sample
    (prompt + `max_new_tokens`): each step writes one position and hands attention a view of
    the filled part, where the dynamic cache concatenated (copied) the whole cache every step.

    The prompt comes in once per prompt and is written `repeats` times into the buffer, one row
    per sample (no repeated copy of it beside the buffer); its own attention reads it as it
    came."""

    def __init__(self, capacity: int, repeats: int = 1) -> None:
        super().__init__()
        self.capacity, self.repeats, self.filled = capacity, repeats, 0

    def update(self, key_states, value_states, *args, **kwargs):  # type: ignore[override]
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            b, h, t, d = key_states.shape
            self.k_buf = key_states.new_empty((b * self.repeats, h, self.capacity, d))
            self.v_buf = value_states.new_empty((b * self.repeats, h, self.capacity, d))
            for buf, new in ((self.k_buf, key_states), (self.v_buf, value_states)):
                buf.view(b, self.repeats, h, self.capacity, d)[:, :, :, :t] = new[:, None]
            self.filled = t
            self.keys, self.values = self.k_buf[:, :, :t], self.v_buf[:, :, :t]
            return key_states, value_states
        end = self.filled + key_states.shape[-2]
        self.k_buf[:, :, self.filled : end] = key_states
        self.v_buf[:, :, self.filled : end] = value_states
        self.filled = end
        self.keys, self.values = self.k_buf[:, :, :end], self.v_buf[:, :, :end]
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized:
            self.k_buf, self.v_buf = self.k_buf[indices], self.v_buf[indices]
            self.keys = self.k_buf[:, :, : self.filled]
            self.values = self.v_buf[:, :, : self.filled]

    def batch_repeat_interleave(self, repeats: int) -> None:
        """The prompt's samples are in the buffer already (`repeats` at construction)."""
        if repeats != self.repeats:
            raise ValueError(f"this cache holds {self.repeats} samples a prompt, not {repeats}")


def _cache(model: nn.Module, capacity: int, repeats: int) -> DynamicCache | None:
    """A cache of `_BufferLayer`s for models whose layers all attend to the whole sequence;
    None (the model's own cache) for sliding-window or other layer kinds."""
    cfg = getattr(model, "config", None)
    types = set(getattr(cfg, "layer_types", None) or ["full_attention"])
    if cfg is None or getattr(cfg, "sliding_window", None) or types != {"full_attention"}:
        return None
    n_layers = getattr(cfg, "num_hidden_layers", None)
    if not n_layers:
        return None
    cache = DynamicCache()
    cache.layers = [_BufferLayer(capacity, repeats) for _ in range(n_layers)]
    return cache


class _Stream:
    """One model's incremental forward over the live rows of the batch.

    The prompt is run once per prompt, not once per sample, and its keys and values are kept
    once for its samples where the model allows (`apo.modules.shared_prefix`), else written
    into each sample's row of a `_BufferLayer` cache (or the model's own cache repeated), so
    the prefill costs 1 / `repeats` of running every copy, with the same logits row by row."""

    def __init__(
        self, model: nn.Module, ids: torch.Tensor, att: torch.Tensor, new: int, repeats: int = 1
    ) -> None:
        self.model = model
        pos = (att.cumsum(-1) - 1).clamp(min=0)
        kw = dict(input_ids=ids, attention_mask=att, position_ids=pos, use_cache=True)
        self.shared = shared_prefix.supports(model)
        if self.shared:
            cache = shared_prefix.SharedPrefixCache(model.config.num_hidden_layers, new, repeats)
            kw["shared_prefix"] = cache
        else:
            cache = _cache(model, ids.shape[1] + new, repeats)
        with self._attention():
            try:
                out = model(**kw, past_key_values=cache, logits_to_keep=1)
            except TypeError:  # a model's own code without `logits_to_keep`
                out = model(**kw)
        self.past, self.logits = out.past_key_values, out.logits[:, -1].float()
        self.pos = pos[:, -1:]
        if repeats > 1:
            self.past.batch_repeat_interleave(repeats)
            self.logits = self.logits.repeat_interleave(repeats, 0)
            self.pos = self.pos.repeat_interleave(repeats, 0)

    def _attention(self) -> AbstractContextManager:
        return shared_prefix.enabled(self.model) if self.shared else nullcontext()

    def step(self, token: torch.Tensor, att: torch.Tensor) -> None:
        self.pos = self.pos + 1
        kw = {"shared_prefix": self.past} if self.shared else {}
        with self._attention():
            out = self.model(
                input_ids=token[:, None],
                attention_mask=att,
                position_ids=self.pos,
                past_key_values=self.past,
                use_cache=True,
                **kw,
            )
        self.past, self.logits = out.past_key_values, out.logits[:, -1].float()

    def keep(self, rows: torch.Tensor) -> None:
        """Drop every row but `rows` (finished samples) from the cache and the positions."""
        self.past.batch_select_indices(rows)
        self.pos, self.logits = self.pos[rows], self.logits[rows]


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
    lockstep: bool | None = None,
) -> list[list[list[int]]]:
    """`num_samples` responses per left-padded prompt: `[B][K]` lists of token ids, eos excluded.

    `spec.mixture > 0` samples the geometric mixture with `ref_model`; `greedy` takes the most
    likely token instead of sampling. `stop_together(done)` is True when every rank is done
    (e.g. the strategy's `reduce_boolean_decision`); it is called at each step when a model is
    sharded, whose forward is a collective, so that every rank runs the same number of steps.
    `lockstep` (None = when a model is sharded) keeps finished rows in the batch; the samples of
    a seed are the same either way."""
    mixture, temperature, max_new_tokens = spec.mixture, spec.temperature, spec.max_new_tokens
    top_k, top_p = spec.top_k, spec.top_p
    if mixture > 0 and ref_model is None:
        raise ValueError("mixture sampling needs the reference model")
    streams = [_Stream(model, input_ids, attention_mask, max_new_tokens, num_samples)]
    if mixture > 0:
        streams.append(_Stream(ref_model, input_ids, attention_mask, max_new_tokens, num_samples))
    ids = input_ids.repeat_interleave(num_samples, 0)
    att = attention_mask.repeat_interleave(num_samples, 0)
    n = ids.shape[0]
    # A sharded model gathers its weights in every forward, a collective: all ranks must run
    # the same number of steps, so they stop together when every rank's rows are done (and
    # keep their finished rows, so no rank's batch runs empty).
    if lockstep is None:
        lockstep = any(sharding(s.model) is not None for s in streams)
    #: the rows of `out` still in the batch, and which of them have finished
    live = torch.arange(n, device=ids.device)
    done = torch.zeros(n, dtype=torch.bool, device=ids.device)
    #: lockstep keeps every row, but draws only for the rows a dropping batch would still hold
    #: and stops drawing once its own rows are done: the same random numbers for the same rows
    #: as without lockstep, so a sharded engine samples what DDP does for a seed
    held = torch.ones(n, dtype=torch.bool, device=ids.device)
    mine_done = False
    out = torch.full((n, max_new_tokens), pad_token_id, dtype=torch.long, device=ids.device)
    for t in range(max_new_tokens):
        logp = torch.log_softmax(streams[0].logits / max(temperature, 1e-6), -1)
        if mixture > 0:
            ref_logp = torch.log_softmax(streams[1].logits / max(temperature, 1e-6), -1)
            logp = torch.log_softmax((1 - mixture) * logp + mixture * ref_logp, -1)
        if greedy:
            token = logp.argmax(-1)
        elif not lockstep:
            token = _draw(_filter(logp, top_k, top_p).softmax(-1))
        else:
            token = torch.full_like(done, pad_token_id, dtype=torch.long)
            if not mine_done:
                rows = held.nonzero()[:, 0]
                token[rows] = _draw(_filter(logp[rows], top_k, top_p).softmax(-1))
        token = torch.where(done, torch.full_like(token, pad_token_id), token)
        out[live, t] = token
        done |= token == eos_token_id
        n_done, n_held = int((done & held).sum()), int(held.sum())
        mine_done = mine_done or n_done == n_held
        finished = mine_done
        if lockstep and stop_together is not None:
            finished = stop_together(finished)
        if finished or t == max_new_tokens - 1:
            break
        if n_done * DROP_AT >= n_held:
            if lockstep:
                held &= ~done
            else:
                # finished rows leave the batch (their cache rows too): later steps cost less
                rows = (~done).nonzero()[:, 0]
                live, token, att, done = live[rows], token[rows], att[rows], done[rows]
                held = held[rows] & ~done
                for s in streams:
                    s.keep(rows)
        att = torch.cat([att, torch.ones_like(att[:, :1])], dim=-1)
        for s in streams:
            s.step(token, att)
    rows = []
    for row in out.tolist():
        cut = row.index(eos_token_id) if eos_token_id in row else len(row)
        rows.append(row[:cut])
    return [rows[i : i + num_samples] for i in range(0, n, num_samples)]
