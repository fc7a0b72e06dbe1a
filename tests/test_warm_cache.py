"""Jobs that share warm-start settings share one warm start, and get the same game from it."""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import open_dict

from apo import warm_cache
from apo.train import train
from tests.conftest import compose_cfg


def _run(run: Path, cache: Path, *overrides: str) -> list[dict]:
    cfg = compose_cfg(
        ["experiment=tiny", "game.rounds=1", f"game.warm_start_cache={cache}", *overrides],
        run_dir=run,
    )
    with open_dict(cfg):
        cfg.game.save_weights = False
    train(cfg)
    return json.loads((run / "summary.json").read_text())["rounds"]


def _strip_times(rounds):
    return [{k: v for k, v in r.items() if not k.startswith(("time/", "perf/"))} for r in rounds]


def test_cached_warm_start_reproduces_the_game(tmp_path: Path):
    cache = tmp_path / "cache"
    first = _run(tmp_path / "a", cache)
    assert len(list(cache.glob("warm_start_*.pt"))) == 1
    second = _run(tmp_path / "b", cache)
    assert (
        "time/warm_start_s" in second[0]
        and second[0]["time/warm_start_s"] < first[0]["time/warm_start_s"]
    )
    assert _strip_times(first) == _strip_times(second)


def test_key_ignores_round_settings_but_not_warm_start_settings():
    base = warm_cache.warm_start_key(compose_cfg(["experiment=tiny"]))
    assert (
        warm_cache.warm_start_key(
            compose_cfg(["experiment=tiny", "game.apo_coeff=0", "objective=dpo", "game.rounds=7"])
        )
        == base
    )
    for change in (
        "seed=1",
        "rm.warmup.max_epochs=3",
        "policy.optimizer.lr=0.1",
        "game.rm_margin=0.5",
    ):
        assert warm_cache.warm_start_key(compose_cfg(["experiment=tiny", change])) != base, change
