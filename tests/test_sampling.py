"""The KV-cache sampler: padding-invariant, equal to transformers' greedy decoding, mixture-aware."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import LlamaConfig

from apo.data.collate import pad_2d
from apo.modules import sampling
from apo.modules.backbones import build_causal_lm
from apo.modules.sampling import SamplingSpec, sample
from tests.conftest import sort_task


@pytest.fixture(scope="module")
def lm():
    tok = sort_task().build_tokenizer()
    cfg = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return build_causal_lm(cfg, tok, seed=0).eval(), tok


def spec(max_new_tokens: int, temperature: float = 1.0, mixture: float = 0.0) -> SamplingSpec:
    return SamplingSpec(max_new_tokens, temperature, top_k=0, top_p=1.0, mixture=mixture)


def _prompts(tok, texts):
    return [[tok.bos_token_id] + tok(t, add_special_tokens=False)["input_ids"] for t in texts]


def test_greedy_matches_transformers_generate_with_left_padding(lm):
    model, tok = lm
    ids, att = pad_2d(_prompts(tok, ["38=", "381712="]), tok.pad_token_id, left=True)
    ours = sample(model, ids, att, 1, spec(8), tok.eos_token_id, tok.pad_token_id, greedy=True)
    ref = model.generate(
        input_ids=ids,
        attention_mask=att,
        do_sample=False,
        max_new_tokens=8,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    for row, theirs in zip(ours, ref[:, ids.shape[1] :].tolist()):
        cut = theirs.index(tok.eos_token_id) if tok.eos_token_id in theirs else len(theirs)
        assert row[0] == theirs[:cut]


def test_padding_does_not_change_a_prompt(lm):
    model, tok = lm
    short, long_ = _prompts(tok, ["38=", "38171299="])
    alone = sample(
        model,
        *pad_2d([short], tok.pad_token_id, left=True),
        1,
        spec(8),
        tok.eos_token_id,
        tok.pad_token_id,
        greedy=True,
    )
    padded = sample(
        model,
        *pad_2d([long_, short], tok.pad_token_id, left=True),
        1,
        spec(8),
        tok.eos_token_id,
        tok.pad_token_id,
        greedy=True,
    )
    assert alone[0] == padded[1]


def test_k_samples_are_drawn_and_vary(lm):
    model, tok = lm
    ids, att = pad_2d(_prompts(tok, ["381="]), tok.pad_token_id, left=True)
    torch.manual_seed(0)
    out = sample(model, ids, att, 16, spec(6, 2.0), tok.eos_token_id, tok.pad_token_id)
    assert len(out) == 1 and len(out[0]) == 16
    assert len({tuple(r) for r in out[0]}) > 1
    assert all(tok.eos_token_id not in r and len(r) <= 6 for r in out[0])


def test_mixture_weight_one_samples_the_reference(lm):
    model, tok = lm
    other = build_causal_lm(model.config.__class__(**model.config.to_dict()), tok, seed=1).eval()
    ids, att = pad_2d(_prompts(tok, ["381="]), tok.pad_token_id, left=True)
    as_ref = sample(other, ids, att, 1, spec(6), tok.eos_token_id, tok.pad_token_id, greedy=True)
    mixed = sample(
        model,
        ids,
        att,
        1,
        spec(6, mixture=1.0),
        tok.eos_token_id,
        tok.pad_token_id,
        greedy=True,
        ref_model=other,
    )
    assert mixed == as_ref
    with pytest.raises(ValueError, match="reference"):
        sample(model, ids, att, 1, spec(6, mixture=0.5), tok.eos_token_id, tok.pad_token_id)
    with pytest.raises(ValueError, match="objective.mixture"):
        spec(6, mixture=1.5)


def _exact_two_token_probs(
    model, ref, ids, mixture: float, eos: int, temperature: float
) -> dict[tuple, float]:
    """The exact distribution of 2-token responses (eos ends one early) under the sampler's
    mixture `pi^(1-w) pi_ref^w`, from full forward passes."""

    def step_logp(prefix: list[int]) -> torch.Tensor:
        x = torch.tensor([ids + prefix])
        with torch.no_grad():
            lp = torch.log_softmax(model(input_ids=x).logits[0, -1].float() / temperature, -1)
            if mixture > 0:
                lq = torch.log_softmax(ref(input_ids=x).logits[0, -1].float() / temperature, -1)
                lp = torch.log_softmax((1 - mixture) * lp + mixture * lq, -1)
        return lp.exp()

    out: dict[tuple, float] = {}
    first = step_logp([])
    for a, pa in enumerate(first.tolist()):
        if a == eos:
            out[()] = pa
            continue
        for b, pb in enumerate(step_logp([a]).tolist()):
            key = (a,) if b == eos else (a, b)
            out[key] = out.get(key, 0.0) + pa * pb
    return out


@pytest.mark.parametrize("mixture", [0.0, 0.5])
def test_samples_follow_the_exact_distribution_while_finished_rows_leave(lm, mixture: float):
    """Finished rows leave the batch (and change the random stream): the samples still follow
    the model's distribution (Pearson's chi-square over every 2-token response)."""
    model, tok = copy.deepcopy(lm[0]), lm[1]
    other = build_causal_lm(model.config.__class__(**model.config.to_dict()), tok, seed=1).eval()
    prompt = _prompts(tok, ["3817="])[0]
    with torch.no_grad():
        h = model.model(input_ids=torch.tensor([prompt]))[0][0, -1]
        # a token made likely at the prompt plays eos, so that many rows finish at once and
        # leave the batch
        eos = 3
        model.lm_head.weight[eos] = h * (4.0 / h.square().sum())
    temperature = 1.0
    exact = _exact_two_token_probs(model, other, prompt, mixture, eos, temperature)
    n = 40_000
    ids, att = pad_2d([prompt], tok.pad_token_id, left=True)
    torch.manual_seed(0)
    rows = sample(
        model, ids, att, n, spec(2, temperature, mixture), eos, tok.pad_token_id, ref_model=other
    )[0]
    counts: dict[tuple, int] = {}
    for r in rows:
        counts[tuple(r)] = counts.get(tuple(r), 0) + 1
    assert set(counts) <= set(exact)
    # rows did finish after one token, enough for them to leave the batch
    assert counts.get((), 0) * sampling.DROP_AT > n
    cells = [k for k, p in exact.items() if p * n >= 5]
    rest = 1.0 - sum(exact[k] for k in cells)
    obs = [counts.get(k, 0) for k in cells] + [n - sum(counts.get(k, 0) for k in cells)]
    exp = [exact[k] * n for k in cells] + [rest * n]
    chi2 = sum((o - e) ** 2 / e for o, e in zip(obs, exp) if e > 0)
    df = len(cells)
    # far in the tail of chi-square(df) (its mean df, sd sqrt(2 df)): a wrong distribution
    # at this n lands orders of magnitude above
    assert chi2 < df + 6 * (2 * df) ** 0.5, (chi2, df)


@pytest.mark.parametrize("mixture", [0.0, 0.5])
def test_lockstep_draws_the_samples_a_dropping_batch_draws(lm, mixture: float):
    """A sharded model samples in lockstep (finished rows stay in the batch, the steps go on
    until every rank is done): for a seed, its samples are those of DDP's dropping batch."""
    model, tok = copy.deepcopy(lm[0]), lm[1]
    other = build_causal_lm(model.config.__class__(**model.config.to_dict()), tok, seed=1).eval()
    texts = ["3817=", "12=", "905124=", "44="]
    ids, att = pad_2d(_prompts(tok, texts), tok.pad_token_id, left=True)
    eos = 3  # a common token plays eos: rows finish early, and a dropping batch drops them
    outs = {}
    for lockstep in (False, True):
        torch.manual_seed(0)
        rows = sample(
            model,
            ids,
            att,
            32,
            spec(8, 1.5, mixture),
            eos,
            tok.pad_token_id,
            ref_model=other,
            lockstep=lockstep,
            # the other ranks finish 3 steps after this one: lockstep runs on, drawing nothing
            stop_together=_late_stop(3) if lockstep else None,
        )
        outs[lockstep] = (rows, torch.rand(1).item())  # and the stream after it
    lengths = [len(r) for rs in outs[False][0] for r in rs]
    assert min(lengths) < 8 and sum(n < 4 for n in lengths) * sampling.DROP_AT >= len(lengths)
    assert outs[True] == outs[False]


