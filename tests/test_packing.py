"""Prefix sharing: an item's sequences packed into one row with a block mask give the hidden
states, log-probs, rewards and gradients of the separate rows; packing is skipped where it
would cost more or the attention cannot take the mask."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

from apo.modules import packing
from apo.modules.logps import sequence_logps
from apo.modules.packing import Packing, common_prefix, hidden_states

CFG = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=40,
    max_position_embeddings=64,
    pad_token_id=0,
)


def _rows(k: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded `[B * k, T]` rows, items of k: prompts of different lengths, an empty row,
    an item whose two sequences are identical, responses that share their first tokens."""
    g = torch.Generator().manual_seed(0)
    rnd = lambda n: torch.randint(3, 40, (n,), generator=g).tolist()  # noqa: E731
    items = []
    for b in range(4):
        prompt = rnd(4 + 2 * b)
        items.append([prompt + rnd(2 + j + b) for j in range(k)])
    items[1][2] = []  # an item with fewer sequences: a padded, empty row
    items[2][1] = list(items[2][0])  # two identical samples
    items[3] = [items[3][0][:8] + [7, 7] + r for r in (rnd(3), rnd(1), rnd(4))]  # shared start
    rows = [r for it in items for r in it]
    T = max(map(len, rows))
    ids, att = (
        torch.zeros(len(rows), T, dtype=torch.long),
        torch.zeros(len(rows), T, dtype=torch.long),
    )
    for i, r in enumerate(rows):
        ids[i, : len(r)], att[i, : len(r)] = torch.tensor(r, dtype=torch.long), 1
    return ids, att


@pytest.fixture
def always_pack(monkeypatch):
    monkeypatch.setattr(packing, "GAIN", 1e9)


def test_common_prefix_of_hand_made_items():
    ids = torch.tensor([[[5, 6, 7, 8], [5, 6, 9, 0]], [[1, 2, 0, 0], [0, 0, 0, 0]]])
    att = (ids != 0).long()
    att[1, 1] = 0  # an empty sequence does not shorten its item's prefix
    assert common_prefix(ids, att).tolist() == [2, 2]
    pack = Packing(ids, att)
    # item 0: the prefix [5, 6] once, then [7, 8] and [9]
    assert pack.ids[0, :5].tolist() == [5, 6, 7, 8, 9] and pack.item_length == [5, 2]
    assert pack.positions[0, :5].tolist() == [0, 1, 2, 3, 2]
    m = pack.mask[0, 0]
    assert m[4, :5].tolist() == [True, True, False, False, True]  # 9 sees the prefix and itself


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_hidden_states_and_gradients_equal_the_rows(always_pack, attn):
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**CFG))
    model.config._attn_implementation = attn
    dec = model.get_decoder()
    ids, att = _rows()
    valid = att.bool()
    plain = dec(input_ids=ids, attention_mask=att)[0]
    packed = hidden_states(dec, ids, att, group=3)
    torch.testing.assert_close(packed[valid], plain[valid], atol=1e-5, rtol=0)
    w = torch.randn_like(plain)
    (gp,) = torch.autograd.grad((plain * w)[valid].sum(), dec.layers[0].mlp.up_proj.weight)
    (gk,) = torch.autograd.grad((packed * w)[valid].sum(), dec.layers[0].mlp.up_proj.weight)
    torch.testing.assert_close(gk, gp, atol=1e-5, rtol=1e-4)


def test_log_probs_and_rewards_with_items_equal_those_of_the_rows(always_pack):
    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(**CFG))
    ids, att = _rows()
    loss_mask = att.clone()
    loss_mask[:, :4] = 0  # the shortest prompt: a response part in every row
    one = sequence_logps(lm, ids, att, loss_mask, entropy=True)
    grouped = sequence_logps(lm, ids, att, loss_mask, entropy=True, group=3)
    for a, b in zip(one, grouped):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=0)
    from apo.modules.reward import RewardModule

    rm = LlamaForSequenceClassification(LlamaConfig(**CFG, num_labels=1))
    module = RewardModule(rm, "last", 1)
    real = att.any(-1)  # an empty row's reward is masked out wherever it is used
    torch.testing.assert_close(
        module.member_rewards(ids, att, group=3)[:, real],
        module.member_rewards(ids, att)[:, real],
        atol=1e-5,
        rtol=0,
    )


def test_rows_run_as_rows_where_packing_costs_more_or_the_attention_takes_no_mask(monkeypatch):
    torch.manual_seed(0)
    dec = LlamaForCausalLM(LlamaConfig(**CFG)).get_decoder()
    calls = []
    forward = type(dec).forward

    def spy(self, *a, **k):
        calls.append(k["attention_mask"].dim())
        return forward(self, *a, **k)

    monkeypatch.setattr(type(dec), "forward", spy)
    ids, att = _rows()
    hidden_states(dec, ids, att, group=3)
    assert calls[-1] == 4  # these items share long prompts: packed
    # one-token prompts before long, different responses: packing would not pay
    long_ = torch.randint(3, 40, (6, 30))
    long_[:, 0] = 5
    hidden_states(dec, long_, torch.ones_like(long_), group=3)
    assert calls[-1] == 2
    dec.config._attn_implementation = "flash_attention_2"  # no custom masks
    assert packing._mask_kind(dec) is None


def test_rows_between_one_and_two_longest_items_where_they_leave_less_padding():
    """Items of 10, 6, 6, 6 and 6 tokens: rows of 10 hold one item each (50 slots), rows of 20
    two or three (36 slots, rows of 18); rows of 12 hold them in 36 slots with shorter rows, so
    less attention: the plan takes them."""
    lengths = [10, 6, 6, 6, 6]
    ids = torch.zeros(len(lengths), 1, 10, dtype=torch.long)
    att = torch.zeros_like(ids)
    for b, n in enumerate(lengths):
        ids[b, 0, :n], att[b, 0, :n] = torch.arange(3, 3 + n), 1
    assert packing.rows_of(lengths, 10)[2:] == (5, 10)
    assert packing.rows_of(lengths, 20)[2:] == (2, 18)
    pack = packing.plan(LlamaConfig(**CFG), ids, att)
    assert pack is not None and tuple(pack.ids.shape) == (3, 12)


@pytest.mark.parametrize("group", [1, 3])
def test_items_sharing_a_row_see_only_themselves(group):
    """Several items (or single sequences, as the warm start's demonstrations) in one row: each
    token's hidden state is still its own row's."""
    torch.manual_seed(0)
    dec = LlamaForCausalLM(LlamaConfig(**CFG)).get_decoder()
    ids, att = _rows()
    pack = Packing(ids.view(-1, group, ids.shape[1]), att.view(-1, group, ids.shape[1]), 10**4)
    assert pack.ids.shape[0] == 1  # every item in one row
    out = dec(input_ids=pack.ids, attention_mask=pack.mask, position_ids=pack.positions)[0]
    valid = att.bool()
    plain = dec(input_ids=ids, attention_mask=att)[0]
    torch.testing.assert_close(pack.unpack(out)[valid], plain[valid], atol=1e-5, rtol=0)
    # padding-free, and an item's prompt once: the row holds each distinct token once
    distinct = sum(pack.item_length)
    assert pack.ids.shape[1] == distinct
    assert distinct < int(att.sum()) if group > 1 else distinct == int(att.sum())
