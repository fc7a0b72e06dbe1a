"""Policy objectives against values worked out by hand."""

import functools
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from apo.losses import policy as losses
from apo.losses.objectives import POLICY_OBJECTIVES, policy_objective
from apo.losses.pairs import best_worst
from apo.train import CONFIG_DIR


def yaml_options(name: str) -> dict:
    """The objective's options as `configs/objective/<name>.yaml` sets them (their one home)."""
    if name == "sft":
        return {}
    return OmegaConf.to_container(
        OmegaConf.load(Path(CONFIG_DIR) / "objective" / f"{name}.yaml").loss
    )


# the loss functions with the shipped defaults; a test overrides what it is about
rjs, rrhf, dpo, ipo, slic, lipo = (
    functools.partial(getattr(losses, n), **yaml_options(n))
    for n in ("rjs", "rrhf", "dpo", "ipo", "slic", "lipo")
)
sft = losses.sft


def nls(x: float) -> float:
    """-log sigmoid(x), by hand."""
    return math.log1p(math.exp(-x))


def full(*shape: int) -> torch.Tensor:
    return torch.ones(*shape, dtype=torch.bool)


# ------------------------------------------------------------------------------------------ sft


def test_sft_token_mean():
    logps = torch.tensor([[-4.0, -6.0]])
    lengths = torch.tensor([[2.0, 3.0]])
    mask = torch.tensor([[True, False]])
    loss, _ = sft(logps, None, torch.zeros(1, 2), mask, lengths)
    assert loss.item() == pytest.approx(4.0 / 2.0)


def test_sft_ignores_non_finite_padding():
    logps = torch.tensor([[-4.0, -math.inf]], requires_grad=True)
    loss, _ = sft(logps, None, torch.zeros(1, 2), torch.tensor([[True, False]]), torch.ones(1, 2))
    loss.backward()
    assert loss.item() == pytest.approx(4.0) and torch.isfinite(logps.grad).all()


# ------------------------------------------------------------------------------------------ rjs


def test_rjs_takes_best_valid_item_per_row():
    logps = torch.tensor([[-1.0, -10.0, -3.0], [-2.0, -8.0, -100.0]])
    lengths = torch.tensor([[1.0, 5.0, 3.0], [2.0, 4.0, 50.0]])
    # row 0: best is column 1 (score 0.9); row 1: column 2 would win but is masked -> column 1
    scores = torch.tensor([[0.1, 0.9, 0.5], [0.2, 0.3, 9.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    loss, _ = rjs(logps, None, scores, mask, lengths)
    assert loss.item() == pytest.approx((10.0 + 8.0) / (5.0 + 4.0))


def test_rjs_top_n_with_ties_and_masking():
    logps = torch.tensor([[-1.0, -10.0, -3.0, -7.0], [-2.0, -8.0, -100.0, -4.0]])
    lengths = torch.tensor([[1.0, 5.0, 3.0, 7.0], [2.0, 4.0, 50.0, 1.0]])
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.9], [0.2, 0.3, 9.0, 0.1]])
    mask = torch.tensor([[True, True, True, True], [True, True, False, True]])
    # top 2 of row 0: columns 1 and 3 (the 0.9 tie); row 1: column 2 is masked -> columns 1, 0
    # pooled token mean: (10 + 7 + 8 + 2) / (5 + 7 + 4 + 2) = 27 / 18
    loss, stats = rjs(logps, None, scores, mask, lengths, top_n=2)
    assert loss.item() == pytest.approx(27.0 / 18.0)
    assert stats["kept_frac"].item() == pytest.approx(4 / 7)
    # top 1 with the 0.9 tie keeps the earlier column (1): row 0 gives 10 / 5, row 1 gives 8 / 4
    loss, _ = rjs(logps, None, scores, mask, lengths, top_n=1)
    assert loss.item() == pytest.approx((10.0 + 8.0) / (5.0 + 4.0))