def _late_stop(extra: int):
    """A `stop_together` whose other ranks are done `extra` steps after this rank."""
    state = {"after": None}

    def stop(done: bool) -> bool:
        if done and state["after"] is None:
            state["after"] = extra
        if state["after"] is None:
            return False
        state["after"] -= 1
        return state["after"] < 0

    return stop


@pytest.mark.parametrize("mixture", [0.0, 0.5])
def test_a_prompt_run_once_for_its_samples_draws_what_running_every_copy_draws(lm, mixture):
    """The prefill shared by a prompt's samples changes nothing: the same samples for a seed as
    prefilling every copy (num_samples=1 on prompts repeated K times, the sampler before)."""
    model, tok = lm
    ref = build_causal_lm(model.config.__class__(**model.config.to_dict()), tok, seed=1).eval()
    ids, att = pad_2d(_prompts(tok, ["381=", "38171299=", "7="]), tok.pad_token_id, left=True)
    k, args = 5, (spec(8, 1.5, mixture), tok.eos_token_id, tok.pad_token_id)
    torch.manual_seed(3)
    shared = sample(model, ids, att, k, *args, ref_model=ref)
    torch.manual_seed(3)
    copies = sample(
        model, ids.repeat_interleave(k, 0), att.repeat_interleave(k, 0), 1, *args, ref_model=ref
    )
    assert shared == [[row[0] for row in copies[i : i + k]] for i in range(0, len(copies), k)]
    assert len({tuple(r) for rec in shared for r in rec}) > 3  # the samples do vary
