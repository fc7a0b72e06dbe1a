"""Decoding-time alignment with the RM (DeAL-style, without training): best-of-N picks, among N
samples of a prompt, the one the RM scores highest. The evaluation reports the judge's score of
the RM's pick among each test prompt's samples (`policy/best_of_n_*`) beside the plain policy's,
and `apo-generate best_of=N rm.path=...` writes each output sample as the RM's best of N draws.
`lookahead_search` is the RM-guided look-ahead (DeAL): a beam search over chunks of the policy's
own sampling, the RM scoring every partial response (`apo-generate lookahead.beams=...`, and in
every evaluation with `game.eval_lookahead.beams`: `apo.game.guided`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence


def best_of_n(scores: Sequence[float], n: int) -> list[int]:
    """Indices of the RM's pick in each consecutive group of `n` of a prompt's `scores` (the
    first among ties): `len(scores) / n` picks."""
    if n < 1 or len(scores) % n:
        raise ValueError(f"best_of_n: {len(scores)} samples are not groups of {n}")
    return [
        max(range(start, start + n), key=lambda i: (scores[i], -i))
        for start in range(0, len(scores), n)
    ]


#: a partial response: its token ids and whether it has ended (an end-of-sequence was drawn)
Partial = tuple[list[int], bool]


def lookahead_search(
    num_prompts: int,
    extend: Callable[[list[tuple[int, list[int]]], int], list[list[Partial]]],
    score: Callable[[list[tuple[int, list[int]]]], list[float]],
    beams: int,
    expand: int,
    max_new_tokens: int,
) -> list[list[int]]:
    """RM-guided look-ahead decoding (DeAL-style chunked beam search), one response per prompt.

    Every prompt keeps `beams` partial responses (starting from the empty one). At each step
    every unfinished one is extended `expand` times by a chunk of the policy's sampling
    (`extend(prefixes, expand)`: per `(prompt index, tokens so far)`, `expand` continuations
    with the tokens so far included); the RM scores every candidate as a response so far
    (`score`), and the best `beams` of a prompt (finished ones compete too) are kept. It stops
    when every kept response has ended or reached `max_new_tokens`; the RM's best is returned.
    """
    if beams < 1 or expand < 1:
        raise ValueError(f"lookahead_search: beams and expand must be >= 1, got {beams}, {expand}")
    kept: list[list[Partial]] = [[([], False)] for _ in range(num_prompts)]
    while True:
        todo = [
            (p, tokens)
            for p in range(num_prompts)
            for tokens, ended in kept[p]
            if not ended and len(tokens) < max_new_tokens
        ]
        if not todo:
            break
        grown = extend(todo, expand)
        candidates: list[list[Partial]] = [
            [b for b in kept[p] if b[1] or len(b[0]) >= max_new_tokens] for p in range(num_prompts)
        ]
        for (p, _), conts in zip(todo, grown):
            candidates[p] += [(t[:max_new_tokens], e or len(t) >= max_new_tokens) for t, e in conts]
        flat = [(p, c[0]) for p in range(num_prompts) for c in candidates[p]]
        scores = iter(score(flat))
        for p in range(num_prompts):
            s = [next(scores) for _ in candidates[p]]
            order = sorted(range(len(s)), key=lambda i: (-s[i], i))[:beams]
            kept[p] = [candidates[p][i] for i in order]
    return [kept[p][0][0] for p in range(num_prompts)]
