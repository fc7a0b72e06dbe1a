"""Token budgets sized from the game's own texts: `data.max_prompt_len`, `data.max_len` and
`policy.generation.max_new_tokens` left `null` are derived from the data before anything runs,
so that nothing is cut: the longest prompt (with bos), the longest golden answer or
demonstration (with eos), and their sum plus one (the eos appended to a sample the policy cut
at its budget) — or the longest human-pair response, where one is longer (the RM reads those
too; a task's compared responses may be longer than anything the policy must say). Set values are kept, and checked like any other (`apo.data.budgets`)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, open_dict
from transformers import PreTrainedTokenizerBase

from apo.data.collate import Encoder
from apo.data.game_data import GameData

log = logging.getLogger(__name__)


def _n(tok: PreTrainedTokenizerBase, text: str) -> int:
    return len(tok(text, add_special_tokens=False)["input_ids"])


def _tokens_per_token(policy: PreTrainedTokenizerBase, rm: PreTrainedTokenizerBase) -> int:
    """The most RM tokens one policy token's text takes (1 for one tokenizer): a sample of n
    policy tokens is taken to need up to n times that in the RM's."""
    if policy is rm:
        return 1
    special = set(policy.all_special_ids)
    texts = sorted({policy.decode([i]) for i in range(len(policy)) if i not in special} - {""})
    ids = rm(texts, add_special_tokens=False)["input_ids"] if texts else []
    return max((len(x) for x in ids), default=1)


def _encoder(cfg: DictConfig, player: str, tok: PreTrainedTokenizerBase) -> Encoder:
    """The player's prompt format with budgets too large to cut anything (lengths only)."""
    p = cfg[player]
    fmt = {k: p.get(k) for k in ("prompt_template", "separator", "chat_template")}
    return Encoder(tok, 10**9, 10**9, **fmt)


def resolve_sizes(
    cfg: DictConfig,
    data: GameData,
    tokenizers: PreTrainedTokenizerBase | Mapping[str, PreTrainedTokenizerBase],
) -> dict[str, Any]:
    """Fill the budgets `cfg` leaves null (in place); return what was derived.

    `tokenizers` maps each player (`policy`, `rm`) to its tokenizer (one tokenizer: both);
    a prompt's length is the longest of its renderings (template, chat template, bos and
    separator of each player), a response's in the policy's tokens for its budget, and in
    either player's for the sequence budget."""
    if not isinstance(tokenizers, Mapping):
        tokenizers = {"policy": tokenizers, "rm": tokenizers}
    enc = {k: _encoder(cfg, k, tok) for k, tok in tokenizers.items()}
    d, gen = cfg.data, cfg.policy.generation
    derived: dict[str, Any] = {}
    if d.max_prompt_len is None:
        prompts = {p for p, _ in data.sft} | set(data.rm_prompts) | set(data.policy_prompts)
        prompts |= {it.prompt for it in data.human_train + data.human_val} | set(data.test_prompts)
        derived["data.max_prompt_len"] = max(
            e.prompt_length(p, data.messages.get(p)) for e in enc.values() for p in prompts
        )
    prompt = derived.get("data.max_prompt_len", d.max_prompt_len)
    said = [r for _, r in data.sft] + [data.golden[p] for p in data.rm_prompts]
    if gen.max_new_tokens is None:
        if d.max_len is not None:  # the room a set sequence budget leaves
            if int(d.max_len) < int(prompt) + 2:
                from apo.validation import ConfigError

                raise ConfigError(
                    f"data.max_len={d.max_len}: below data.max_prompt_len ({prompt}) + 2, so it "
                    "leaves no room for a response (policy.generation.max_new_tokens is sized "
                    "from it); raise data.max_len or leave it null"
                )
            derived["policy.generation.max_new_tokens"] = int(d.max_len) - int(prompt) - 1
        else:
            derived["policy.generation.max_new_tokens"] = 1 + max(
                _n(enc["policy"].tok, t) for t in said
            )
    new = derived.get("policy.generation.max_new_tokens", gen.max_new_tokens)
    if d.max_len is None:
        # the RM re-encodes the policy's texts: the longer of the two encodings, and eos
        rm_new = int(new) * _tokens_per_token(enc["policy"].tok, enc["rm"].tok)
        heard = [r for it in data.human_train + data.human_val for r in it.responses]
        rm_new = max(rm_new, 1 + max((_n(enc["rm"].tok, t) for t in said + heard), default=0))
        derived["data.max_len"] = int(prompt) + max(int(new), rm_new) + 1
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
