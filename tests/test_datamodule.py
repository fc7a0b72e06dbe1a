"""The DataModule encodes the game's fixed human pairs once, not at every RM fit."""

from __future__ import annotations

from apo.game.loop import GameLoop


def test_human_pairs_are_encoded_once_with_the_same_items(tiny_cfg, monkeypatch):
    dm = GameLoop(tiny_cfg).dm
    pairs = dm.data.human_train
    first = dm.human_items(pairs, "rm")
    enc, calls = dm.encoders["rm"], []
    encode = enc.response
    monkeypatch.setattr(enc, "response", lambda text: calls.append(text) or encode(text))
    again = dm.human_items(pairs, "rm")
    assert calls == [] and again == first  # read back, not encoded again
    fresh = [
        dm.text_item(i, it.prompt, it.responses, it.scores, "rm", it.margin, it.smoothing)
        for i, it in enumerate(pairs)
    ]
    assert len(calls) == sum(len(it.responses) for it in pairs) and fresh == first
    again[0]["seqs"][0].append(-1)  # an item's sequences are its own
    assert dm.human_items(pairs, "rm")[0]["seqs"][0] == first[0]["seqs"][0]
