"""The DataModule both players share: fixed data, plus the policy's samples, regenerated each round."""

from __future__ import annotations

from array import array
from typing import Any

import lightning as L
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from apo.data.batching import BatchedDataset, budget_batches
from apo.data.collate import Encoder, ListDataset, ListwiseCollator, PromptCollator
from apo.data.game_data import GameData, ListwiseItem
from apo.distributed import predict_gathered


class GameDataModule(L.LightningDataModule):
    """The data both players share: the game's fixed data, the loaders of every fit and
    prediction, and the policy's samples, regenerated each round.

    It holds no per-fit switches: each loader is built from explicit arguments (the round's
    samples, the objective's selection), and the phases hand the loaders to the Trainers.
    `regenerate` draws K fresh samples per prompt of the RM and policy splits through a Trainer
    (sharded over ranks and gathered, so every rank holds the same samples) and returns them; the
    game state keeps them.

    Each player's items are encoded with that player's tokenizer (`player="policy"` or `"rm"` in
    the item builders; the default is the policy's). Texts are the interface between the players:
    when the RM has its own tokenizer, the policy's sampled ids are decoded and the RM re-encodes
    the text; when both share one tokenizer object, the RM reads the sampled ids directly.

    Args:
        data: the game's fixed data.
        tokenizer: the policy's tokenizer (and the RM's, unless `rm_tokenizer` is given).
        batch_size: per-loader batch sizes, keys `sft`, `rm`, `apo`, `policy` (items),
            `predict` (sequences per prediction batch) and optionally `predict_tokens` (padded
            tokens per prediction batch).
        max_prompt_len, max_len: token budgets (prompts are truncated on the left).
        seed: shuffling seed.
        rm_tokenizer: the RM's tokenizer when it differs from the policy's.
        prompt_format: per player (`policy`, `rm`), `Encoder` settings `prompt_template`,
            `separator` and `chat_template`. Prompts with a conversation in `data.messages` are
            encoded from it, so each player's chat template sees the roles.
    """

    def __init__(
        self,
        data: GameData,
        tokenizer: PreTrainedTokenizerBase,
        batch_size: dict[str, int],
        max_prompt_len: int,
        max_len: int,
        seed: int,
        num_workers: int = 0,
        rm_tokenizer: PreTrainedTokenizerBase | None = None,
        prompt_format: dict[str, dict[str, str | None]] | None = None,
    ) -> None:
        super().__init__()
        self.data, self.tokenizer = data, tokenizer
        tokenizers = {"policy": tokenizer, "rm": rm_tokenizer or tokenizer}
        fmt = prompt_format or {}
        self.encoders = {
            player: _encoder(player, tok, max_prompt_len, max_len, fmt.get(player) or {})
            for player, tok in tokenizers.items()
        }
        self.enc = self.encoders["policy"]
        #: the RM reads the policy's sampled ids as they are (else it re-encodes their text)
        self.shared_tokenizer = tokenizers["rm"] is tokenizer
        self.batch_size = dict(batch_size)
        self.seed, self.num_workers = seed, num_workers
        self._prompt_ids: dict[tuple[str, str], list[int]] = {}
        #: the human pairs' responses, encoded once (every RM fit reads them again), as 4-byte
        #: arrays: a list of Python ints would take ~8x the memory for the game's whole run
        self._response_ids: dict[tuple[str, str], array] = {}

    # ---- encoding ---------------------------------------------------------------------------
    def prompt_ids(self, prompt: str, player: str = "policy") -> list[int]:
        key = (player, prompt)
        if key not in self._prompt_ids:
            messages = self.data.messages.get(prompt)
            self._prompt_ids[key] = self.encoders[player].prompt(prompt, messages)
        return self._prompt_ids[key]

    def response_ids(self, text: str, player: str = "policy", keep: bool = False) -> list[int]:
        """A response's token ids (its end-of-sequence token included); `keep`: encoded once
        for the game (the fixed data's texts)."""
        if not keep:
            return self.encoders[player].response(text)
        key = (player, text)
        if key not in self._response_ids:
            self._response_ids[key] = array("i", self.encoders[player].response(text))
        return self._response_ids[key].tolist()

    def text_item(
        self,
        index: int,
        prompt: str,
        responses: list[str],
        scores: list[float],
        player: str = "policy",
        margin: float = 0.0,
        smoothing: float = 0.0,
        keep: bool = False,
    ) -> dict:
        enc = self.encoders[player]
        p = self.prompt_ids(prompt, player)
        seqs = [enc.sequence(p, self.response_ids(r, player, keep)) for r in responses]
        item = _item(index, p, seqs, scores, enc)
        if margin:
            item["margin"] = margin
        if smoothing:
            item["smoothing"] = smoothing
        return item

    def ids_item(
        self,
        index: int,
        prompt: str,
        responses: list[list[int]],
        scores: list[float],
        player: str = "policy",
    ) -> dict:
        """An item over the policy's sampled token ids, for `player`."""
        if player != "policy" and not self.shared_tokenizer:
            texts = [self.enc.decode(r) for r in responses]
            return self.text_item(index, prompt, texts, scores, player)
        enc = self.encoders[player]
        p = self.prompt_ids(prompt, player)
        eos = enc.tok.eos_token_id
        seqs = [enc.sequence(p, r + [eos]) for r in responses]
        return _item(index, p, seqs, scores, enc)

    def human_items(self, items: list[ListwiseItem], player: str = "policy") -> list[dict]:
        return [
            self.text_item(
                i, it.prompt, it.responses, it.scores, player, it.margin, it.smoothing, keep=True
            )
            for i, it in enumerate(items)
        ]

    def text_items(self, records: list[dict[str, Any]], player: str = "rm") -> list[dict]:
        """`player`'s listwise items over the `texts` of each record (`prompt`, `texts`), to
        score: the texts are encoded here, no scores attached."""
        return [
            self.text_item(i, rec["prompt"], rec["texts"], [0.0] * len(rec["texts"]), player)
            for i, rec in enumerate(records)
        ]

    def sample_items(self, records: list[dict[str, Any]], player: str = "policy") -> list[dict]:
        """`player`'s listwise items over the samples of each record (scores = RM scores when
        present)."""
        return [
            self.ids_item(
                i,
                rec["prompt"],
                rec["responses"],
                rec.get("rm_scores", [0.0] * len(rec["responses"])),
                player,
            )
            for i, rec in enumerate(records)
        ]

    def apo_items(self, records: list[dict[str, Any]]) -> list[dict]:
        """`[golden, sample_1..K]` per record of the RM split, scores `[1, 0..0]` (APO Eq. 8)."""
        items = []
        enc = self.encoders["rm"]
        for i, rec in enumerate(records):
            item = self.ids_item(i, rec["prompt"], rec["responses"], [], "rm")
            gold = enc.response(self.data.golden[rec["prompt"]])
            item["seqs"] = [enc.sequence(self.prompt_ids(rec["prompt"], "rm"), gold)] + item["seqs"]
            item["scores"] = [1.0] + [0.0] * len(rec["responses"])
            items.append(item)
        return items

    def policy_items(
        self, selected: list[dict[str, Any]], ref_logps: list[list[float]] | None = None
    ) -> list[dict]:
        """The policy fit's items over the objective's selected samples, with the reference
        log-likelihoods of those samples when the objective needs them."""
        items = self.sample_items(selected)
        if ref_logps is not None:
            if len(ref_logps) != len(items):
                raise ValueError(
                    f"{len(ref_logps)} rows of reference log-probs for {len(items)} items"
                )
            for it, ref in zip(items, ref_logps):
                it["ref_logps"] = ref
        return items

    # ---- loaders ------------------------------------------------------------------------------
    def _loader(self, items: list, batch_size: int, collate, shuffle: bool) -> DataLoader:
        return DataLoader(
            ListDataset(items),
            batch_size=batch_size,
            shuffle=shuffle,
            collate_fn=collate,
            num_workers=self.num_workers,
        )

    def listwise_loader(
        self, items: list[dict], op: str, batch_size: int | None = None, shuffle: bool = False
    ) -> DataLoader:
        """Batches of `batch_size` items (fits), or without one prediction batches of at most
        `predict` sequences and `predict_tokens` padded tokens, in item order."""
        collate = ListwiseCollator(self.tokenizer.pad_token_id, op)
        if batch_size is not None:
            return self._loader(items, batch_size, collate, shuffle)
        sizes = [(len(it["seqs"]), max(len(s) for s in it["seqs"])) for it in items]
        batches = budget_batches(
            sizes, self.batch_size["predict"], self.batch_size.get("predict_tokens")
        )
        return DataLoader(
            BatchedDataset(items, batches),
            batch_size=None,
            collate_fn=collate,
            num_workers=self.num_workers,
        )

    def prompt_loader(self, prompts: list[str], k: int) -> DataLoader:
        """Generation batches of `predict // k` prompts (counted in sequences), bucketed by
        length: prompts sorted by their length (stable) share a batch, so little left padding
        is computed; the predictions come back in prompt order (by `index`)."""
        items = [{"index": i, "prompt_ids": self.prompt_ids(p)} for i, p in enumerate(prompts)]
        items.sort(key=lambda it: len(it["prompt_ids"]))
        bs = max(1, self.batch_size["predict"] // max(k, 1))
        return self._loader(items, bs, PromptCollator(self.tokenizer.pad_token_id, k), False)

    def sft_loader(self) -> DataLoader:
        """The warm start's demonstrations."""
        items = [self.text_item(i, p, [r], [0.0]) for i, (p, r) in enumerate(self.data.sft)]
        return self.listwise_loader(items, "train", self.batch_size["sft"], shuffle=True)

    def rm_loader(self, apo_records: list[dict[str, Any]] | None = None) -> CombinedLoader:
        """The RM fit's batches: `human` items, and `apo` items over `apo_records` (this round's
        samples of the RM split) when given."""
        loaders = {
            "human": self.listwise_loader(
                self.human_items(self.data.human_train, "rm"),
                "train",
                self.batch_size["rm"],
                shuffle=True,
            )
        }
        if apo_records is not None:
            loaders["apo"] = self.listwise_loader(
                self.apo_items(apo_records), "train", self.batch_size["apo"], shuffle=True
            )
        return CombinedLoader(loaders, mode="max_size_cycle")

    def policy_loader(
        self, selected: list[dict[str, Any]], ref_logps: list[list[float]] | None = None
    ) -> DataLoader:
        """The policy fit's batches over the objective's selected samples."""
        return self.listwise_loader(
            self.policy_items(selected, ref_logps), "train", self.batch_size["policy"], shuffle=True
        )

    # ---- the policy's samples ------------------------------------------------------------------
    def regenerate(
        self, trainer: L.Trainer, policy: L.LightningModule, k: int
    ) -> dict[str, list[dict[str, Any]]]:
        """K fresh samples per prompt of the RM and policy splits: split -> records."""
        splits = {"rm": self.data.rm_prompts, "policy": self.data.policy_prompts}
        prompts = [p for ps in splits.values() for p in ps]
        recs = self.generate(trainer, policy, prompts, k)
        samples, start = {}, 0
        for split, ps in splits.items():
            samples[split] = recs[start : start + len(ps)]
            start += len(ps)
        return samples

    def generate(
        self, trainer: L.Trainer, policy: L.LightningModule, prompts: list[str], k: int
    ) -> list[dict[str, Any]]:
        """K samples per prompt from `policy` (as its sampling settings say): records with
        prompt, responses (ids) and texts."""
        recs = predict_gathered(trainer, policy, self.prompt_loader(prompts, k))
        return [
            {
                "prompt": p,
                "responses": r["responses"],
                "texts": [self.enc.decode(ids) for ids in r["responses"]],
            }
            for p, r in zip(prompts, recs)
        ]


def _encoder(
    player: str, tok: PreTrainedTokenizerBase, max_prompt_len: int, max_len: int, fmt: dict
) -> Encoder:
    try:
        return Encoder(tok, max_prompt_len, max_len, **fmt)
    except ValueError as e:
        # The settings are per player: say whose (`policy.chat_template=true`, ...).
        raise ValueError(f"{player}: {e}") from None


def _item(
    index: int, prompt_ids: list[int], seqs: list[list[int]], scores: list[float], enc: Encoder
) -> dict:
    """A listwise item as the collators read it."""
    return {
        "index": index,
        "prompt_len": len(prompt_ids),
        "seqs": seqs,
        "scores": scores,
        "pad_id": enc.tok.pad_token_id,
    }
