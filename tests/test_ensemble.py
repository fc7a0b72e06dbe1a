"""An RM ensemble (`rm.ensemble`): bags, the fit of every member, its mean and spread, the
shaped reward `mean - kappa * std`, and a game that reports the members' disagreement."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, LlamaConfig

from apo.game.evaluation import Evaluator
from apo.game.players import reward_module
from apo.judges import TEST_RM_OBJECTIVE
from apo.modules.backbones import build_sequence_classifier
from apo.modules.ensemble import (
    RMEnsemble,
    bag_mask,
    member_scales,
    member_seeds,
    member_state,
    members,
    order_disagreement,
    z_spread,
)
from apo.rewards import penalised
from apo.train import train
from tests.conftest import compose_cfg, sort_task

TOK = sort_task().build_tokenizer()
#: a plain Bradley-Terry fit on human pairs
OBJECTIVE = TEST_RM_OBJECTIVE


def _member(seed: int):
    cfg = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    return build_sequence_classifier(cfg, TOK, seed=seed)


def _human_batch(n: int = 6):
    """`n` items of two responses each (the first preferred), item indices 0..n-1."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 14, (n, 2, 9), generator=g)
    att = torch.ones_like(ids)
    att[:, 1, 7:] = 0
    scores = torch.tensor([[1.0, 0.0]] * n)
    mask = torch.ones(n, 2)
    return {
        "input_ids": ids,
        "attention_mask": att,
        "scores": scores,
        "mask": mask,
        "index": torch.arange(n),
    }


def test_bags_are_fixed_per_item_and_member_and_never_empty():
    mask = torch.ones(400, 2)
    index = torch.arange(400)
    a = bag_mask(mask, index, member=0, seed=3, rate=0.632)
    assert torch.equal(a, bag_mask(mask, index, member=0, seed=3, rate=0.632))
    # served in another order, an item keeps its place in the bag
    perm = torch.randperm(400)
    assert torch.equal(bag_mask(mask, index[perm], 0, 3, 0.632), a[perm])
    kept = a[:, 0].mean().item()
    assert 0.55 < kept < 0.71, kept
    b = bag_mask(mask, index, member=1, seed=3, rate=0.632)
    assert not torch.equal(a, b)  # members bag differently
    assert torch.equal(bag_mask(mask, index, 1, 3, 0.0), mask)  # 0: every item
    # a batch whose one item is outside the bag keeps it
    out = next(i for i in range(400) if a[i, 0] == 0)
    one = bag_mask(torch.ones(1, 2), torch.tensor([out]), 0, 3, 0.632)
    assert torch.equal(one, torch.ones(1, 2))


def test_an_ensemble_loss_is_the_mean_of_its_members_losses_on_their_bags():
    ms = [_member(s) for s in member_seeds(1, 3)]
    module = reward_module(
        RMEnsemble(ms),
        "last",
        TOK.eos_token_id,
        OBJECTIVE,
        torch.optim.SGD,
        "rm/train",
        bootstrap=0.5,
        bag_seed=7,
    )
    module.log_dict = lambda *a, **k: None  # no Trainer attached here
    batch = _human_batch()
    loss = module.training_step({"human": batch}, 0)
    expected = []
    for i, m in enumerate(ms):
        single = reward_module(m, "last", TOK.eos_token_id)
        r = single.listwise_rewards(batch)
        mask = bag_mask(batch["mask"], batch["index"], i, 7, 0.5)
        expected.append(OBJECTIVE.loss(r, batch["scores"], mask)[0])
    assert torch.allclose(loss, torch.stack(expected).mean(), atol=1e-6)
    loss.backward()
    # every member gets a gradient
    assert all(m.score.weight.grad is not None and m.score.weight.grad.abs().sum() > 0 for m in ms)


def test_the_ensemble_scores_with_the_members_mean_and_std():
    ms = [_member(s) for s in (1, 2, 3)]
    module = reward_module(RMEnsemble(ms), "last", TOK.eos_token_id).eval()
    batch = _human_batch()
    with torch.no_grad():
        each = torch.stack(
            [reward_module(m, "last", TOK.eos_token_id).listwise_rewards(batch) for m in ms]
        )
        mean, sd = module.listwise_spread(batch)
        pred = module.predict_step(batch, 0)
    assert torch.allclose(mean, each.mean(0)) and torch.allclose(sd, each.std(0, unbiased=False))
    assert (sd > 0).all()
    assert pred[0]["rewards"] == pytest.approx(mean[0].tolist())
    assert pred[0]["rewards_std"] == pytest.approx(sd[0].tolist())
    # a single RM: no spread reported, its rewards unchanged
    single = reward_module(ms[0], "last", TOK.eos_token_id).eval()
    with torch.no_grad():
        one = single.predict_step(batch, 0)
    assert "rewards_std" not in one[0]
    assert one[0]["rewards"] == pytest.approx(each[0, 0].tolist())