def test_rjs_threshold_drops_rows_without_a_passing_item():
    logps = torch.tensor([[-1.0, -10.0, -3.0], [-2.0, -8.0, -6.0]])
    lengths = torch.tensor([[1.0, 5.0, 3.0], [2.0, 4.0, 6.0]])
    scores = torch.tensor([[0.1, 0.9, 0.5], [0.2, 0.3, 0.4]])
    # row 0: columns 1 (0.9) and 2 (0.5 >= 0.5) pass; row 1: nothing reaches 0.5
    # (10 + 3) / (5 + 3)
    loss, stats = rjs(logps, None, scores, full(2, 3), lengths, top_n=2, threshold=0.5)
    assert loss.item() == pytest.approx(13.0 / 8.0)
    assert stats["kept_frac"].item() == pytest.approx(2 / 6)


def test_rjs_threshold_nobody_passes_is_zero_with_graph():
    logps = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    loss, _ = rjs(
        logps, None, torch.tensor([[0.1, 0.2]]), full(1, 2), torch.ones(1, 2), threshold=1.0
    )
    loss.backward()
    assert loss.item() == 0.0 and torch.all(logps.grad == 0)


def test_rjs_rejects_top_n_zero():
    with pytest.raises(ValueError, match="top_n"):
        rjs(torch.zeros(1, 2), None, torch.zeros(1, 2), full(1, 2), torch.ones(1, 2), top_n=0)


# ----------------------------------------------------------------------------------------- rrhf


def test_rrhf_ranking_on_length_normalised_logps_plus_sft():
    logps = torch.tensor([[-2.0, -6.0, -3.0]])
    lengths = torch.tensor([[2.0, 3.0, 1.0]])
    scores = torch.tensor([[0.5, 0.9, 0.1]])
    # p = logp / len = [-1, -2, -3]; pairs with score_i < score_j:
    #   (0 below 1): max(0, -1 - -2) = 1 ; (2 below 1): max(0, -3 - -2) = 0 ; (2 below 0): 0
    # rank = 1 ; sft on the best (column 1): 6 / 3 = 2
    loss, stats = rrhf(logps, None, scores, full(1, 3), lengths)
    assert loss.item() == pytest.approx(1.0 + 2.0)
    assert stats["rank_loss"].item() == pytest.approx(1.0)
    assert stats["sft_loss"].item() == pytest.approx(2.0)
    loss, _ = rrhf(logps, None, scores, full(1, 3), lengths, sft_weight=0.5)
    assert loss.item() == pytest.approx(1.0 + 0.5 * 2.0)


