"""`apo-train-rm comparisons=<file> output=<dir> [golden=<file> samples=<file>]`: fit a reward
model on human comparisons (the base RM), plus the APO term on golden answers vs policy samples
when `golden` and `samples` are given (weight `game.apo_coeff`); saved with `save_pretrained`."""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from pathlib import Path

import hydra
from omegaconf import DictConfig

from apo.train import CONFIG_PATH, quiet_libraries

log = logging.getLogger(__name__)


def _apo_sets(cfg: DictConfig) -> tuple[dict[str, str], list]:
    """`{query: golden}` and the sample sets of the RM split, joined by `query_id`."""
    if bool(cfg.golden) != bool(cfg.samples):
        raise ValueError(
            "the APO term needs both golden= (golden answers) and samples= (policy samples)"
        )
    if not cfg.golden:
        return {}, []
    from apo.data.adapters import load_golden
    from apo.steps.common import read_sample_sets

    golden = load_golden(cfg.golden)
    sets = read_sample_sets(cfg.samples)
    out = {}
    for s in sets:
        if s.query_id not in golden:
            raise s.where.error(
                f"query_id {s.query_id!r} has no golden answer in {cfg.golden}", "query_id"
            )
        out[s.query] = golden[s.query_id]
    return out, sets


def train_rm(cfg: DictConfig) -> dict[str, float]:
    # imported here: `apo-train-rm --help` must not wait for torch and Lightning
    import lightning as L
    from hydra.utils import instantiate
    from transformers import AutoModelForSequenceClassification

    from apo.config import plain
    from apo.data.game_data import GameData, ListwiseItem
    from apo.data.text_tokenizer import train_bpe_tokenizer
    from apo.distributed import full_state_dict, is_global_zero, predict_gathered
    from apo.export import save_player
    from apo.game.plan import rm_objective
    from apo.game.players import reward_module
    from apo.metrics import pairwise_agreement
    from apo.modules.backbones import build_sequence_classifier, reading
    from apo.records import write_json
    from apo.steps.common import (
        check_lengths,
        datamodule,
        load_tokenizer,
        make_trainer,
        model_dir,
        read_sample_sets,
    )

    L.seed_everything(cfg.seed, verbose=False)
    human_sets = read_sample_sets(cfg.comparisons, need_scores=True)
    val_sets = read_sample_sets(cfg.val, need_scores=True) if cfg.val else []
    golden, apo_sets = _apo_sets(cfg)
    apo_coeff = float(cfg.game.apo_coeff)
    if apo_sets and apo_coeff == 0:
        log.warning("game.apo_coeff=0: the golden answers and samples are not used")
    if cfg.init:
        d = model_dir(cfg.init, "rm")
        tok = load_tokenizer(d)
        with reading("init", d, "reward model"):
            model = AutoModelForSequenceClassification.from_pretrained(str(d))
    else:
        if cfg.tokenizer:
            tok = load_tokenizer(Path(cfg.tokenizer))
        else:
            texts = [t for s in human_sets for t in (s.query, *s.samples)]
            tok = train_bpe_tokenizer(
                texts + [t for kv in golden.items() for t in kv], cfg.vocab_size
            )
        model = build_sequence_classifier(instantiate(cfg.rm.backbone), tok, cfg.seed)
    use_apo = bool(apo_sets) and apo_coeff != 0
    objective = replace(
        rm_objective(cfg.game),
        apo_coeff=apo_coeff if apo_sets else 0.0,
        samples_per_prompt=max((len(s.samples) for s in apo_sets), default=1),
    )
    rm = reward_module(
        model,
        str(cfg.rm.pooling),
        tok.eos_token_id,
        objective,
        instantiate(cfg.rm.optimizer),
        "rm/train",
    )
    probe = datamodule(tok, cfg)
    human_sets = check_lengths(probe, Path(cfg.comparisons), human_sets, cfg.overlength)
    if apo_sets:
        apo_sets = check_lengths(probe, Path(cfg.samples), apo_sets, cfg.overlength)
    items = lambda sets: [ListwiseItem(s.query, s.samples, s.scores) for s in sets]  # noqa: E731
    data = GameData(
        human_train=items(human_sets),
        human_val=items(val_sets),
        rm_prompts=[s.query for s in apo_sets],
        golden=golden,
    )
    dm = datamodule(tok, cfg, data, seed=cfg.seed)
    apo_records = [
        {
            "prompt": s.query,
            "responses": [tok(t, add_special_tokens=False)["input_ids"] for t in s.samples],
        }
        for s in apo_sets
    ]
    trainer = make_trainer(cfg, plain(cfg.fit))
    trainer.fit(rm, train_dataloaders=dm.rm_loader(apo_records if use_apo else None))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    metrics["human_items"], metrics["apo_items"] = (
        len(human_sets),
        len(apo_sets) if use_apo else 0,
    )
    if val_sets:
        val = predict_gathered(
            make_trainer(cfg), rm, dm.listwise_loader(dm.human_items(data.human_val), "score")
        )
        metrics["rm/val/acc"] = pairwise_agreement(
            [v["rewards"] for v in val], [it.scores for it in data.human_val]
        )
    if not all(math.isfinite(v) for v in metrics.values()):
        raise FloatingPointError(f"RM training diverged: {metrics}; lower rm.optimizer.lr")
    weights = full_state_dict(model)  # a collective when the engine shards the RM
    if is_global_zero():
        out = save_player(model, tok, cfg.output, state_dict=weights)
        write_json(out / "train_metrics.json", metrics)
        log.info("saved the RM to %s: %s", out, metrics)
    return metrics


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train_rm")
def main(cfg: DictConfig) -> None:
    quiet_libraries()
    train_rm(cfg)


if __name__ == "__main__":
    main()