def test_the_shaped_reward_subtracts_kappa_times_the_spread():
    assert penalised([1.0, 2.0], [0.5, 0.0], 2.0) == [0.0, 2.0]
    assert penalised([1.0, 2.0], [0.5, 0.1], 0.0) == [1.0, 2.0]
    t = penalised(torch.tensor([1.0, 2.0]), torch.tensor([0.5, 0.25]), 2.0)
    assert torch.equal(t, torch.tensor([0.0, 1.5]))
    with pytest.raises(ValueError, match="uncertainty_penalty"):
        penalised([1.0], [0.1], -1.0)
    with pytest.raises(ValueError, match="2 means but 1 stds"):
        penalised([1.0, 2.0], [0.1], 1.0)


def test_disagreement_metrics_on_hand_made_predictions():
    test = [{"rewards_std": [0.2, 0.4]}, {"rewards_std": [0.6]}]
    val = [{"rewards_std": [0.1, 0.3]}]
    samples = [{"rm_std": [1.0, 3.0]}]
    m = Evaluator.disagreement(test, val, samples)
    assert m["rm/ensemble/std_test"] == pytest.approx(0.4)
    assert m["rm/ensemble/std_val"] == pytest.approx(0.2)
    assert m["rm/ensemble/std_ratio"] == pytest.approx(2.0)
    assert m["rm/ensemble/std_samples"] == pytest.approx(2.0)
    assert Evaluator.disagreement([{"rewards": [1.0]}], val, None) == {}
    assert math.isnan(
        Evaluator.disagreement(test, [{"rewards_std": [0.0]}], None)["rm/ensemble/std_ratio"]
    )


