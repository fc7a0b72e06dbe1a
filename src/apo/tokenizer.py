"""The tokenizers built-in tasks create (character- or word-level), saved in standard
`tokenizer.json` form: for your own task, return one of these from `build_tokenizer`."""

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


def build_word_tokenizer(words: list[str] | tuple[str, ...]) -> PreTrainedTokenizerFast:
    """A tokenizer with one token per word of `words` plus pad/bos/eos/unk: texts are split on
    whitespace, and decoding joins the tokens with single spaces (`"ka po"` -> 2 tokens ->
    `"ka po"`). Words must not contain whitespace; an unknown word becomes `<unk>`.

    Like `build_char_tokenizer`, it saves as a `tokenizer.json` that `AutoTokenizer` loads back
    without this package."""
    vocab_words = list(dict.fromkeys(words))
    if not vocab_words:
        raise ValueError("build_word_tokenizer: no words")
    bad = [w for w in vocab_words if not w or any(c.isspace() for c in w) or w in SPECIAL_TOKENS]
    if bad:
        raise ValueError(
            f"build_word_tokenizer: words must be non-empty, without spaces and "
            f"not a special token, got {bad[:5]}"
        )
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for w in vocab_words:
        vocab.setdefault(w, len(vocab))
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # no decoder: tokens are joined with single spaces
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
