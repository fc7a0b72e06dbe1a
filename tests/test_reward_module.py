"""RewardModule pooling and loss wiring, checked against the per-token values of its own head."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaConfig

from apo.game.players import reward_module
from apo.losses.rm_objective import RMObjective
from apo.modules.backbones import build_sequence_classifier
from apo.modules.reward import RewardModule
from tests.conftest import sort_task

TOK = sort_task().build_tokenizer()


def _module(pooling: str, objective: RMObjective | None = None) -> RewardModule:
    cfg = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    model = build_sequence_classifier(cfg, TOK, seed=0).eval()
    fit = {"optimizer": torch.optim.SGD, "log_prefix": "rm/train"} if objective else {}
    return reward_module(model, pooling, TOK.eos_token_id, objective, **fit)


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


def _objective(**kw) -> RMObjective:
    base = dict(
        kl_coeff=1.0,
        apo_coeff=1.0,
        apo_loss="ranking",
        samples_per_prompt=2,
        human_loss="bradley_terry",
        margin=0.0,
        centering_coeff=0.0,
        weighting="per_part",
    )
    return RMObjective(**{**base, **kw})


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="pooling"):
        _module("mean")
    with pytest.raises(ValueError, match="apo_loss"):
        _objective(apo_loss="hinge")
    with pytest.raises(ValueError, match="rm_loss"):
        _objective(human_loss="nope")
    with pytest.raises(ValueError, match="optimizer"):
        RewardModule(_module("last").model, "last", TOK.eos_token_id, _objective())


def nls(x: float) -> float:
    """-log sigmoid(x), by hand."""
    return math.log1p(math.exp(-x))


def test_rm_step_weighting_by_hand():
    """L = c_kl * BT(human) + c_c * centering(human) + (c_apo / K) * APO(gold vs samples), with
    BT the mean over human pairs and APO summed over an item's K pairs, averaged over items."""
    # two human pairs (chosen first) and two APO items [gold, s1, s2]
    r_h = torch.tensor([[1.0, 0.0], [0.5, 1.5]])
    s_h, m_h = torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.ones(2, 2, dtype=torch.bool)
    r_a = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 3.0]])
    s_a, m_a = torch.tensor([[1.0, 0.0, 0.0]] * 2), torch.ones(2, 3, dtype=torch.bool)
    bt = (nls(1.0) + nls(-1.0)) / 2
    centering = ((1.0 + 0.0) ** 2 + (0.5 + 1.5) ** 2) / 2
    apo = ((nls(1.0) + nls(2.0)) + (nls(-1.0) + nls(-3.0))) / 2
    obj = _objective(kl_coeff=0.7, apo_coeff=0.3, samples_per_prompt=2, centering_coeff=0.2)
    loss, parts = obj.loss(r_h, s_h, m_h, r_a, s_a, m_a)
    assert loss.item() == pytest.approx(0.7 * bt + 0.2 * centering + 0.3 / 2 * apo, rel=1e-6)
    assert parts["loss_human"].item() == pytest.approx(bt, rel=1e-6)
    assert parts["loss_apo"].item() == pytest.approx(apo, rel=1e-6)
    assert parts["loss_centering"].item() == pytest.approx(centering, rel=1e-6)
    # the baseline (c_apo = 0) ignores APO items; `diff` is linear in the reward gaps
    base, parts = _objective(apo_coeff=0.0).loss(r_h, s_h, m_h, r_a, s_a, m_a)
    assert base.item() == pytest.approx(bt, rel=1e-6) and "loss_apo" not in parts
    diff, _ = _objective(apo_loss="diff", samples_per_prompt=2).loss(r_h, s_h, m_h, r_a, s_a, m_a)
    assert diff.item() == pytest.approx(bt + 0.5 * ((-1.0 - 2.0) + (1.0 + 3.0)) / 2, rel=1e-6)


def test_training_step_logs_the_objective_on_its_own_rewards():
    """A real one-step fit: the logged loss is `objective.loss` on the module's own rewards."""
    import lightning as L

    objective = _objective(kl_coeff=0.5, apo_coeff=2.0, samples_per_prompt=2)
    m = _module("last", objective)
    ids, att = _batch()

    def listwise(k: int) -> dict:
        return {
            "input_ids": ids[None, :k].repeat(2, 1, 1),
            "attention_mask": att[None, :k].repeat(2, 1, 1),
            "scores": torch.tensor([[1.0, 0.0]]).repeat(2, 1)[:, :k],
            "mask": torch.ones(2, k, dtype=torch.bool),
        }

    batch = {"human": listwise(2), "apo": listwise(2)}
    with torch.no_grad():
        r_h, r_a = m.listwise_rewards(batch["human"]), m.listwise_rewards(batch["apo"])
    h, a = batch["human"], batch["apo"]
    want, parts = objective.loss(r_h, h["scores"], h["mask"], r_a, a["scores"], a["mask"])
    trainer = L.Trainer(
        max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    loader = torch.utils.data.DataLoader([batch], batch_size=None)
    trainer.fit(m, train_dataloaders=loader)
    got = trainer.callback_metrics
    assert float(got["rm/train/loss"]) == pytest.approx(want.item(), rel=1e-5)
    assert float(got["rm/train/loss_apo"]) == pytest.approx(parts["loss_apo"].item(), rel=1e-5)
