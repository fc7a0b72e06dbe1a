"""Character-level tokenizers that built-in tasks create and save in standard `tokenizer.json` form."""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)


def build_char_tokenizer(alphabet: str) -> PreTrainedTokenizerFast:
    """A tokenizer with one token per character of `alphabet` plus pad/bos/eos/unk.

    It is a real `tokenizers` WordLevel model, so `save_pretrained` writes a `tokenizer.json`
    that `AutoTokenizer.from_pretrained` loads back without this package.
    """
    chars = list(dict.fromkeys(alphabet))
    if not chars:
        raise ValueError("build_char_tokenizer: the alphabet is empty")
    clash = [c for c in chars if c in "".join(SPECIAL_TOKENS) and len(c) > 1]
    if clash:
        raise ValueError(
            f"build_char_tokenizer: alphabet entries {clash} clash with special tokens"
        )
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for c in chars:
        vocab.setdefault(c, len(vocab))
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    # Every character is its own pre-token; the decoder glues tokens back without spaces.
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    return fast_tokenizer(core)


def fast_tokenizer(core: Tokenizer) -> PreTrainedTokenizerFast:
    """A transformers tokenizer around `core` with the game's special tokens, right padding and
    left truncation (prompts keep their end)."""
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        padding_side="right",
        truncation_side="left",
    )
