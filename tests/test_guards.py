"""The fit guard's gradient norm serves the clipping: the same clipped steps as Lightning's own
`clip_grad_norm_`, bit for bit, with one norm per step instead of two."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from apo.guards import FiniteGuard, GuardNormClipping
from tests.test_logps import _llama


class _LM(L.LightningModule):
    """A tiny Llama trained on fixed random tokens (the next-token loss)."""

    log_prefix = "t"

    def __init__(self) -> None:
        super().__init__()
        self.model = _llama(64)

    def training_step(self, batch, _):
        return self.model(input_ids=batch, labels=batch).loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-2)


class _Guarded(GuardNormClipping, _LM):
    pass


def _fit(module: L.LightningModule, **clip) -> torch.Tensor:
    data = torch.randint(0, 64, (32, 12), generator=torch.Generator().manual_seed(1))
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[FiniteGuard("policy", 1, 0, "t")],
        **clip,
    )
    trainer.fit(module, train_dataloaders=DataLoader(data, batch_size=4))
    return torch.cat([p.detach().flatten() for p in module.parameters()])


def test_clipping_with_the_guards_norm_steps_as_lightnings_clipping(monkeypatch):
    calls = []
    norm = torch.nn.utils.clip_grad_norm_

    def counted(*args, **kwargs):
        calls.append(1)
        return norm(*args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", counted)
    lightning = _fit(_LM(), gradient_clip_val=0.05)
    assert len(calls) == 8  # Lightning clipped every step itself
    guarded = _fit(_Guarded(), gradient_clip_val=0.05)
    assert len(calls) == 8  # ... and not once with the guard's norm
    assert torch.equal(guarded, lightning)
    # the clipping bit: without it the steps differ
    assert not torch.equal(_fit(_Guarded()), lightning)


def test_clipping_by_value_is_lightnings():
    lightning = _fit(_LM(), gradient_clip_val=0.01, gradient_clip_algorithm="value")
    guarded = _fit(_Guarded(), gradient_clip_val=0.01, gradient_clip_algorithm="value")
    assert torch.equal(guarded, lightning)
    assert not torch.equal(_fit(_Guarded(), gradient_clip_val=0.01), lightning)


@pytest.mark.parametrize("clip", [{}, {"gradient_clip_val": 0.05}])
def test_a_fit_keeps_no_gradient_norm_after_it(clip):
    module = _Guarded()
    _fit(module, **clip)
    assert module._guard_grad_norm is None
