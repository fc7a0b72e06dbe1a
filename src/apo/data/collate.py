"""Tokenised items and the collators that pad them into `[B, k, T]` listwise batches."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerBase


class ListDataset(Dataset):
    """A map-style dataset over an in-memory list."""

    def __init__(self, items: list[Any]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Any:
        return self.items[i]


class Encoder:
    """Turns prompt and response texts into token ids: `[bos] prompt [separator]` and
    `response [eos]`.

    `prompt_template` (e.g. `"Human: {prompt}\n\nAssistant:"`) wraps each prompt text before
    encoding (`{prompt}` is replaced; other braces stay as they are); `separator` is text encoded
    after the prompt, e.g. a special token of the tokenizer, kept even when the prompt is truncated.

    `chat_template` says when the tokenizer's own chat template renders a prompt
    (`apply_chat_template(messages, add_generation_prompt=True)`) instead of `prompt_template`:
    `"auto"` for prompts that come with their messages (conversational data) when the tokenizer
    has a chat template; `True` for every prompt (a text prompt becomes one user turn), and the
    tokenizer must have one; `False` or `None` never.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        max_prompt_len: int,
        max_len: int,
        prompt_template: str | None = None,
        separator: str | None = None,
        chat_template: bool | str | None = None,
    ) -> None:
        self.tok = tokenizer
        self.max_prompt_len, self.max_len = max_prompt_len, max_len
        for name in ("pad_token_id", "eos_token_id"):
            if getattr(tokenizer, name) is None:
                raise ValueError(f"the tokenizer has no {name[:-3]} token; set one in its config")
        if prompt_template is not None and "{prompt}" not in prompt_template:
            raise ValueError(f"prompt_template {prompt_template!r} has no {{prompt}} placeholder")
        self.prompt_template = prompt_template
        if chat_template not in ("auto", True, False, None):
            raise ValueError(f"chat_template must be auto, true or false, got {chat_template!r}")
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if chat_template is True and not has_template:
            raise ValueError(
                "chat_template=true, but the tokenizer has no chat template; set chat_template "
                "to auto or false, or give the checkpoint's tokenizer one"
            )
        #: when the chat template renders: every prompt, prompts with messages, or never
        self.chat: str | None = None
        if chat_template is True:
            self.chat = "all"
        elif chat_template == "auto" and has_template:
            self.chat = "messages"
        self.sep_ids = (
            tokenizer(separator, add_special_tokens=False)["input_ids"] if separator else []
        )
        self.bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        if max_prompt_len - len(self.bos) - len(self.sep_ids) < 1:
            raise ValueError(f"max_prompt_len={max_prompt_len} leaves no room for the prompt text")

    def render(self, text: str, messages: Sequence[dict[str, str]] | None = None) -> str:
        """The prompt as the model reads it, before bos and the separator."""
        if self.chat == "all" or (self.chat == "messages" and messages is not None):
            turns = list(messages) if messages is not None else [{"role": "user", "content": text}]
            out = self.tok.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
            # Many templates open with the bos token's text; the ids get bos from `prompt`.
            bos = self.tok.bos_token
            if self.bos and bos and out.startswith(bos):
                out = out[len(bos) :]
            return out
        if self.prompt_template is not None:
            return self.prompt_template.replace("{prompt}", text)
        return text

    def prompt(self, text: str, messages: Sequence[dict[str, str]] | None = None) -> list[int]:
        """`text`'s ids; `messages` is the same prompt as a conversation, if it has one."""
        ids = self.tok(self.render(text, messages), add_special_tokens=False)["input_ids"]
        # Left truncation keeps the end of the prompt, where the question is.
        budget = self.max_prompt_len - len(self.bos) - len(self.sep_ids)
        return self.bos + ids[-budget:] + self.sep_ids

    def prompt_length(self, text: str, messages: Sequence[dict[str, str]] | None = None) -> int:
        """The prompt's length before left truncation (bos, the rendered text, the separator)."""
        ids = self.tok(self.render(text, messages), add_special_tokens=False)["input_ids"]
        return len(self.bos) + len(ids) + len(self.sep_ids)

    def response(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"] + [self.tok.eos_token_id]

    def sequence(self, prompt_ids: list[int], response_ids: list[int]) -> list[int]:
        return (prompt_ids + response_ids)[: self.max_len]

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)


