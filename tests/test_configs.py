"""Every shipped config file composes, and every `_target_` in it resolves to a real object."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.utils import get_class, get_method
from omegaconf import OmegaConf, open_dict

from apo.losses.objectives import POLICY_OBJECTIVES
from apo.train import CONFIG_DIR
from tests.conftest import compose_cfg

GROUPS = {
    p.name: sorted(f.stem for f in p.glob("*.yaml"))
    for p in Path(CONFIG_DIR).iterdir()
    if p.is_dir() and p.name not in ("hydra", "__pycache__")
}
#: groups mounted at another package in train.yaml
MOUNT = {"backbone": "backbone@policy.backbone"}
CASES = [(g, o) for g, opts in sorted(GROUPS.items()) for o in opts]


def _targets(node, path=""):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "_target_":
                yield path, v
            else:
                yield from _targets(v, f"{path}.{k}" if path else k)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _targets(v, f"{path}[{i}]")


@pytest.mark.parametrize(("group", "option"), CASES, ids=[f"{g}={o}" for g, o in CASES])
def test_config_option_composes(group: str, option: str, tmp_path):
    cfg = compose_cfg([f"{MOUNT.get(group, group)}={option}"], run_dir=tmp_path, hydra_config=True)
    with open_dict(cfg):
        cfg.pop("hydra")
    plain = OmegaConf.to_container(cfg, resolve=True)
    for where, target in _targets(plain):
        try:
            get_class(target)
        except Exception:
            assert callable(get_method(target)), f"{group}={option}: {where} -> {target}"


def test_every_objective_has_a_config_and_back():
    configs = set(GROUPS["objective"])
    assert configs == set(POLICY_OBJECTIVES) - {"sft"}, "objective configs and registry differ"
    for name in configs:
        assert compose_cfg([f"objective={name}"]).objective.name == name


def test_per_player_strategy_override():
    cfg = compose_cfg(["strategy@rm_strategy=ddp"])
    assert cfg.strategy.name == "auto" and cfg.rm_strategy.name == "ddp"
    assert cfg.get("policy_strategy") is None


def test_the_scale_experiment_plays_two_300m_players():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = compose_cfg(["experiment=scale"])
    for player in ("policy", "rm"):
        node = {k: v for k, v in cfg[player].backbone.items() if k != "_target_"}
        with torch.device("meta"):  # no memory: the sizes only
            model = LlamaForCausalLM(LlamaConfig(**node, vocab_size=20))
        assert 300e6 < sum(p.numel() for p in model.parameters()) < 320e6
    assert cfg.game.rounds == 1 and cfg.game.save_weights is False
