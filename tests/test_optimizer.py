"""The players' fused AdamW, and its unfused fallback where mixed precision clips gradients."""

from __future__ import annotations

import pytest
from omegaconf import open_dict

from apo.game.loop import GameLoop
from apo.losses.objectives import SFT
from tests.conftest import compose_cfg


@pytest.mark.parametrize(("precision", "fused"), [("32-true", True), ("bf16-mixed", False)])
def test_fits_run_with_the_fused_optimizer_where_the_engine_allows(tmp_path, precision, fused):
    cfg = compose_cfg(["experiment=tiny", f"trainer.precision={precision}"], run_dir=tmp_path)
    with open_dict(cfg):
        cfg.policy.warmup.max_epochs = 1
    assert cfg.policy.optimizer.fused and cfg.rm.optimizer.fused
    game = GameLoop(cfg)
    dm = game.dm
    items = [dm.text_item(i, p, [r], [0.0]) for i, (p, r) in enumerate(dm.data.sft[:64])]
    module = game.players.policy_module(SFT, log_prefix="policy/sft")
    seen = []
    configure = module.configure_optimizers

    def spy():
        opt = configure()
        seen.append(opt.defaults["fused"])
        return opt

    module.configure_optimizers = spy
    result = game.trainers.fit(
        "policy", "warmup", module, dm.listwise_loader(items, "train", 32, True), 0, 0
    )
    assert result.steps == 2 and seen == [fused]
    # nothing of the fit outlives it: no gradients, no Trainer on the module
    assert all(p.grad is None for p in game.players.policy.parameters())
    assert module._trainer is None
