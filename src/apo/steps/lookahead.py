"""`apo-generate lookahead.beams=B rm.path=...`: RM-guided look-ahead decoding of a saved
policy (`apo.decoding.lookahead_search` bound to the policy's sampler and the RM). It runs the
models directly in this process, in no-grad mode: a decoding-time tool for evaluation and data
generation, not a sharded engine."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from apo.data.collate import ListwiseCollator, pad_2d
from apo.decoding import Partial, lookahead_search
from apo.modules.sampling import SamplingSpec, sample


def lookahead_samples(
    model: Any,
    tok: Any,
    dm: Any,
    rm: Any,
    rm_dm: Any,
    queries: list[str],
    spec: SamplingSpec,
    settings: Any,
    k: int,
    seed: int,
) -> list[list[str]]:
    """`k` guided responses per query (one search each, from its own seed): texts."""
    beams, expand, chunk = int(settings.beams), int(settings.expand), int(settings.chunk)
    chunk_spec = dataclasses.replace(spec, max_new_tokens=chunk)
    eos, pad = tok.eos_token_id, tok.pad_token_id
    prompt_ids = [dm.prompt_ids(q) for q in queries]
    collate = ListwiseCollator(rm_dm.encoders["rm"].tok.pad_token_id, "score")
    model.eval()
    rm.eval()

    def extend(prefixes: list[tuple[int, list[int]]], n: int) -> list[list[Partial]]:
        ids, att = pad_2d([prompt_ids[p] + toks for p, toks in prefixes], pad, left=True)
        out = sample(model, ids, att, n, chunk_spec, eos, pad)
        # a continuation shorter than the chunk drew the end-of-sequence token
        return [
            [(toks + c, len(c) < chunk) for c in conts] for (_, toks), conts in zip(prefixes, out)
        ]

    def score(prefixes: list[tuple[int, list[int]]]) -> list[float]:
        # an empty response is never kept (the samples format holds none)
        scored = [(i, p, toks) for i, (p, toks) in enumerate(prefixes) if toks]
        out = [float("-inf")] * len(prefixes)
        if scored:
            items = [
                rm_dm.text_item(j, queries[p], [dm.enc.decode(toks)], [0.0], "rm")
                for j, (_, p, toks) in enumerate(scored)
            ]
            for (i, _, _), r in zip(scored, rm.listwise_rewards(collate(items))[:, 0].tolist()):
                out[i] = r
        return out

    texts: list[list[str]] = [[] for _ in queries]
    with torch.no_grad():
        for i in range(k):
            torch.manual_seed(seed * 1000 + i)
            best = lookahead_search(len(queries), extend, score, beams, expand, spec.max_new_tokens)
            for row, toks in zip(texts, best):
                row.append(dm.enc.decode(toks))
    return texts
