"""The config checked before anything runs: a typed schema of every key the game reads, with
ranges (`apo.validation.schema`), and cross-field checks. An error names the key, the value and
what is allowed; nothing has been written when it is raised.

`validate(cfg)` is called by `apo.train.run_game` before the game is built; the data-dependent
checks (token budgets against the task's or the files' texts) run in `apo.data.budgets` once
the data and tokenizers exist, still before the first phase.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from pydantic import ValidationError

from apo.config import plain
from apo.validation.schema import OBJECTIVE_OPTIONS, PAIRWISE, ConfigError, Train

__all__ = ["ConfigError", "check_sizes", "validate", "validated_or_clean"]


# ---- checking ------------------------------------------------------------------------------------
def _key_and_value(tree: Any, loc: tuple, missing: bool) -> tuple[str, Any]:
    """The dotted config key of a pydantic error location and the value found there. Location
    parts that are not keys of the tree (pydantic's union-member tags) end the key, except the
    last part of a missing key."""
    parts, node = [], tree
    for i, p in enumerate(loc):
        if isinstance(node, dict) and p in node:
            parts.append(str(p))
            node = node[p]
        elif isinstance(node, list) and isinstance(p, int) and p < len(node):
            parts[-1] += f"[{p}]"
            node = node[p]
        else:
            if missing and i == len(loc) - 1:
                parts.append(str(p))
                node = "<missing>"
            break
    return ".".join(parts), node


def _raise(err: ValidationError, tree: Any, prefix: str = "") -> None:
    lines: dict[str, str] = {}
    for e in err.errors():
        key, value = _key_and_value(tree, e["loc"], e["type"] == "missing")
        msg = {"extra_forbidden": "unknown key", "missing": "missing"}.get(e["type"], e["msg"])
        msg = msg.removeprefix("Value error, ")
        lines.setdefault(prefix + key, f"{prefix + key}={value!r}: {msg}")
    raise ConfigError("invalid config: " + "; ".join(lines.values())) from None


def _positions(player: str, node: dict[str, Any]) -> tuple[int | None, str]:
    """The context length of a player's model: its backbone's, or its checkpoint's config."""
    path = node.get("model_name_or_path")
    if path is None:
        b = node.get("backbone") or {}
        return b.get("max_position_embeddings") or b.get("n_positions"), f"{player}.backbone"
    config = Path(str(path)).expanduser() / "config.json"
    if not config.is_file():
        return None, ""  # the checkpoint loader names the missing directory or file
    try:
        c = json.loads(config.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{player}.model_name_or_path: {config} is not valid JSON ({e})") from e
    return c.get("max_position_embeddings") or c.get("n_positions"), str(config)


def check_sizes(c: dict[str, Any]) -> None:
    """The token budgets against each other and the players' context lengths; budgets still
    `null` (sized from the data once it exists, `apo.data.sizing`) are checked then."""
    d, new = c["data"], c["policy"]["generation"]["max_new_tokens"]
    if None in (d["max_prompt_len"], d["max_len"], new):
        return
    if d["max_len"] < d["max_prompt_len"] + new:
        raise ConfigError(
            f"data.max_len={d['max_len']}: below data.max_prompt_len ({d['max_prompt_len']}) + "
            f"policy.generation.max_new_tokens ({new}), so the policy's own samples would be cut "
            "before the players train on them; raise data.max_len"
        )
    needs = {"policy": d["max_prompt_len"] + new, "rm": d["max_len"]}
    for player, need in needs.items():
        limit, where = _positions(player, c[player])
        if limit is not None and need > limit:
            raise ConfigError(
                f"{player}: the game feeds it sequences of up to {need} tokens but its model "
                f"({where}) has max_position_embeddings={limit}; lower data.max_len / "
                "data.max_prompt_len / policy.generation.max_new_tokens or use a longer model"
            )


def _cross_checks(c: dict[str, Any]) -> None:
    g, o = c["game"], c["objective"]
    k = g["samples_per_prompt"]
    if o["name"] in PAIRWISE and k < 2:
        raise ConfigError(
            f"game.samples_per_prompt={k}: objective={o['name']} learns from pairs of a prompt's "
            "samples, so it needs at least 2"
        )
    top_n = o["loss"].get("top_n", 1) if o["name"] == "rjs" else 1
    if max(top_n if isinstance(top_n, list) else [top_n], default=1) > k:
        raise ConfigError(
            f"objective.loss.top_n={top_n}: more than the {k} samples per prompt "
            "(game.samples_per_prompt)"
        )
    check_sizes(c)
    strategies = {"strategy": c["strategy"]}
    for key in ("rm_strategy", "policy_strategy"):
        if c.get(key):
            strategies[key] = c[key]
    for key, s in strategies.items():
        if s["name"] == "auto" and s["devices"] != 1:
            raise ConfigError(
                f"{key}.devices={s['devices']}: strategy auto runs one process; pick ddp, fsdp "
                "or a deepspeed strategy for several"
            )


def _check_schedules(c: dict[str, Any]) -> None:
    """Every per-round schedule has one value per round (`apo.game.plan.per_round`)."""
    from apo.game.plan import per_round

    rounds = c["game"]["rounds"]
    keys = {"game.apo_coeff": c["game"]["apo_coeff"], "objective.lr": c["objective"]["lr"]}
    keys["objective.mixture"] = c["objective"]["mixture"]
    keys |= {f"objective.loss.{k}": v for k, v in c["objective"]["loss"].items()}
    for key, value in keys.items():
        try:
            per_round(value, rounds, key)
        except ValueError as e:
            raise ConfigError(str(e)) from None


def _check_trainer_args(c: dict[str, Any]) -> None:
    """Every Trainer setting (`trainer`, `<player>.warmup` / `.round`) must be a Trainer
    argument, so that a typo fails now and not at the round-1 policy fit."""
    import inspect

    import lightning as L

    known = set(inspect.signature(L.Trainer.__init__).parameters) - {"self"}
    groups = {"trainer": c["trainer"]}
    for player in ("policy", "rm"):
        for stage in ("warmup", "round"):
            groups[f"{player}.{stage}"] = c[player][stage] or {}
    test_rm = dict(c["data"].get("test_rm") or {})
    test_rm.pop("backbone", None)
    groups["data.test_rm"] = test_rm
    for where, node in groups.items():
        for key, value in node.items():
            if key not in known:
                raise ConfigError(f"{where}.{key}: not a Lightning Trainer argument")
            if value is None:
                continue
            integer = isinstance(value, int) and not isinstance(value, bool)
            if key in ("max_epochs", "max_steps", "log_every_n_steps") and not (
                integer and value >= -1
            ):
                raise ConfigError(f"{where}.{key}={value!r}: expected an integer")
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if key == "gradient_clip_val" and not (number and math.isfinite(value) and value >= 0):
                raise ConfigError(f"{where}.{key}={value!r}: expected a number >= 0")
            if key == "accumulate_grad_batches" and not (integer and value >= 1):
                raise ConfigError(f"{where}.{key}={value!r}: expected an integer >= 1")
    _check_accumulation(c, groups)


def _check_accumulation(c: dict[str, Any], groups: dict[str, dict[str, Any]]) -> None:
    """The online objectives step their optimizer themselves (their minibatches are the
    accumulation): a policy round fit that accumulates cannot be honoured there."""
    from apo.losses.objectives import POLICY_OBJECTIVES

    spec = POLICY_OBJECTIVES.get(c["objective"]["name"])
    if spec is None or not spec.online:
        return
    for where in ("policy.round", "trainer"):
        k = groups[where].get("accumulate_grad_batches")
        if k is not None:
            if k > 1:
                raise ConfigError(
                    f"{where}.accumulate_grad_batches={k}: objective={c['objective']['name']} "
                    "steps its optimizer itself per rollout minibatch, so its round fits "
                    f"cannot accumulate; set {where}.accumulate_grad_batches=1"
                    + (
                        " (or policy.round.accumulate_grad_batches=1 to accumulate in the "
                        "other fits)"
                        if where == "trainer"
                        else ""
                    )
                )
            return


def validate(cfg: DictConfig) -> dict[str, Any]:
    """Check the composed `apo-train` config; return it as plain containers. Raises
    `ConfigError` naming the first bad key (with its value and what is allowed)."""
    from apo.losses.objectives import POLICY_OBJECTIVES

    tree = {k: plain(cfg[k]) for k in cfg if k != "hydra"}
    try:
        Train.model_validate(tree)
    except ValidationError as e:
        _raise(e, tree)
    name = tree["objective"]["name"]
    if name not in OBJECTIVE_OPTIONS or name not in POLICY_OBJECTIVES:
        raise ConfigError(f"objective.name={name!r}: unknown; known: {sorted(OBJECTIVE_OPTIONS)}")
    _check_schedules(tree)
    rounds, loss = tree["game"]["rounds"], tree["objective"]["loss"]
    for r in range(max(rounds, 1)):
        # each round's options (a per-round schedule gives each round its own)
        options = {k: v[r] if isinstance(v, list) and rounds else v for k, v in loss.items()}
        try:
            OBJECTIVE_OPTIONS[name].model_validate(options)
        except ValidationError as e:
            _raise(e, options, prefix="objective.loss.")
    _cross_checks(tree)
    _check_trainer_args(tree)
    return tree


def validated_or_clean(cfg: DictConfig) -> dict[str, Any]:
    """`validate(cfg)`; on a `ConfigError` the run dir is removed again when it is empty (Hydra
    creates it before the game starts), so a refused config leaves nothing behind."""
    try:
        return validate(cfg)
    except ConfigError:
        run_dir = Path(str(cfg.get("run_dir") or ""))
        if run_dir.name and run_dir.is_dir() and not any(run_dir.iterdir()):
            run_dir.rmdir()
        raise