def test_offset_free_disagreement_ignores_the_members_offsets_and_scales():
    # member 1 = 3 x member 0 + 5 everywhere: they agree about every response, yet their raw
    # std is large; held-out responses give each member's offset and scale
    val = [{"rewards_std": [1.0], "member_rewards": [[a, 3 * a + 5] for a in (0.0, 1.0, 2.0)]}]
    test = [{"rewards_std": [1.0], "member_rewards": [[a, 3 * a + 5] for a in (4.0, -1.0, 4.0)]}]
    m = Evaluator.disagreement(test, val, None)
    assert m["rm/ensemble/std_test"] > 0
    assert m["rm/ensemble/zstd_test"] == pytest.approx(0.0, abs=1e-9)
    assert m["rm/ensemble/zstd_val"] == pytest.approx(0.0, abs=1e-9)
    assert m["rm/ensemble/order_test"] == 0.0 and m["rm/ensemble/order_val"] == 0.0
    # the members order the test samples oppositely (the held-out ones alike)
    test = [{"rewards_std": [1.0], "member_rewards": [[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]}]
    m = Evaluator.disagreement(test, val, None)
    assert m["rm/ensemble/order_test"] == pytest.approx(1.0)
    assert m["rm/ensemble/zstd_test"] > 0.5
    assert math.isnan(m["rm/ensemble/order_ratio"])  # no disagreement on held-out: no ratio


def test_order_disagreement_counts_member_pairs_and_skips_full_ties():
    # 3 members: response 0 over 1 for two of them, under for one -> 2 of 3 member pairs differ;
    # responses 1 and 2 are identical for every member (skipped)
    rows = [[[2.0, 2.0, 0.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]]
    # pairs (0,1) and (0,2) count, each 2/3; (1,2) is a full tie
    assert order_disagreement(rows) == pytest.approx(2 / 3)
    assert math.isnan(order_disagreement([[[1.0, 1.0], [1.0, 1.0]]]))
    # one response sampled twice, scored with float noise: its two copies' "order" is noise
    noisy = [[[2.0, 2.0, 2.0], [1.0, 1.0 + 1e-7, 1.0 - 1e-7], [1.0 - 1e-7, 1.0, 1.0 + 1e-7]]]
    assert order_disagreement(noisy) == pytest.approx(2 / 9)  # (1,2): 2 of 3 member pairs
    assert order_disagreement(noisy, [[[5, 6], [7], [7]]]) == 0.0
    assert order_disagreement(noisy, [None]) == order_disagreement(noisy)
    loc, scale = member_scales([[[0.0, 10.0], [2.0, 14.0]]])
    assert loc.tolist() == [1.0, 12.0] and scale.tolist() == [1.0, 2.0]
    assert z_spread([[[1.0, 12.0]]], loc, scale) == [0.0]


def test_an_ensemble_game_reports_disagreement_shapes_rewards_and_exports_members(tmp_path: Path):
    kappa = 0.5
    cfg = compose_cfg(
        [
            "experiment=tiny",
            "game.rounds=1",
            "rm.ensemble.size=3",
            "rm.ensemble.bootstrap=0.632",
            f"game.uncertainty_penalty={kappa}",
        ],
        run_dir=tmp_path / "run",
    )
    train(cfg)
    run = tmp_path / "run"
    rounds = json.loads((run / "summary.json").read_text())["rounds"]
    for r in rounds:
        assert r["rm/ensemble/std_test"] > 0 and r["rm/ensemble/std_val"] > 0
        assert r["rm/ensemble/std_ratio"] == pytest.approx(
            r["rm/ensemble/std_test"] / r["rm/ensemble/std_val"]
        )
        assert r["rm/ensemble/zstd_test"] > 0 and r["rm/ensemble/zstd_val"] > 0
        assert 0 <= r["rm/ensemble/order_test"] <= 1 and 0 < r["rm/ensemble/order_val"] <= 1
    assert rounds[1]["rm/ensemble/std_samples"] > 0
    rows = [json.loads(x) for x in (run / "rounds" / "round_01" / "samples.jsonl").open()]
    assert rows and all(
        row["rm_score"] == pytest.approx(row["rm_mean"] - kappa * row["rm_std"]) for row in rows
    )
    assert any(row["rm_std"] > 0 for row in rows)
    # every member's reward of every sample, training and test: their mean is the ensemble's
    evals = [json.loads(x) for x in (run / "rounds" / "round_01" / "eval_samples.jsonl").open()]
    for row in rows + evals:
        assert len(row["rm_members"]) == 3
        mean = row["rm_mean"] if "rm_mean" in row else row["rm_score"]
        assert sum(row["rm_members"]) / 3 == pytest.approx(mean, abs=1e-5)
    # each member is a transformers checkpoint of its own, and the members differ
    loaded = [
        AutoModelForSequenceClassification.from_pretrained(run / "final" / "rm" / f"member_{i}")
        for i in range(3)
    ]
    w = [m.score.weight for m in loaded]
    assert not torch.equal(w[0], w[1]) and not torch.equal(w[1], w[2])
    from apo.steps.common import model_dir

    with pytest.raises(FileNotFoundError, match="holds an RM ensemble: pass one member"):
        model_dir(run / "final", "rm")
    assert model_dir(run / "final" / "rm" / "member_1", "rm") == run / "final" / "rm" / "member_1"


def test_member_state_strips_the_members_prefix():
    ens = RMEnsemble([_member(1), _member(2)])
    state = ens.state_dict()
    one = member_state(state, 1)
    assert set(one) == set(members(ens)[1].state_dict())
    assert all(torch.equal(one[k], v) for k, v in members(ens)[1].state_dict().items())
    with pytest.raises(ValueError, match="at least 2"):
        RMEnsemble([_member(1)])


def test_a_frozen_ensemble_scores_every_round_with_its_warm_start_members(tmp_path: Path):
    """`experiment=ensemble_shift_frozen`'s RM: never refitted after the warm start, so its spread
    on the unchanged held-out pairs is the same every round while the policy's samples change."""
    exp = compose_cfg(["experiment=ensemble_shift_frozen"], hydra_config=True)
    assert exp.rm.round.limit_train_batches == 0 and exp.rm.ensemble.size == 3
    assert dict(exp.hydra.sweeper.params) == {"seed": "0,1,2,3,4", "game.apo_coeff": "0"}
    cfg = compose_cfg(
        [
            "experiment=tiny",
            "game.rounds=2",
            "rm.ensemble.size=2",
            "game.apo_coeff=0",
            "+rm.round.limit_train_batches=0",
        ],
        run_dir=tmp_path / "run",
    )
    train(cfg)
    rounds = json.loads((tmp_path / "run" / "summary.json").read_text())["rounds"]
    assert len({r["rm/ensemble/std_val"] for r in rounds}) == 1
    assert len({r["rm/val/acc"] for r in rounds}) == 1
    assert len({r["rm/ensemble/std_test"] for r in rounds}) == 3  # the policy moved
    assert rounds[-1]["steps/rm"] == rounds[0]["steps/rm"]
