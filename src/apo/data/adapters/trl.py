"""TRL's preference formats (TRL docs, "Dataset formats") as game items
`(prompt, [chosen, rejected], [1.0, 0.0])`:

- standard: `{"prompt": str, "chosen": str, "rejected": str}`, or with an implicit prompt
  `{"chosen": str, "rejected": str}` (the prompt is their shared prefix, cut at a word boundary);
- conversational: `{"prompt": [messages], "chosen": [messages], "rejected": [messages]}` with
  `{"role", "content"}` messages (`messages` may stand for `prompt`, and a reply may be one
  message object), or with an implicit prompt: `chosen` / `rejected` are whole conversations
  that share every turn but the last. A string `prompt` beside whole conversations (TRL's
  `*-trl-style` sets) is ignored: the conversations hold the same turns with their roles.

A conversational prompt keeps its messages (`ListwiseItem.messages`) for the players' chat
templates; its text is the HH-style rendering ("\\n\\nHuman: ...\\n\\nAssistant:"), the fallback.
Standard texts are kept exactly (TRL's completions start with their space: `" blue."`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from apo.data.adapters.errors import Where, describe
from apo.data.adapters.hf_local import read_local_dataset
from apo.data.adapters.sharegpt import HH_TEMPLATE, ChatTemplate
from apo.data.game_data import ListwiseItem, Messages

FORMATS = ("auto", "standard", "conversational")
ROLES = ("system", "user", "assistant")
#: the columns a preference record may use; the others are never read
COLUMNS = ("prompt", "messages", "chosen", "rejected")


def load_preference(
    path: Path, split: str | None, fmt: str, key: str = "data.path"
) -> list[ListwiseItem]:
    """Items from a local dataset (`hf_local.read_local_dataset`) in one of TRL's preference
    formats; `fmt` is `auto` (decided per record: lists of messages are conversational),
    `standard` or `conversational`."""
    if fmt not in FORMATS:
        raise ValueError(
            f"{key.rsplit('.', 1)[0]}.format must be one of {list(FORMATS)}, got {fmt!r}"
        )
    where, rows = read_local_dataset(path, split, COLUMNS, ("chosen", "rejected"), key)
    return parse_preference(rows, where, fmt)


def parse_preference(
    rows: Sequence[dict[str, Any]], path: Path, fmt: str, template: ChatTemplate = HH_TEMPLATE
) -> list[ListwiseItem]:
    """Items from `rows` (plain dicts, record `i` of `path`). Anything off is an error naming
    the record and field: a missing or mistyped field, an empty reply, an unknown role, a prompt
    not ending on a user turn, a reply not from the assistant, identical replies."""
    items = []
    # Two different conversations must not render to one prompt text: the text is the key
    # under which the players look the messages up.
    rendered: dict[str, tuple[int, Messages]] = {}
    for i, rec in enumerate(rows):
        where = Where(path, record=i)
        if not isinstance(rec, dict):
            raise where.expected(None, "a record with chosen and rejected", rec)
        item = _item(rec, where, fmt, template)
        if item.messages is not None:
            j, seen = rendered.setdefault(item.prompt, (i, item.messages))
            if seen != item.messages:
                raise where.error(
                    f"renders to the same prompt text as record [{j}] but holds other messages",
                    "prompt",
                )
        items.append(item)
    return items


def _item(rec: dict[str, Any], where: Where, fmt: str, template: ChatTemplate) -> ListwiseItem:
    if fmt == "auto":
        listy = any(isinstance(rec.get(k), list | dict) for k in COLUMNS)
        fmt = "conversational" if listy else "standard"
    messages: Messages | None = None
    if fmt == "standard":
        prompt, chosen, rejected = _standard(rec, where)
    else:
        messages, chosen, rejected = _conversational(rec, where)
        prompt = template.render([(m["role"], m["content"]) for m in messages])
    if chosen == rejected:
        raise where.error(
            "expected different chosen and rejected replies, found the same", "rejected"
        )
    return ListwiseItem(prompt, [chosen, rejected], [1.0, 0.0], messages)


# ---- standard ------------------------------------------------------------------------------
def _standard(rec: dict[str, Any], where: Where) -> tuple[str, str, str]:
    chosen, rejected = _text(rec, "chosen", where), _text(rec, "rejected", where)
    if rec.get("prompt") is None:
        return _shared_prefix(chosen, rejected, where)
    prompt = _text(rec, "prompt", where)
    for key, reply in (("chosen", chosen), ("rejected", rejected)):
        if not reply.strip():
            raise where.expected(key, "a non-empty reply", reply)
    return prompt, chosen, rejected


def _text(rec: dict[str, Any], key: str, where: Where) -> str:
    value = rec.get(key)
    if value is None:
        raise where.error("missing; expected a string (standard format)", key)
    if not isinstance(value, str):
        raise where.expected(key, "a string (standard format)", value)
    if key == "prompt" and not value.strip():
        raise where.expected(key, "a non-empty prompt", value)
    return value


def _shared_prefix(chosen: str, rejected: str, where: Where) -> tuple[str, str, str]:
    """Implicit prompt: the longest shared prefix, backed off to its last whitespace so that no
    word is split (`"The sky is blue."` / `"The sky is green."` -> `"The sky is"`, `" blue."`,
    `" green."`)."""
    n = next((k for k, (a, b) in enumerate(zip(chosen, rejected)) if a != b), None)
    n = min(len(chosen), len(rejected)) if n is None else n
    cut = next((k for k in range(n - 1, -1, -1) if chosen[k].isspace()), -1)
    prompt = chosen[: max(cut, 0)]
    if not prompt.strip():
        raise where.error(
            "no prompt field, and chosen and rejected share no prompt (no common prefix up to a "
            "word boundary)",
            "prompt",
        )
    for key, text in (("chosen", chosen), ("rejected", rejected)):
        if not text[cut:].strip():
            raise where.error(
                f"expected a reply after the shared prompt {describe(prompt)}, found none", key
            )
    return prompt, chosen[cut:], rejected[cut:]


# ---- conversational ------------------------------------------------------------------------
def _conversational(rec: dict[str, Any], where: Where) -> tuple[Messages, str, str]:
    chosen = _messages(rec.get("chosen"), "chosen", where)
    rejected = _messages(rec.get("rejected"), "rejected", where)
    key = "prompt" if rec.get("prompt") is not None else "messages"
    given = rec.get(key)
    if isinstance(given, list | dict):
        prompt = _messages(given, key, where)
        replies = [_reply(chosen, "chosen", where), _reply(rejected, "rejected", where)]
    elif given is None or isinstance(given, str):
        key = "chosen"
        prompt, replies = _split_shared(chosen, rejected, where)
    else:
        raise where.expected(key, "a list of messages (conversational format)", given)
    if prompt[-1]["role"] != "user":
        raise where.error(
            f"expected the prompt to end on a user turn, found {prompt[-1]['role']!r}",
            f"{key}[{len(prompt) - 1}].role",
        )
    return prompt, replies[0], replies[1]


def _messages(value: Any, name: str, where: Where) -> Messages:
    """`{"role", "content"}` messages (one object counts as a list of one), other keys dropped."""
    if value is None:
        raise where.error("missing; expected a list of messages (conversational format)", name)
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise where.expected(name, "a list of messages (conversational format)", value)
    if not value:
        raise where.error("expected at least one message, found an empty list", name)
    out = []
    for j, m in enumerate(value):
        field = f"{name}[{j}]"
        if not isinstance(m, dict):
            raise where.expected(field, "a message object with role and content", m)
        for k in ("role", "content"):
            if m.get(k) is None:
                raise where.error("missing; expected a string", f"{field}.{k}")
            if not isinstance(m[k], str):
                raise where.expected(f"{field}.{k}", "a string", m[k])
        if m["role"] not in ROLES:
            raise where.error(
                f"expected a role in {list(ROLES)}, found {m['role']!r}", f"{field}.role"
            )
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _reply(messages: Messages, name: str, where: Where, index: int | None = None) -> str:
    """The text of a reply: one assistant message (`messages[index]` of a conversation)."""
    if index is None:
        if len(messages) != 1:
            raise where.error(
                f"expected one assistant message, found {len(messages)} messages", name
            )
        index = 0
    m, field = messages[index], f"{name}[{index}]"
    if m["role"] != "assistant":
        raise where.error(f"expected an assistant reply, found role {m['role']!r}", f"{field}.role")
    if not m["content"].strip():
        raise where.error("expected a non-empty reply, found only whitespace", f"{field}.content")
    return m["content"]


def _split_shared(chosen: Messages, rejected: Messages, where: Where) -> tuple[Messages, list[str]]:
    """Implicit prompt: every turn but the last, the same on both sides."""
    for name, conv in (("chosen", chosen), ("rejected", rejected)):
        if len(conv) < 2:
            raise where.error(
                "no prompt field, so expected a whole conversation (prompt turns, then the reply), "
                f"found {len(conv)} message",
                name,
            )
    prompt = chosen[:-1]
    if rejected[:-1] != prompt:
        at = next(
            (j for j, (a, b) in enumerate(zip(prompt, rejected)) if a != b),
            min(len(prompt), len(rejected) - 1),
        )
        raise where.error(
            "expected the same prompt turns as chosen (all but the last message), found a "
            "different one",
            f"rejected[{at}]",
        )
    replies = [
        _reply(c, n, where, len(c) - 1) for n, c in (("chosen", chosen), ("rejected", rejected))
    ]
    return prompt, replies