def test_rrhf_ties_masking_and_row_average():
    logps = torch.tensor([[-2.0, -6.0, -3.0], [-1.0, -4.0, -math.inf]])
    lengths = torch.tensor([[2.0, 3.0, 1.0], [1.0, 2.0, 0.0]])
    # row 1: columns 0 and 1 tie (no pair), column 2 is masked padding -> rank 0,
    # best = column 0 (earlier of the tie) -> NLL 1 over 1 token
    scores = torch.tensor([[0.5, 0.9, 0.1], [0.3, 0.3, 5.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    # rank = (1 + 0) / 2 rows ; sft = (6 + 1) / (3 + 1)
    loss, _ = rrhf(logps, None, scores, mask, lengths)
    assert loss.item() == pytest.approx(0.5 + 7.0 / 4.0)


# ------------------------------------------------------------------------------------------ dpo


def test_dpo_best_vs_worst_with_k3():
    logps = torch.tensor([[-1.0, -2.0, -3.0]])
    ref = torch.tensor([[-1.5, -2.0, -2.0]])
    scores = torch.tensor([[0.5, 0.9, 0.1]])  # best = 1, worst = 2
    mask = torch.ones(1, 3, dtype=torch.bool)
    beta = 0.5
    # margin = (logp_w - ref_w) - (logp_l - ref_l) = (0) - (-1) = 1
    loss, stats = dpo(logps, ref, scores, mask, torch.ones(1, 3), beta=beta)
    assert loss.item() == pytest.approx(nls(beta * 1.0), rel=1e-6)
    assert stats["reward_acc"].item() == 1.0
    assert stats["reward_margin"].item() == pytest.approx(0.5)


def test_dpo_skips_tied_rows_and_masked_items():
    logps = torch.tensor([[-1.0, -2.0, 0.0], [-1.0, -1.0, -1.0]])
    ref = torch.zeros(2, 3)
    # row 0: column 2 masked, best 0 vs worst 1 -> margin = -1 - (-2) = 1
    # row 1: all scores tie -> no preference, skipped
    scores = torch.tensor([[0.7, 0.2, 5.0], [0.3, 0.3, 0.3]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    loss, _ = dpo(logps, ref, scores, mask, torch.ones(2, 3), beta=1.0)
    assert loss.item() == pytest.approx(nls(1.0), rel=1e-6)


def test_dpo_label_smoothing():
    logps = torch.tensor([[-1.0, -2.0, -3.0]])
    ref = torch.tensor([[-1.5, -2.0, -2.0]])
    scores = torch.tensor([[0.5, 0.9, 0.1]])
    # margin 1 as above, beta 0.5: 0.9 * -log s(0.5) + 0.1 * -log s(-0.5)
    loss, _ = dpo(logps, ref, scores, full(1, 3), torch.ones(1, 3), beta=0.5, label_smoothing=0.1)
    assert loss.item() == pytest.approx(0.9 * nls(0.5) + 0.1 * nls(-0.5), rel=1e-6)
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo(logps, ref, scores, full(1, 3), torch.ones(1, 3), label_smoothing=0.7)


def test_dpo_all_pairs_with_ties():
    logps = torch.tensor([[-1.0, -2.0, -3.0], [0.0, -1.0, -1.0]])
    ref = torch.zeros(2, 3)
    scores = torch.tensor([[0.5, 0.9, 0.1], [0.4, 0.4, 0.2]])
    # row 0 (ratios -1, -2, -3): (1,0) m = -1 ; (1,2) m = 1 ; (0,2) m = 2
    # row 1 (ratios 0, -1, -1; 0 and 1 tie): (0,2) m = 1 ; (1,2) m = 0
    loss, stats = dpo(logps, ref, scores, full(2, 3), torch.ones(2, 3), beta=1.0, pairs="all")
    expected = (nls(-1.0) + nls(1.0) + nls(2.0) + nls(1.0) + nls(0.0)) / 5
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert stats["reward_acc"].item() == pytest.approx(3 / 5)


def test_dpo_needs_reference():
    with pytest.raises(ValueError, match="reference"):
        dpo(torch.zeros(1, 2), None, torch.tensor([[1.0, 0.0]]), full(1, 2), torch.ones(1, 2))


def test_unknown_pairs_mode_is_rejected():
    with pytest.raises(ValueError, match="pairs"):
        dpo(
            torch.zeros(1, 2),
            torch.zeros(1, 2),
            torch.tensor([[1.0, 0.0]]),
            full(1, 2),
            torch.ones(1, 2),
            pairs="some",
        )


def test_best_worst_single_valid_item_is_not_a_pair():
    best, worst, ok = best_worst(torch.tensor([[1.0, 2.0]]), torch.tensor([[True, False]]))
    assert best.item() == 0 and worst.item() == 0 and not ok.item()


# ------------------------------------------------------------------------------------------ ipo


def test_ipo_best_worst_regresses_margin_to_half_inverse_beta():
    logps = torch.tensor([[-1.0, -2.0, -3.0]])
    ref = torch.tensor([[-1.5, -2.0, -2.0]])
    scores = torch.tensor([[0.5, 0.9, 0.1]])
    # margin 1 (best 1 vs worst 2); beta 0.1 -> target 5: (1 - 5)^2 ; beta 0.25 -> target 2: 1
    loss, _ = ipo(logps, ref, scores, full(1, 3), torch.ones(1, 3))
    assert loss.item() == pytest.approx(16.0)
    loss, _ = ipo(logps, ref, scores, full(1, 3), torch.ones(1, 3), beta=0.25)
    assert loss.item() == pytest.approx(1.0)


def test_ipo_all_pairs_masking_and_ties():
    logps = torch.tensor([[-1.0, -2.0, -3.0, 7.0], [-1.0, -1.0, -1.0, -1.0]])
    ref = torch.tensor([[-1.5, -2.0, -2.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    scores = torch.tensor([[0.5, 0.9, 0.1, 3.0], [0.2, 0.2, 0.2, 0.2]])
    mask = torch.tensor([[True, True, True, False], [True, True, True, True]])
    # row 0 ratios [0.5, 0, -1] (column 3 masked): (1,0) m = -0.5 ; (1,2) m = 1 ; (0,2) m = 1.5
    # beta 0.5 -> target 1: 2.25, 0, 0.25 ; row 1 all ties: no pair
    loss, _ = ipo(logps, ref, scores, mask, torch.ones(2, 4), beta=0.5, pairs="all")
    assert loss.item() == pytest.approx(2.5 / 3)


def test_ipo_needs_reference():
    with pytest.raises(ValueError, match="reference"):
        ipo(torch.zeros(1, 2), None, torch.tensor([[1.0, 0.0]]), full(1, 2), torch.ones(1, 2))


# ----------------------------------------------------------------------------------------- slic


def test_slic_hinge_and_regulariser_without_reference():
    logps = torch.tensor([[-1.0, -2.0, -3.0]])
    lengths = torch.tensor([[1.0, 4.0, 1.0]])
    scores = torch.tensor([[0.5, 0.9, 0.1]])
    # best 1 vs worst 2: m = -2 - -3 = 1 ; delta 1 -> max(0, 0) = 0
    loss, _ = slic(logps, None, scores, full(1, 3), lengths)
    assert loss.item() == pytest.approx(0.0)
    # delta 2 -> 1 ; regulariser: NLL of best (column 1) = 2 / 4 tokens, weight 0.5 -> 0.25
    loss, stats = slic(logps, None, scores, full(1, 3), lengths, delta=2.0, reg_weight=0.5)
    assert loss.item() == pytest.approx(1.0 + 0.25)
    assert stats["hinge_loss"].item() == pytest.approx(1.0)
    assert stats["reg_loss"].item() == pytest.approx(0.5)


def test_slic_all_pairs_tied_row_adds_nothing():
    logps = torch.tensor([[-1.0, -2.0, -3.0], [-5.0, -5.0, -5.0]])
    lengths = torch.tensor([[1.0, 4.0, 1.0], [1.0, 1.0, 1.0]])
    scores = torch.tensor([[0.5, 0.9, 0.1], [0.3, 0.3, 0.3]])
    # row 0: (1,0) m = -1 -> 3 ; (1,2) m = 1 -> 1 ; (0,2) m = 2 -> 0 ; mean 4 / 3 (delta 2)
    # row 1 ties: no pair and no regularisation target ; reg = 0.5 * (2 / 4)
    loss, _ = slic(logps, None, scores, full(2, 3), lengths, delta=2.0, reg_weight=0.5, pairs="all")
    assert loss.item() == pytest.approx(4.0 / 3.0 + 0.25)


# ----------------------------------------------------------------------------------------- lipo


def test_lipo_lambda_weights_k3_with_tie_and_padding():
    # column 3 is padding with a huge score: it must not enter labels, ranks or pairs
    scores = torch.tensor([[math.log(3.0), 0.0, 0.0, 9.0], [1.0, 1.0, 1.0, 1.0]])
    mask = torch.tensor([[True, True, True, False], [True, True, True, True]])
    logps = torch.tensor([[-1.0, -2.0, -0.5, 0.0], [-1.0, -2.0, -3.0, -4.0]])
    ref = torch.zeros(2, 4)
    # labels: psi_i = mean_j sigmoid(score_i - score_j) over the other valid items
    #   psi_0 = (s(ln 3) + s(ln 3)) / 2 = 0.75 ; psi_1 = psi_2 = (s(-ln 3) + s(0)) / 2 = 0.375
    g0, g12 = 2**0.75 - 1, 2**0.375 - 1
    # beta 1: s = [-1, -2, -0.5] -> model ranks tau = [2, 3, 1] -> 1/log2(1 + tau)
    d0, d1, d2 = 1 / math.log2(3), 1 / math.log2(4), 1 / math.log2(2)
    # pairs (0,1) and (0,2) (1 and 2 tie); row 1 all ties -> no pair, not counted
    expected = (g0 - g12) * abs(d0 - d1) * nls(-1.0 + 2.0) + (g0 - g12) * abs(d0 - d2) * nls(
        -1.0 + 0.5
    )
    loss, stats = lipo(logps, ref, scores, mask, torch.ones(2, 4), beta=1.0)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert stats["reward_acc"].item() == pytest.approx(1 / 2)


def test_lipo_k2_and_beta():
    # psi = [0.75, 0.25]; s = 0.5 * [(-1 - -2), (-3 - -3)] = [0.5, 0] -> tau = [1, 2]
    scores = torch.tensor([[math.log(3.0), 0.0]])
    logps, ref = torch.tensor([[-1.0, -3.0]]), torch.tensor([[-2.0, -3.0]])
    lam = (2**0.75 - 2**0.25) * (1 - 1 / math.log2(3))
    loss, _ = lipo(logps, ref, scores, full(1, 2), torch.ones(1, 2), beta=0.5)
    assert loss.item() == pytest.approx(lam * nls(0.5), rel=1e-5)


def test_lipo_needs_reference():
    with pytest.raises(ValueError, match="reference"):
        lipo(torch.zeros(1, 2), None, torch.tensor([[1.0, 0.0]]), full(1, 2), torch.ones(1, 2))


# ------------------------------------------------------------------------------------- registry


def test_registry_names_and_metadata():
    offline = {"sft", "rjs", "rrhf", "dpo", "ipo", "slic", "lipo"}
    assert set(POLICY_OBJECTIVES) == offline | {"rloo", "grpo", "ppo"}
    assert {n for n, o in POLICY_OBJECTIVES.items() if o.online} == {"rloo", "grpo", "ppo"}
    needs_ref = {n for n, o in POLICY_OBJECTIVES.items() if o.needs_reference}
    assert needs_ref == {"dpo", "ipo", "lipo"}  # an online fit keeps its own reference


def _bound(name: str, **options):
    return policy_objective(name, **{**yaml_options(name), **options})


def test_selection_follows_the_options():
    assert _bound("sft").selection == _bound("rrhf").selection == "all"
    assert _bound("lipo", beta=0.5).selection == "all"
    assert _bound("rjs").selection == "best"
    # top_n = 1 with a threshold still only needs the best sample
    assert _bound("rjs", threshold=0.5).selection == "best"
    assert _bound("rjs", top_n=2).selection == "all"
    for name in ("dpo", "ipo", "slic"):
        assert _bound(name).selection == _bound(name, pairs="best_worst").selection == "best_worst"
        assert _bound(name, pairs="all").selection == "all"
        with pytest.raises(ValueError, match="pairs"):
            _bound(name, pairs="every")


def test_options_are_checked_against_the_loss():
    with pytest.raises(ValueError, match=r"missing \['beta'\]"):
        policy_objective("lipo")
    with pytest.raises(ValueError, match=r"unknown \['gamma'\]"):
        policy_objective("lipo", beta=0.1, gamma=1.0)
    with pytest.raises(ValueError, match="objective.name"):
        policy_objective("a2c")


def _select_columns(objective, *tensors: torch.Tensor, scores: torch.Tensor):
    """Rows of `[B, k]` tensors restricted to the columns `objective.select` keeps: each record's
    responses are its column numbers, so the selection can be read back as indices."""
    records = [
        {"prompt": str(b), "responses": [[j] for j in range(scores.shape[1])], "rm_scores": row}
        for b, row in enumerate(scores.tolist())
    ]
    idx = torch.tensor([[r[0] for r in rec["responses"]] for rec in objective.select(records)])
    return [t.gather(-1, idx) for t in (*tensors, scores)]


def test_select_orders_best_first_and_keeps_ties_in_order():
    recs = [{"prompt": "p", "responses": [[0], [1], [2], [3]], "rm_scores": [0.5, 0.9, 0.1, 0.9]}]
    assert _bound("rjs").select(recs)[0]["responses"] == [[1]]
    assert _bound("dpo").select(recs)[0]["responses"] == [[1], [2]]
    assert _bound("lipo").select(recs)[0]["responses"] == [[1], [3], [0], [2]]
    assert _bound("lipo").select(recs)[0]["rm_scores"] == [0.9, 0.9, 0.5, 0.1]


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("rjs", {}),
        ("rjs", {"threshold": 0.0}),
        ("dpo", {"beta": 0.5}),
        ("ipo", {}),
        ("slic", {"reg_weight": 0.3}),
    ],
)
def test_loss_on_selected_samples_equals_loss_on_all(name, options):
    obj = _bound(name, **options)
    g = torch.Generator().manual_seed(1)
    logps, ref = -5 * torch.rand(5, 4, generator=g), -5 * torch.rand(5, 4, generator=g)
    lengths = torch.randint(1, 9, (5, 4), generator=g).float()
    scores = torch.randn(5, 4, generator=g)
    full_loss, _ = obj.loss(logps, ref, scores, full(5, 4), lengths)
    sl, sr, sn, ss = _select_columns(obj, logps, ref, lengths, scores=scores)
    sel_loss, _ = obj.loss(sl, sr, ss, torch.ones_like(ss, dtype=torch.bool), sn)
    assert sel_loss.item() == pytest.approx(full_loss.item(), rel=1e-6)


@pytest.mark.parametrize("name", sorted(n for n, o in POLICY_OBJECTIVES.items() if not o.online))
def test_every_objective_is_finite_and_has_gradient(name):
    g = torch.Generator().manual_seed(0)
    B, k = 6, 4
    logps = (-10 * torch.rand(B, k, generator=g)).requires_grad_()
    ref = -10 * torch.rand(B, k, generator=g)
    scores = torch.randn(B, k, generator=g)
    lengths = torch.randint(1, 12, (B, k), generator=g).float()
    mask = full(B, k)
    mask[1, 3] = mask[4, 2:] = False
    loss, stats = _bound(name).loss(logps, ref, scores, mask, lengths)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(v) for v in stats.values())
    assert logps.grad.abs().sum() > 0
    # padding gets no gradient
    assert logps.grad[1, 3] == 0 and torch.all(logps.grad[4, 2:] == 0)


# ------------------------------------------------------------ TRL's chosen / rejected statistics
TRL_KEYS = (
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "logps/chosen",
    "logps/rejected",
)


def test_dpo_chosen_rejected_stats_by_hand():
    # row 0: best 1 (logp -2, ref -2), worst 2 (logp -3, ref -2); row 1: best 0, worst 1;
    # row 1's masked column holds NaN, which must not reach any statistic
    logps = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -1.5, math.nan]])
    ref = torch.tensor([[-1.5, -2.0, -2.0], [-1.0, -1.0, 0.0]])
    scores = torch.tensor([[0.5, 0.9, 0.1], [0.8, 0.2, 0.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    _, stats = dpo(logps, ref, scores, mask, torch.ones(2, 3), beta=0.5)
    chosen = (0.5 * 0.0 + 0.5 * 0.5) / 2  # beta * (logp - ref) of each pair's chosen item
    rejected = (0.5 * -1.0 + 0.5 * -0.5) / 2
    assert stats["rewards/chosen"].item() == pytest.approx(chosen)
    assert stats["rewards/rejected"].item() == pytest.approx(rejected)
    assert stats["rewards/margins"].item() == pytest.approx(chosen - rejected)
    assert stats["rewards/accuracies"].item() == 1.0
    assert stats["logps/chosen"].item() == pytest.approx((-2.0 - 0.5) / 2)
    assert stats["logps/rejected"].item() == pytest.approx((-3.0 - 1.5) / 2)
    assert not any(v.requires_grad for v in stats.values())


@pytest.mark.parametrize("name", ["dpo", "ipo", "slic", "lipo"])
def test_pairwise_objectives_report_trls_statistics(name):
    torch.manual_seed(0)
    logps = -torch.rand(4, 3) * 5
    ref = -torch.rand(4, 3) * 5
    scores = torch.rand(4, 3)
    loss, stats = globals()[name](logps, ref, scores, full(4, 3), torch.ones(4, 3))
    for key in TRL_KEYS:
        assert key in stats and torch.isfinite(stats[key]), (name, key)
    assert 0.0 <= stats["rewards/accuracies"].item() <= 1.0
    margin = stats["rewards/chosen"] - stats["rewards/rejected"]
    assert stats["rewards/margins"].item() == pytest.approx(margin.item(), abs=1e-6)


def test_config_schema_knows_every_objectives_options():
    """The up-front config check (`apo.validation.schema`) and the loss functions agree on each
    objective's keyword options, and every objective has a packaged config."""
    from apo.validation.schema import OBJECTIVE_OPTIONS

    # sft is the warm start's loss, not a round's objective (no configs/objective/sft.yaml)
    assert set(OBJECTIVE_OPTIONS) == set(POLICY_OBJECTIVES) - {"sft"}
    for name in OBJECTIVE_OPTIONS:
        spec = POLICY_OBJECTIVES[name]
        assert set(OBJECTIVE_OPTIONS[name].model_fields) == set(spec.options), name
        assert set(yaml_options(name)) == set(spec.options), name
