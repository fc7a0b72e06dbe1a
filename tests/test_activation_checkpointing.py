"""`policy.activation_checkpointing` / `rm.activation_checkpointing`: the same loss and
gradients as without, with far fewer tensors kept for the backward pass (the decoder layers'
activations are recomputed there, except the last layer's, whose backward comes first)."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from apo.modules import packing
from apo.modules.backbones import build_player
from apo.modules.logps import sequence_logps
from apo.modules.packing import hidden_states
from apo.tokenizer import build_char_tokenizer
from tests.conftest import ROOT


def _player(kind: str, checkpointing: bool):
    cfg = OmegaConf.load(
        ROOT / "configs" / ("policy" if kind == "policy" else "rm") / "default.yaml"
    )
    cfg.backbone = OmegaConf.load(ROOT / "configs" / "backbone" / "tiny_llama.yaml")
    cfg.activation_checkpointing = checkpointing
    model, _ = build_player(kind, cfg, 0, build_char_tokenizer("0123456789="))
    return model.train()


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("kind", ["policy", "rm"])
def test_checkpointing_gives_the_same_loss_and_gradients(monkeypatch, kind, packed):
    """packed: pairs of rows sharing a prompt, packed (`apo.modules.packing`), the last layer
    switched for one that computes only where read (`apo.modules.last_layer`): the layers
    before it must still be recomputed."""
    monkeypatch.setattr(packing, "GAIN", 1e9 if packed else 0.9)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 14, (4, 20), generator=g)
    att = torch.ones_like(ids)
    if packed:
        ids[1::2, :8] = ids[::2, :8]  # each pair's prompt
        att[1, 15:] = 0  # some padding in the packed rows
    out = {}
    for ckpt in (False, True):
        model = _player(kind, ckpt)
        kept = [0]
        layers = model.base_model.layers
        runs = {0: 0, len(layers) - 1: 0}
        for i in runs:  # counted in `forward`: the recomputation runs no module hooks
            mlp, run = layers[i].mlp, layers[i].mlp.forward
            mlp.forward = lambda *a, i=i, run=run, n=runs: (n.update({i: n[i] + 1}), run(*a))[1]

        def pack(t: torch.Tensor, kept: list[int] = kept) -> torch.Tensor:
            kept[0] += 1
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            if kind == "policy":
                loss = -sequence_logps(model, ids, att, att, group=2 if packed else 1)[0].mean()
            elif packed:
                loss = hidden_states(model.base_model, ids, att, group=2).square().mean()
            else:
                loss = model(input_ids=ids, attention_mask=att).logits.square().mean()
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        out[ckpt] = (loss.item(), grads, kept[0])
        # the first layer is recomputed in the backward, the last one is not
        assert list(runs.values()) == ([2, 1] if ckpt else [1, 1]), runs
    (l0, g0, k0), (l1, g1, k1) = out[False], out[True]
    assert k1 < k0 / 2, (k0, k1)  # all but the last layer's activations are not kept
    assert l1 == pytest.approx(l0, abs=1e-6)
    assert g0.keys() == g1.keys() and len(g0) > 0
    for name in g0:
        assert torch.allclose(g0[name], g1[name], atol=1e-5, rtol=0), name
