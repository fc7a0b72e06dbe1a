"""Response-only log-likelihoods equal the full computation (every position projected, masked)."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from apo.modules.logps import (
    _full_logps,
    _full_token_logps,
    _head_of,
    per_token_logps,
    sequence_logps,
    token_entropy,
    token_logps,
)


def _llama(vocab: int, seed: int = 0, tie: bool = False) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=tie,
    )
    return LlamaForCausalLM(cfg).eval()


def _batch(vocab: int, n: int = 6, width: int = 20, seed: int = 1):
    """Right-padded rows with prompts of different lengths; the response tokens are marked."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (n, width), generator=g)
    att = torch.zeros(n, width, dtype=torch.long)
    loss = torch.zeros(n, width, dtype=torch.long)
    for i in range(n):
        length = width - (i % 4)
        prompt = 3 + i
        att[i, :length] = 1
        loss[i, prompt:length] = 1
    ids = ids.masked_fill(att == 0, 0)
    return ids, att, loss


@pytest.mark.parametrize(
    ("vocab", "chunk", "tie"), [(15, 8192, False), (300, 64, False), (300, 7, True)]
)
def test_response_only_equals_the_full_computation(vocab: int, chunk: int, tie: bool):
    model = _llama(vocab, tie=tie)
    assert _head_of(model) is not None
    ids, att, loss = _batch(vocab)
    with torch.no_grad():
        full = _full_logps(model, ids, att, loss, entropy=True)
        ours = sequence_logps(model, ids, att, loss, entropy=True, chunk=chunk)
    # unchunked: the same numbers bit for bit; chunked: per-token values within 1e-6 (see
    # below), so sums of ~20 tokens within 1e-6 of their size
    rtol = 0.0 if chunk >= vocab else 1e-6
    for a, b in zip(ours, full):
        assert torch.allclose(a, b, atol=1e-6, rtol=rtol), (a - b).abs().max()


@pytest.mark.parametrize("chunk", [8192, 64])
def test_per_token_values_equal_the_full_computation(chunk: int):
    """The online RL fit's per-token log-probs and entropies (zero outside the response)."""
    model = _llama(300)
    ids, att, loss = _batch(300)
    with torch.no_grad():
        lp_full, ent_full = _full_token_logps(model, ids, att, loss, entropy=True)
        lp, ent = per_token_logps(model, ids, att, loss, entropy=True, chunk=chunk)
        lp_only, none = per_token_logps(model, ids, att, loss, chunk=chunk)
    assert lp.shape == (ids.shape[0], ids.shape[1] - 1) and none is None
    outside = loss[:, 1:] == 0
    assert (lp[outside] == 0).all() and (ent[outside] == 0).all()
    assert (lp[~outside] < 0).all() and (ent[~outside] > 0).all()
    assert torch.allclose(lp, lp_full, atol=1e-6) and torch.allclose(ent, ent_full, atol=1e-6)
    assert torch.equal(lp_only, lp)


@pytest.mark.parametrize("chunk", [8192, 64])
def test_gradients_equal_the_full_computation(chunk: int):
    vocab = 300
    ids, att, loss = _batch(vocab)
    grads = []
    for fn in (
        lambda m: _full_logps(m, ids, att, loss, entropy=False),
        lambda m: sequence_logps(m, ids, att, loss, chunk=chunk),
    ):
        model = _llama(vocab).train()
        lp, n = fn(model)
        (-(lp * torch.arange(1.0, 7.0)).sum() / n.sum()).backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters()})
    for k, g in grads[0].items():
        assert torch.allclose(grads[1][k], g, atol=1e-6, rtol=1e-4), k


def test_chunked_kernel_equals_log_softmax():
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 1000, bias=False)
    h = torch.randn(40, 16, requires_grad=True)
    targets = torch.randint(0, 1000, (40,))
    ref = torch.log_softmax(head(h), -1).gather(-1, targets[:, None])[:, 0]
    got = token_logps(h, head, targets, chunk=128)
    assert torch.allclose(got, ref, atol=1e-6)
    w = torch.randn(40)
    (gh_ref,) = torch.autograd.grad((ref * w).sum(), h)
    (gh,) = torch.autograd.grad((got * w).sum(), h)
    assert torch.allclose(gh, gh_ref, atol=1e-6)
    logp = torch.log_softmax(head(h), -1)
    ent_ref = -(logp.exp() * logp).sum(-1)
    assert torch.allclose(token_entropy(h.detach(), head, chunk=128), ent_ref, atol=1e-5)


def test_a_model_whose_head_cannot_be_split_takes_the_full_path():
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=32, n_layer=1, n_head=2)).eval()
    ids, att, loss = _batch(50)
    with torch.no_grad():
        full = _full_logps(gpt2, ids, att, loss, entropy=False)
        ours = sequence_logps(gpt2, ids, att, loss)
    for a, b in zip(ours, full):
        assert torch.allclose(a, b, atol=1e-6)
    capped = _llama(15)
    capped.config.final_logit_softcapping = 30.0
    assert _head_of(capped) is None


def test_many_response_tokens_are_chunked_within_the_logit_budget(monkeypatch):
    from apo.modules import logps

    # a budget of 20 rows x 300 vocabulary entries: 6 rows of 20 tokens are chunked
    monkeypatch.setattr(logps, "LOGIT_BYTES", 4 * 20 * 300)
    assert logps._chunk_size(20, 300, 8192) == 300
    assert logps._chunk_size(100, 300, 8192) == 128
    model = _llama(300)
    ids, att, loss = _batch(300)
    with torch.no_grad():
        full = _full_logps(model, ids, att, loss, entropy=True)
        ours = sequence_logps(model, ids, att, loss, entropy=True)
    for a, b in zip(ours, full):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-6)


def test_the_decoder_never_runs_a_rows_last_token(monkeypatch):
    """A row's last token predicts nothing: packed, the decoder is not given it, and the
    log-probs (grouped into items or not) are those of the full computation."""
    from apo.modules import packing

    monkeypatch.setattr(packing, "GAIN", 1e9)
    model = _llama(15)
    ids, att, loss = _batch(15)
    fed = []
    hook = model.get_decoder().embed_tokens.register_forward_hook(
        lambda m, i, o: fed.append(i[0].numel() - int((i[0] == 0).sum()))
    )
    ids = ids.clamp(min=1).masked_fill(att == 0, 0)  # id 0 only for padding
    ref = _full_logps(model, ids, att, loss, False)
    fed.clear()
    out = sequence_logps(model, ids, att, loss)
    hook.remove()
    assert fed == [int(att.sum()) - len(att)]  # every token but each row's last
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
