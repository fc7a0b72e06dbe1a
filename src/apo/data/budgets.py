"""Token budgets checked against the game's texts before the first phase: nothing is cut
silently. Every prompt must fit `data.max_prompt_len`; every golden answer and demonstration
must fit `policy.generation.max_new_tokens` (the policy has to be able to say it) and, with its
prompt, `data.max_len`; every human pair's response, with its prompt, `data.max_len`. What does
not fit is an error naming the part, the item and the field (`data.overlength: error`), dropped
(`skip`) or cut as the encoders cut it (`truncate`) — counted in `summary.json` either way.

Texts a task's own tokenizer cannot spell (characters outside its alphabet, which would become
`<unk>`) are always an error: the task and its tokenizer disagree.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from apo.data.adapters.errors import DataFormatError
from apo.data.datamodule import GameDataModule

log = logging.getLogger(__name__)

MODES = ("truncate", "skip", "error")


def _n(enc: Any, text: str) -> int:
    return len(enc.tok(text, add_special_tokens=False)["input_ids"])


def check_unknown_tokens(dm: GameDataModule, where: str) -> None:
    """Raise when a text of the game's fixed data tokenizes to the tokenizer's unknown token."""
    enc = dm.encoders["policy"]
    unk = enc.tok.unk_token_id
    if unk is None:
        return
    data = dm.data
    texts = [
        ("sft", i, f, t)
        for i, (p, r) in enumerate(data.sft)
        for f, t in (("prompt", p), ("demonstration", r))
    ]
    texts += [
        (part, i, f"responses[{j}]" if j >= 0 else "prompt", t)
        for part, items in (("human_train", data.human_train), ("human_val", data.human_val))
        for i, it in enumerate(items)
        for j, t in [(-1, it.prompt), *enumerate(it.responses)]
    ]
    texts += [("rm", i, "golden", data.golden[p]) for i, p in enumerate(data.rm_prompts)]
    texts += [("test", i, "prompt", p) for i, p in enumerate(data.test_prompts)]
    for part, i, field, text in texts:
        ids = enc.tok(text, add_special_tokens=False)["input_ids"]
        if unk in ids:
            chars = sorted(
                {c for c in text if enc.tok(c, add_special_tokens=False)["input_ids"] == [unk]}
            )
            raise DataFormatError(
                where,
                f"{part} item {i}: {text!r} has characters the tokenizer does not know "
                f"({''.join(chars) or 'some'}); add them to the task's alphabet",
                field=field,
            )


def _problems(dm: GameDataModule, max_new_tokens: int) -> Iterator[tuple[str, int, str, str]]:
    """`(part, index, field, what)` for every text over its budget."""
    data, pol, rm = dm.data, dm.encoders["policy"], dm.encoders["rm"]
    msgs = data.messages
    plen = {}

    def prompt_len(enc: Any, prompt: str) -> int:
        key = (id(enc), prompt)
        if key not in plen:
            plen[key] = enc.prompt_length(prompt, msgs.get(prompt))
        return plen[key]

    def prompt_over(prompt: str) -> str | None:
        n = max(prompt_len(pol, prompt), prompt_len(rm, prompt))
        return (
            f"{n} tokens over data.max_prompt_len={pol.max_prompt_len}"
            if n > pol.max_prompt_len
            else None
        )

    def response_over(enc: Any, prompt: str, response: str, generated: bool) -> str | None:
        n = _n(enc, response) + 1
        if generated and n > max_new_tokens:
            return (
                f"{n} tokens (eos included) over policy.generation.max_new_tokens={max_new_tokens}"
            )
        total = min(prompt_len(enc, prompt), enc.max_prompt_len) + n
        return (
            f"prompt + response {total} tokens over data.max_len={enc.max_len}"
            if total > enc.max_len
            else None
        )

    parts = {
        "sft": [(p, [r], True, pol) for p, r in data.sft],
        "human_train": [(it.prompt, it.responses, False, rm) for it in data.human_train],
        "human_val": [(it.prompt, it.responses, False, rm) for it in data.human_val],
        "rm": [(p, [data.golden[p]], True, rm) for p in data.rm_prompts],
        "policy": [(p, [], False, pol) for p in data.policy_prompts],
        "test": [(p, [], False, pol) for p in data.test_prompts],
    }
    for part, items in parts.items():
        for i, (prompt, responses, generated, enc) in enumerate(items):
            over = prompt_over(prompt)
            if over:
                yield part, i, "prompt", over
                continue
            for j, r in enumerate(responses):
                # what the policy must be able to say fits its generation budget; every
                # response fits the sequence budget of the player that reads it
                checks = [(pol, True), (enc, False)] if generated else [(enc, False)]
                over = next((o for e, g in checks if (o := response_over(e, prompt, r, g))), None)
                if over:
                    field = {"sft": "demonstration", "rm": "golden"}.get(part, f"responses[{j}]")
                    yield part, i, field, over
                    break


def check_budgets(dm: GameDataModule, max_new_tokens: int, mode: str, where: str) -> dict[str, int]:
    """Apply `mode` (`data.overlength`) to every text over its budget; return the counts for
    `summary.json` (`over_budget`, and `skipped_over_budget` with `skip`)."""
    if mode not in MODES:
        raise ValueError(f"data.overlength must be one of {MODES}, got {mode!r}")
    found = list(_problems(dm, max_new_tokens))
    meta = {"over_budget": len(found)}
    if not found:
        return meta
    part, i, field, what = found[0]
    if mode == "error":
        raise DataFormatError(
            where,
            f"{part} item {i}: {what} ({len(found)} texts over their budgets in all); raise the "
            "budget, or set data.overlength=skip (drop them) or truncate (cut them)",
            field=field,
        )
    data = dm.data
    if mode == "skip":
        drop: dict[str, set[int]] = {}
        for part, i, _, _ in found:
            drop.setdefault(part, set()).add(i)
        keep = lambda part, xs: [x for k, x in enumerate(xs) if k not in drop.get(part, ())]  # noqa: E731
        data.sft = keep("sft", data.sft)
        data.human_train = keep("human_train", data.human_train)
        data.human_val = keep("human_val", data.human_val)
        data.rm_prompts = keep("rm", data.rm_prompts)
        data.golden = {p: data.golden[p] for p in data.rm_prompts}
        data.policy_prompts = keep("policy", data.policy_prompts)
        data.test_prompts = keep("test", data.test_prompts)
        empty = [
            k
            for k in (
                "sft",
                "human_train",
                "human_val",
                "rm_prompts",
                "policy_prompts",
                "test_prompts",
            )
            if not getattr(data, k)
        ]
        if empty:
            raise DataFormatError(
                where,
                f"nothing is left of {', '.join(empty)} after skipping the texts over their budgets",
            )
        meta["skipped_over_budget"] = len(found)
    log.warning(
        "%s: %d texts over their token budgets (%s), e.g. %s item %d %s: %s",
        where,
        len(found),
        "dropped" if mode == "skip" else "cut",
        part,
        i,
        field,
        what,
    )
    return meta
