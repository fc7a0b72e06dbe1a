"""ShareGPT-style DPO records (LLaMA-Factory's `dpo_en_demo.json`): a conversation that ends on
a user turn, and a chosen and a rejected reply, rendered into a prompt string."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apo.data.adapters.errors import Where, require_list, require_object
from apo.data.adapters.jsonio import read_records
from apo.data.game_data import ListwiseItem, Messages

#: ShareGPT roles as chat-template roles; a turn of any other role keeps the prompt text-only
CHAT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
}


def _hh_prefixes() -> dict[str, str]:
    return {
        "system": "\n\nSystem: ",
        "human": "\n\nHuman: ",
        "user": "\n\nHuman: ",
        "gpt": "\n\nAssistant: ",
        "assistant": "\n\nAssistant: ",
    }


@dataclass(frozen=True)
class ChatTemplate:
    """How turns become one prompt string: `prefixes[role] + value` per turn, then
    `generation_prompt`. The conversation must end on one of `user_roles`; chosen and rejected
    replies must come from one of `response_roles`.

    The default renders HH-RLHF's format (`"\\n\\nHuman: ...\\n\\nAssistant:"`), so models and
    prompts from both data sets look alike; a system message becomes a `"\\n\\nSystem: "` turn."""

    prefixes: Mapping[str, str] = field(default_factory=_hh_prefixes)
    user_roles: tuple[str, ...] = ("human", "user")
    response_roles: tuple[str, ...] = ("gpt", "assistant")
    generation_prompt: str = "\n\nAssistant:"

    def __post_init__(self) -> None:
        unknown = [r for r in (*self.user_roles, *self.response_roles) if r not in self.prefixes]
        if unknown:
            raise ValueError(f"ChatTemplate: roles {unknown} have no prefix in `prefixes`")

    def render(self, turns: list[tuple[str, str]]) -> str:
        """The prompt for `(role, value)` turns; roles are assumed valid (see `load_sharegpt`)."""
        return "".join(self.prefixes[role] + value for role, value in turns) + (
            self.generation_prompt
        )


HH_TEMPLATE = ChatTemplate()


def load_sharegpt(path: str | Path, template: ChatTemplate = HH_TEMPLATE) -> list[ListwiseItem]:
    """Items `(prompt, [chosen, rejected], [1.0, 0.0])` from a JSON array or JSON Lines file.

    Replies lose their leading whitespace, as in `load_hh_rlhf`. Anything off is an error, not a
    skip: an unknown role, a conversation that does not end on a user turn, a reply from a
    non-assistant role, an empty reply, or identical chosen and rejected replies (this format
    has no known quirks that would justify dropping records quietly). Each item keeps its
    conversation as chat messages (`ListwiseItem.messages`)."""
    path = Path(path)
    items = []
    for where, raw in read_records(path):
        rec = require_object(raw, where)
        turns = _conversation(rec, where, template)
        prompt = template.render(turns)
        chosen = _reply(rec, "chosen", where, template)
        rejected = _reply(rec, "rejected", where, template)
        if chosen == rejected:
            raise where.error(
                "expected different chosen and rejected replies, found the same", "rejected"
            )
        items.append(ListwiseItem(prompt, [chosen, rejected], [1.0, 0.0], _messages(turns)))
    # read_records refuses a file without records and every record loads or raises, so
    # `items` is never empty here.
    return items


def _messages(turns: list[tuple[str, str]]) -> Messages | None:
    """The turns as chat messages, for the players' chat templates."""
    if any(role not in CHAT_ROLES for role, _ in turns):
        return None
    return [{"role": CHAT_ROLES[role], "content": value} for role, value in turns]


def _conversation(
    rec: dict[str, Any], where: Where, template: ChatTemplate
) -> list[tuple[str, str]]:
    turns = require_list(rec, "conversations", where)
    if not turns:
        raise where.error("expected at least one turn, found an empty array", "conversations")
    out = [
        _turn(raw, f"conversations[{i}]", where, tuple(template.prefixes))
        for i, raw in enumerate(turns)
    ]
    if out[-1][0] not in template.user_roles:
        raise where.error(
            f"expected the conversation to end on a {' or '.join(template.user_roles)} turn, "
            f"found {out[-1][0]!r}",
            f"conversations[{len(out) - 1}].from",
        )
    return out


def _reply(rec: dict[str, Any], key: str, where: Where, template: ChatTemplate) -> str:
    if key not in rec:
        raise where.error("missing; expected an object with 'from' and 'value'", key)
    _, value = _turn(rec[key], key, where, template.response_roles)
    reply = value.lstrip()
    if not reply:
        raise where.error("expected a non-empty reply, found only whitespace", f"{key}.value")
    return reply


def _turn(raw: Any, name: str, where: Where, roles: tuple[str, ...]) -> tuple[str, str]:
    """`(role, value)` of one `{"from", "value"}` object, the role one of `roles`."""
    if not isinstance(raw, dict):
        raise where.expected(name, "an object with 'from' and 'value'", raw)
    for key in ("from", "value"):
        if key not in raw:
            raise where.error("missing; expected a string", f"{name}.{key}")
        if not isinstance(raw[key], str):
            raise where.expected(f"{name}.{key}", "a string", raw[key])
    if raw["from"] not in roles:
        raise where.error(
            f"expected a role in {list(roles)}, found {raw['from']!r}", f"{name}.from"
        )
    return raw["from"], raw["value"]
