"""What the per-step statistics and callbacks of a fit cost, measured part by part (so that the
noise of a shared machine, which swamps a few per cent of a whole fit, does not hide them).

    python benchmarks/step_logging.py [hydra overrides]

1. a policy step's forward + backward on the game's policy model and batch shape (the
   reference), 2. the statistics added to every step (TRL's chosen / rejected pairs, the KL
   estimate), 3. the entropy (only on logged steps), 4. the callbacks every step runs
   (FitMonitor, FitWatch), from real Lightning fits with and without them, alternated.
Not a test: it prints numbers.
"""

from __future__ import annotations

import sys
import tempfile
import time

import lightning as L
import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.utils import benchmark

from apo.data.sources import build_game_data, build_tokenizer
from apo.losses.pairs import chosen_rejected
from apo.losses.policy import _pair_matrix
from apo.modules.backbones import build_player
from apo.modules.policy import _fit_stats, sequence_logps
from apo.monitors import FitMonitor, FitWatch
from apo.progress import GameWatch
from apo.train import CONFIG_MODULE, quiet_libraries


def timer(stmt, **env) -> float:
    """Seconds of `stmt`: the fastest of torch's benchmark blocks (the least disturbed by
    the machine's other work)."""
    m = benchmark.Timer(stmt=stmt, globals=env).blocked_autorange(min_run_time=2.0)
    return min(m.raw_times) / m.number_per_run


class Tiny(L.LightningModule):
    """A fit whose steps cost almost nothing, so that what the callbacks add shows."""

    log_prefix = "bench/train"

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(8, 1)

    def training_step(self, batch, batch_idx):
        loss = self.layer(batch["x"]).pow(2).mean()
        self.log("bench/train/loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class _Game:  # what GameWatch reads of a game outside one
    state = None


def fit_seconds(callbacks: list, steps: int = 400) -> float:
    data = [{"x": torch.randn(4, 8), "attention_mask": torch.ones(4, 8)} for _ in range(steps)]
    trainer = L.Trainer(
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tempfile.mkdtemp(),
        callbacks=callbacks,
        log_every_n_steps=5,
    )
    t0 = time.perf_counter()
    trainer.fit(Tiny(), train_dataloaders=torch.utils.data.DataLoader(data, batch_size=None))
    return (time.perf_counter() - t0) / steps


def main(overrides: list[str]) -> None:
    quiet_libraries()
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        cfg = compose(config_name="train", overrides=["objective=dpo", *overrides])
    task = instantiate(cfg.task)
    tok = build_tokenizer(cfg, task, build_game_data(cfg, task))
    model, _ = build_player("policy", cfg.policy, cfg.seed, tok, positions=cfg.data.max_len)
    B, k, T = int(cfg.policy.batch_size), 2, int(cfg.data.max_len)  # DPO: best and worst
    ids = torch.randint(0, len(tok), (B * k, T))
    am = torch.ones_like(ids)
    env = {"sequence_logps": sequence_logps, "model": model, "ids": ids, "am": am}
    step = timer("lp, n = sequence_logps(model, ids, am, am); lp.sum().backward()", **env)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=am).logits[:, :-1]
    # what `entropy=True` adds to the step's forward: a softmax over the vocabulary
    entropy = timer(
        "lp = torch.log_softmax(logits.float(), -1); (-(lp.exp() * lp).sum(-1) * m).sum(-1)",
        torch=torch,
        logits=logits,
        m=am[:, 1:].float(),
    )
    logps, ref, scores = -torch.rand(B, k) * 10, -torch.rand(B, k) * 10, torch.rand(B, k)
    mask, lengths = torch.ones(B, k, dtype=torch.bool), torch.full((B, k), 10.0)
    P = _pair_matrix(scores, mask, "best_worst")
    stats = timer(
        "chosen_rejected(0.1 * (logps - ref), P, mask, logps); "
        "_fit_stats(logps, ref, mask, lengths, [])",
        chosen_rejected=chosen_rejected,
        _fit_stats=_fit_stats,
        logps=logps,
        ref=ref,
        P=P,
        mask=mask,
        lengths=lengths,
    )
    watch = GameWatch(OmegaConf.create({"progress": "lines", "progress_every_s": 60}), _Game())
    bare, watched = [], []
    for _ in range(7):  # alternated, so the machine's load shifts both alike
        bare.append(fit_seconds([]))
        watched.append(fit_seconds([FitMonitor("bench/train"), FitWatch(watch)]))
    callbacks = min(watched) - min(bare)
    every = int(cfg.trainer.log_every_n_steps)
    added = stats + callbacks + entropy / every
    print(
        f"\npolicy model {sum(p.numel() for p in model.parameters()):,} parameters, batch {B}x{k}x{T}"
    )
    print(f"a policy step's forward + backward          {1e3 * step:9.2f} ms")
    print(f"pair and KL statistics, every step           {1e6 * stats:9.1f} us")
    print(f"entropy, every {every} steps (log_every_n_steps)  {1e6 * entropy:9.1f} us")
    print(f"FitMonitor + FitWatch callbacks, every step  {1e6 * callbacks:9.1f} us")
    print(f"  (a bare Lightning step here {1e6 * min(bare):.0f} us)")
    print(
        f"added per step on average                    {1e6 * added:9.1f} us = "
        f"{100 * added / step:.2f} % of the step"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
