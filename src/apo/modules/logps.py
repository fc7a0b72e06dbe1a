"""Log-likelihoods of the response tokens only: the LM head projects the positions that predict a
response token, and a large vocabulary (or a large batch of response tokens) is processed in
chunks, so no `[N, T, V]` fp32 logits (nor `[M, V]` ones for a 128k vocabulary) are ever
materialised.

`sequence_logps` gives the same numbers as projecting every position and masking (a test holds
them within 1e-6); models whose logits are more than `lm_head(decoder(x))` (soft-capping, logit
scales) and sharded models (whose head weights only exist inside their own forward) take that
full path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from apo.distributed import sharding
from apo.modules.packing import hidden_states

#: vocabularies above this are projected `VOCAB_CHUNK` rows of the head at a time
VOCAB_CHUNK = 8192
#: at most this many bytes of fp32 logits at once: a prediction batch of many response tokens
#: is chunked over the vocabulary even when the vocabulary is small
LOGIT_BYTES = 64 * 2**20


def _chunk_size(rows: int, vocab: int, chunk: int) -> int:
    """Vocabulary rows per chunk: all of them (the exact, unchunked path) when the logits fit
    both limits, else `chunk` or fewer, so that `rows x chunk` fp32 logits stay in budget."""
    fits = max(1, LOGIT_BYTES // (4 * max(rows, 1)))
    if vocab <= chunk and vocab <= fits:
        return vocab
    return max(128, min(chunk, fits))


#: config keys of models whose logits are not the plain head projection
_LOGIT_TRANSFORMS = (
    "final_logit_softcapping",
    "logit_scale",
    "logits_scaling",
    "output_multiplier_scale",
)


def _head_of(model: nn.Module) -> tuple[nn.Module, nn.Linear] | None:
    """`(decoder, lm_head)` when the model's logits are `lm_head(decoder(...)[0])`, else None."""
    cfg = getattr(model, "config", None)
    if cfg is None or any(getattr(cfg, k, None) not in (None, 1, 1.0) for k in _LOGIT_TRANSFORMS):
        return None
    try:
        decoder, head = model.get_decoder(), model.get_output_embeddings()
    except (AttributeError, NotImplementedError, ValueError):
        return None
    if decoder is model or type(head) is not nn.Linear or head.bias is not None:
        return None
    if sharding(model) is not None:
        return None
    return decoder, head


