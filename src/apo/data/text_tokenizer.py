"""A small byte-level BPE tokenizer trained on a game's own training texts (for file data with
tiny models built from config; pretrained backbones bring their own tokenizer)."""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from apo.tokenizer import SPECIAL_TOKENS, fast_tokenizer


def train_bpe_tokenizer(
    texts: Iterable[str], vocab_size: int = 1024, min_frequency: int = 2
) -> PreTrainedTokenizerFast:
    """Byte-level BPE with pad/bos/eos/unk, trained on `texts`.

    Byte-level means every string encodes (no unknown characters) and decodes back exactly;
    `save_pretrained` writes a `tokenizer.json` that `AutoTokenizer` loads without this package.
    """
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + len(SPECIAL_TOKENS):
        raise ValueError(
            f"train_bpe_tokenizer: vocab_size must be at least {len(alphabet) + len(SPECIAL_TOKENS)} "
            f"(256 bytes + {len(SPECIAL_TOKENS)} special tokens), got {vocab_size}"
        )
    texts = [t for t in texts if t]
    if not texts:
        raise ValueError("train_bpe_tokenizer: no training text")
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=alphabet,
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer=trainer)
    return fast_tokenizer(core)
