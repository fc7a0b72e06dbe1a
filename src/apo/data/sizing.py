"""Token budgets sized from the game's own texts: `data.max_prompt_len`, `data.max_len` and
`policy.generation.max_new_tokens` left `null` are derived from the data before anything runs,
so that nothing is cut: the longest prompt (with bos), the longest golden answer or
demonstration (with eos), and their sum plus one (the eos appended to a sample the policy cut
at its budget). Set values are kept, and checked like any other (`apo.data.budgets`)."""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig, open_dict
from transformers import PreTrainedTokenizerBase

from apo.data.game_data import GameData

log = logging.getLogger(__name__)


def _n(tok: PreTrainedTokenizerBase, text: str) -> int:
    return len(tok(text, add_special_tokens=False)["input_ids"])


def resolve_sizes(cfg: DictConfig, data: GameData, tok: PreTrainedTokenizerBase) -> dict[str, Any]:
    """Fill the budgets `cfg` leaves null (in place); return what was derived."""
    d, gen = cfg.data, cfg.policy.generation
    derived: dict[str, Any] = {}
    bos = 1 if tok.bos_token_id is not None else 0
    if d.max_prompt_len is None:
        prompts = {p for p, _ in data.sft} | set(data.rm_prompts) | set(data.policy_prompts)
        prompts |= {it.prompt for it in data.human_train + data.human_val} | set(data.test_prompts)
        derived["data.max_prompt_len"] = bos + max(_n(tok, p) for p in prompts)
    prompt = derived.get("data.max_prompt_len", d.max_prompt_len)
    if gen.max_new_tokens is None:
        if d.max_len is not None:  # the room a set sequence budget leaves
            derived["policy.generation.max_new_tokens"] = int(d.max_len) - int(prompt) - 1
        else:
            said = [r for _, r in data.sft] + [data.golden[p] for p in data.rm_prompts]
            derived["policy.generation.max_new_tokens"] = 1 + max(_n(tok, t) for t in said)
    new = derived.get("policy.generation.max_new_tokens", gen.max_new_tokens)
    if d.max_len is None:
        derived["data.max_len"] = int(prompt) + int(new) + 1
    if derived:
        with open_dict(cfg):
            for key, value in derived.items():
                node, _, leaf = key.rpartition(".")
                target = cfg
                for part in node.split("."):
                    target = target[part]
                target[leaf] = int(value)
        log.info("token budgets sized from the data: %s", derived)
    return derived