def _mm_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype an autocast `linear` would compute in (its inputs' dtype without autocast)."""
    dev = x.device.type
    return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype


def _logits(h: torch.Tensor, w: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    with torch.autocast(h.device.type, enabled=False):
        return (h.to(dtype) @ w.to(dtype).t()).float()


class _ChunkedTokenLogp(torch.autograd.Function):
    """`log softmax(h W^T)[target]` per row, the vocabulary in chunks of `chunk` rows of W.

    The forward keeps only the log-normaliser per row; the backward recomputes each chunk's
    logits, so memory is `O(M * chunk)` instead of `O(M * V)`."""

    @staticmethod
    def forward(ctx, h, w, targets, chunk: int):  # type: ignore[override]
        dtype = _mm_dtype(h)
        lses, tgt = [], torch.zeros(h.shape[0], dtype=torch.float32, device=h.device)
        for start in range(0, w.shape[0], chunk):
            z = _logits(h, w[start : start + chunk], dtype)
            lses.append(torch.logsumexp(z, -1))
            inside = (targets >= start) & (targets < start + z.shape[1])
            picked = z.gather(-1, (targets - start).clamp(0, z.shape[1] - 1)[:, None])[:, 0]
            tgt = torch.where(inside, picked, tgt)
        lse = torch.logsumexp(torch.stack(lses, -1), -1)
        ctx.save_for_backward(h, w, targets, lse)
        ctx.chunk, ctx.dtype = chunk, dtype
        return tgt - lse

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        h, w, targets, lse = ctx.saved_tensors
        chunk, dtype = ctx.chunk, ctx.dtype
        grad_h = torch.zeros_like(h, dtype=torch.float32)
        grad_w = torch.zeros_like(w, dtype=torch.float32) if ctx.needs_input_grad[1] else None
        for start in range(0, w.shape[0], chunk):
            wc = w[start : start + chunk]
            # d logp / d z = onehot(target) - softmax(z)
            dz = -(_logits(h, wc, dtype) - lse[:, None]).exp()
            inside = (targets >= start) & (targets < start + wc.shape[0])
            rows = inside.nonzero()[:, 0]
            dz[rows, targets[rows] - start] += 1.0
            dz = (dz * grad[:, None]).to(dtype)
            with torch.autocast(h.device.type, enabled=False):
                grad_h += (dz @ wc.to(dtype)).float()
                if grad_w is not None:
                    grad_w[start : start + chunk] = (dz.t() @ h.to(dtype)).float()
        return grad_h.to(h.dtype), None if grad_w is None else grad_w.to(w.dtype), None, None


def token_logps(
    hidden: torch.Tensor, head: nn.Linear, targets: torch.Tensor, chunk: int = VOCAB_CHUNK
) -> torch.Tensor:
    """`log p(target)` of each row of `hidden [M, H]` under `head` (fp32), chunked over a large
    vocabulary."""
    w = head.weight
    chunk = _chunk_size(hidden.shape[0], w.shape[0], chunk)
    if w.shape[0] > chunk:
        return _ChunkedTokenLogp.apply(hidden, w, targets, chunk)
    # the op order of the full path's cross-entropy (log_softmax, then the target's entry)
    return torch.log_softmax(head(hidden).float(), -1).gather(-1, targets[:, None])[:, 0]


@torch.no_grad()
def token_entropy(hidden: torch.Tensor, head: nn.Linear, chunk: int = VOCAB_CHUNK) -> torch.Tensor:
    """Entropy of the next-token distribution at each row of `hidden [M, H]` (fp32, chunked
    over a large vocabulary)."""
    w, dtype = head.weight, _mm_dtype(hidden)
    chunk = _chunk_size(hidden.shape[0], w.shape[0], chunk)
    if w.shape[0] <= chunk:
        # the full path's formula, so both agree bit for bit
        logp = torch.log_softmax(head(hidden).float(), -1)
        return -(logp.exp() * logp).sum(-1)
    starts = range(0, w.shape[0], chunk)
    lses = [torch.logsumexp(_logits(hidden, w[s : s + chunk], dtype), -1) for s in starts]
    lse = torch.logsumexp(torch.stack(lses, -1), -1)
    ent = torch.zeros_like(lse)
    for s in starts:
        logp = _logits(hidden, w[s : s + chunk], dtype) - lse[:, None]
        ent -= (logp.exp() * logp).sum(-1)
    return ent


def _full_token_logps(model, input_ids, attention_mask, loss_mask, entropy):
    """Every position projected, then masked: the path of models `_head_of` cannot split."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
    targets = input_ids[:, 1:]
    tok_logp = -F.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none")
    m = loss_mask[:, 1:].to(tok_logp.dtype)
    if not entropy:
        return tok_logp * m, None
    with torch.no_grad():
        logp_all = torch.log_softmax(logits.float(), -1)
        tok_ent = -(logp_all.exp() * logp_all).sum(-1)
    return tok_logp * m, tok_ent * m


def _full_logps(model, input_ids, attention_mask, loss_mask, entropy):
    """`sequence_logps` by the full path (the reference the tests hold the split path to)."""
    tok_logp, tok_ent = _full_token_logps(model, input_ids, attention_mask, loss_mask, entropy)
    counts = loss_mask[:, 1:].to(tok_logp.dtype).sum(-1)
    if not entropy:
        return tok_logp.sum(-1), counts
    return tok_logp.sum(-1), counts, tok_ent.sum(-1)


def per_token_logps(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    loss_mask: torch.Tensor,
    entropy: bool = False,
    chunk: int = VOCAB_CHUNK,
    group: int = 1,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`[N, T - 1]` log-likelihood of each next token that `loss_mask[:, 1:]` marks (zero
    elsewhere) and, with `entropy`, the entropy of the distribution it was drawn from (else
    None). Only the positions that predict a `loss_mask` token go through the LM head. Rows
    in items of `group` consecutive rows that share their prompt run it once
    (`apo.modules.packing`)."""
    split = _head_of(model)
    if split is None:
        return _full_token_logps(model, input_ids, attention_mask, loss_mask, entropy)
    decoder, head = split
    m = loss_mask[:, 1:].bool()
    keep = torch.cat([m, torch.zeros_like(m[:, :1])], 1)  # position t predicts token t + 1
    # a row's last token predicts nothing: no layer needs it (packed rows then skip it)
    # (an empty row's "last" is its final position, which is padding already)
    N, T = attention_mask.shape
    last = T - 1 - attention_mask.flip(-1).argmax(-1)
    inputs = attention_mask.clone()
    inputs[torch.arange(N, device=inputs.device), last] = 0
    hidden = hidden_states(decoder, input_ids, inputs, group, keep)
    rows, cols = m.nonzero(as_tuple=True)
    # position t predicts token t + 1: the hidden states before each response token
    h = hidden[rows, cols]
    targets = input_ids[rows, cols + 1]

    def scatter(v: torch.Tensor) -> torch.Tensor:
        return torch.zeros(m.shape, dtype=v.dtype, device=v.device).index_put((rows, cols), v)

    tok_logp = scatter(token_logps(h, head, targets, chunk))
    return tok_logp, scatter(token_entropy(h, head, chunk)) if entropy else None


def sequence_logps(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    loss_mask: torch.Tensor,
    entropy: bool = False,
    chunk: int = VOCAB_CHUNK,
    group: int = 1,
) -> tuple[torch.Tensor, ...]:
    """Summed log-likelihood of the `loss_mask` tokens of each row `[N, T]` and their count;
    with `entropy`, also the summed entropy of the model's next-token distributions there."""
    tok_logp, tok_ent = per_token_logps(
        model, input_ids, attention_mask, loss_mask, entropy, chunk, group
    )
    # summed per row over `[N, T - 1]`: the full path's reduction, bit for bit
    counts = loss_mask[:, 1:].bool().sum(-1).to(tok_logp.dtype)
    if tok_ent is None:
        return tok_logp.sum(-1), counts
    return tok_logp.sum(-1), counts, tok_ent.sum(-1)