def pad_2d(
    rows: list[list[int]], pad_id: int, left: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad ragged rows into `(ids, attention_mask)`; left padding for generation prompts."""
    width = max((len(r) for r in rows), default=1) or 1
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    att = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if not r:
            continue
        sl = slice(width - len(r), width) if left else slice(0, len(r))
        ids[i, sl] = torch.tensor(r, dtype=torch.long)
        att[i, sl] = 1
    return ids, att


class PromptCollator:
    """Items `{"index", "prompt_ids"}` -> left-padded prompts for generation."""

    def __init__(self, pad_id: int, num_samples: int, op: str = "generate") -> None:
        self.pad_id, self.num_samples, self.op = pad_id, num_samples, op

    def __call__(self, items: list[dict]) -> dict:
        ids, att = pad_2d([it["prompt_ids"] for it in items], self.pad_id, left=True)
        return {
            "op": self.op,
            "num_samples": self.num_samples,
            "index": torch.tensor([it["index"] for it in items]),
            "input_ids": ids,
            "attention_mask": att,
        }


class ListwiseCollator:
    """Items `{"index", "prompt_len", "seqs": [k lists], "scores": [k], "ref_logps"?: [k],
    "pad_id"?}` ->

    `input_ids, attention_mask, loss_mask [B, k, T]` (loss_mask marks response tokens),
    `scores, mask [B, k]`, `ref_logps [B, k]`, `margin [B]` and `smoothing [B]` when the items carry them. Items with fewer than
    `k_max` sequences are padded with masked-out empty rows. Padding uses the items' own `pad_id`
    (that of the tokenizer that encoded them) when they carry one.
    """

    def __init__(self, pad_id: int, op: str = "train") -> None:
        self.pad_id, self.op = pad_id, op

    def __call__(self, items: list[dict]) -> dict:
        k = max(len(it["seqs"]) for it in items)
        width = max(len(s) for it in items for s in it["seqs"])
        B = len(items)
        pad_id = items[0].get("pad_id", self.pad_id)
        # an item's sequences fill its first rows; every sequence's tokens in one tensor, written
        # into those rows through the mask (row-major: item by item, in order)
        mask = torch.arange(k)[None] < torch.tensor([len(it["seqs"]) for it in items])[:, None]
        seqs = [s for it in items for s in it["seqs"]]
        lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
        prompt = torch.tensor([it["prompt_len"] for it in items for _ in it["seqs"]])
        t = torch.arange(width)[None]
        filled = t < lengths[:, None]  # [sequences, width]
        sub = torch.full((len(seqs), width), pad_id, dtype=torch.long)
        sub[filled] = torch.tensor([x for s in seqs for x in s], dtype=torch.long)
        ids = torch.full((B, k, width), pad_id, dtype=torch.long)
        att = torch.zeros((B, k, width), dtype=torch.long)
        loss_mask = torch.zeros((B, k, width), dtype=torch.long)
        ids[mask], att[mask] = sub, filled.long()
        loss_mask[mask] = (filled & (t >= prompt[:, None])).long()
        scores = torch.zeros((B, k), dtype=torch.float32)
        has_ref = all("ref_logps" in it for it in items)
        ref = torch.zeros((B, k), dtype=torch.float32)
        for b, it in enumerate(items):
            scores[b, : len(it["scores"])] = torch.tensor(it["scores"], dtype=torch.float32)
            if has_ref:
                ref[b, : len(it["ref_logps"])] = torch.tensor(it["ref_logps"], dtype=torch.float32)
        out = {
            "op": self.op,
            "index": torch.tensor([it["index"] for it in items]),
            "input_ids": ids,
            "attention_mask": att,
            "loss_mask": loss_mask,
            "scores": scores,
            "mask": mask,
        }
        if has_ref:
            out["ref_logps"] = ref
        for key in ("margin", "smoothing"):  # per-item margins and smoothing (label denoising)
            if any(key in it for it in items):
                out[key] = torch.tensor([float(it.get(key, 0.0)) for it in items])
        return out
