"""RewardModule pooling and loss wiring, checked against the per-token values of its own head."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig

from apo.modules.backbones import build_sequence_classifier
from apo.modules.reward import RewardModule
from apo.tasks import SortTask

TOK = SortTask().build_tokenizer()


def _module(pooling: str, **kw) -> RewardModule:
    cfg = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    model = build_sequence_classifier(cfg, TOK, seed=0).eval()
    return RewardModule(
        model, optimizer=torch.optim.SGD, pooling=pooling, eos_token_id=TOK.eos_token_id, **kw
    )


def _batch():
    bos, eos, pad = TOK.bos_token_id, TOK.eos_token_id, TOK.pad_token_id
    digits = TOK("381=138", add_special_tokens=False)["input_ids"]
    # row 0: bos 381=138 eos pad pad ; row 1: bos 381=13 eos 8 (an eos inside, then a token)
    row0 = [bos, *digits, eos, pad, pad]
    row1 = [bos, *digits[:6], eos, digits[6], pad, pad]
    ids = torch.tensor([row0, row1])
    att = (ids != pad).long()
    return ids, att


def _token_values(m: RewardModule, ids, att):
    hidden = m.model.base_model(input_ids=ids, attention_mask=att)[0]
    return m.model.score(hidden).squeeze(-1).float()


@pytest.mark.parametrize("pooling", ["last", "eos", "average", "max"])
def test_pooling_picks_the_documented_tokens(pooling: str):
    m = _module(pooling)
    ids, att = _batch()
    with torch.no_grad():
        v = _token_values(m, ids, att)
        got = m(ids, att)
    n0, n1 = int(att[0].sum()), int(att[1].sum())
    expected = {
        "last": [v[0, n0 - 1], v[1, n1 - 1]],
        "eos": [v[0, 8], v[1, 7]],  # the first eos after position 0
        "average": [v[0, :n0].mean(), v[1, :n1].mean()],
        "max": [v[0, :n0].max(), v[1, :n1].max()],
    }[pooling]
    torch.testing.assert_close(got, torch.stack(expected))


def test_last_pooling_matches_transformers_sequence_classifier():
    # the export is loadable by transformers; its own forward pools the same token
    m = _module("last")
    ids, att = _batch()
    ids, att = ids[:1], att[:1]
    with torch.no_grad():
        torch.testing.assert_close(
            m(ids, att), m.model(input_ids=ids, attention_mask=att).logits[:, 0].float()
        )


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="pooling"):
        _module("mean")
    with pytest.raises(ValueError, match="apo_loss"):
        _module("last", apo_loss="hinge")
    with pytest.raises(ValueError, match="human_loss"):
        _module("last", human_loss="nope")
