"""The config checked before anything runs: a typed schema of every key the game reads, with
ranges and cross-field checks. An error names the key, the value and what is allowed; nothing
has been written when it is raised.

`validate(cfg)` is called by `apo.train.train` before the game is built; the data-dependent
checks (token budgets against the task's or the files' texts) run in `apo.data.budgets` once
the data and tokenizers exist, still before the first phase.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any, Literal

from omegaconf import DictConfig
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from apo.config import plain


class ConfigError(ValueError):
    """A config value the game cannot play with; the message names the key."""


# ---- the schema ----------------------------------------------------------------------------------
class _Node(BaseModel):
    # unknown keys are refused: `+game.apo_coef=1` must not pass silently
    model_config = ConfigDict(extra="forbid")


class _Open(BaseModel):
    # groups that pass their keys on to a library (Trainer, optimizers) are checked elsewhere
    model_config = ConfigDict(extra="allow")


PosFloat = Field(gt=0)
NonNeg = Field(ge=0)


class Guard(_Node):
    max_kl: float | None = Field(gt=0)
    min_entropy: float | None = Field(ge=0)
    min_warm_start: float | None = Field(ge=0)
    min_onpolicy_acc: float | None = Field(ge=0, le=1)
    action: Literal["warn", "stop"]


NonNegFloat = Annotated[float, Field(ge=0)]
PosFloat_ = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]


class Game(_Node):
    # 0 = the warm start and its evaluation only (final/ holds the warm-started players)
    rounds: int = Field(ge=0)
    samples_per_prompt: int = Field(ge=1)
    #: one value, or a per-round schedule (checked against `rounds` below)
    apo_coeff: NonNegFloat | list[NonNegFloat]
    apo_loss: Literal["ranking", "diff"]
    apo_weighting: Literal["reference", "per_part"]
    rm_init: Literal["base", "continue"]
    apo_history: Literal["round", "all"] | Annotated[int, Field(ge=1)]
    reference: Literal["fixed", "round"]
    rm_kl_coeff: float = NonNeg
    eval_samples_per_prompt: int = Field(ge=1)
    save_weights: bool
    num_text_samples: int = NonNeg
    rm_loss: str
    rm_margin: float = NonNeg
    rm_centering_coeff: float = NonNeg
    warm_start_cache: str | None
    round_phases: list[str] = Field(min_length=1)
    guard: Guard

    @field_validator("rm_loss")
    @classmethod
    def _known_rm_loss(cls, v: str) -> str:
        from apo.losses.rm import RM_LOSSES

        if v not in RM_LOSSES:
            raise ValueError(f"must be one of {sorted(RM_LOSSES)}")
        return v


class Generation(_Node):
    # null = sized from the data (apo.data.sizing)
    max_new_tokens: int | None = Field(ge=1)
    temperature: float = PosFloat
    top_k: int = NonNeg
    top_p: float = Field(gt=0, le=1)


class Optimizer(_Open):
    lr: float = PosFloat


class Lora(_Node):
    r: int | None = Field(ge=1)
    alpha: float = PosFloat
    dropout: float = Field(ge=0, lt=1)
    target_modules: str | list[str]


class Player(_Open):
    batch_size: int = Field(ge=1)
    optimizer: Optimizer
    warmup: dict[str, Any]
    round: dict[str, Any]
    model_name_or_path: str | None
    trust_remote_code: bool
    prompt_template: str | None
    separator: str | None
    chat_template: Literal["auto"] | bool
    lora: Lora

    @field_validator("prompt_template")
    @classmethod
    def _has_placeholder(cls, v: str | None) -> str | None:
        if v is not None and "{prompt}" not in v:
            raise ValueError("must contain the {prompt} placeholder")
        return v


class Policy(Player):
    sft_batch_size: int = Field(ge=1)
    generation: Generation


class RM(Player):
    pooling: Literal["last", "eos", "average", "max"]
    apo_batch_size: int = Field(ge=1)
    calibration_bins: int = Field(ge=1)


class Data(_Open):
    source: str
    sizes: dict[str, int | None]
    # null = sized from the data (apo.data.sizing)
    max_prompt_len: int | None = Field(ge=2)
    max_len: int | None = Field(ge=3)
    predict_batch_size: int = Field(ge=1)
    overlength: Literal["truncate", "skip", "error"]

    @field_validator("source")
    @classmethod
    def _known_source(cls, v: str) -> str:
        from apo.data.sources import SOURCES

        if v not in SOURCES:
            raise ValueError(f"must be one of {list(SOURCES)}")
        return v

    @field_validator("sizes")
    @classmethod
    def _sizes(cls, v: dict[str, int | None]) -> dict[str, int | None]:
        bad = {k: n for k, n in v.items() if n is not None and n < 0}
        if bad:
            raise ValueError(f"split sizes must be >= 0, got {bad}")
        return v


class Strategy(_Open):
    name: Literal["auto", "ddp", "fsdp", "deepspeed"]
    devices: int = Field(ge=1)


class Objective(_Node):
    name: str
    loss: dict[str, Any]
    lr: PosFloat_ | None | list[PosFloat_ | None]
    mixture: Fraction | list[Fraction]


class Train(_Open):
    seed: int = NonNeg
    game: Game
    objective: Objective
    policy: Policy
    rm: RM
    data: Data
    trainer: dict[str, Any]
    strategy: Strategy
    rm_strategy: Strategy | None = None
    policy_strategy: Strategy | None = None
    resume: bool
    resume_allow: list[str]
    tensorboard_flush_secs: float = PosFloat
    progress: Literal["auto", "rich", "lines", "off"]
    progress_every_s: float | None = Field(gt=0)


#: the options of each policy objective, with their ranges (`tests/test_validation.py` keeps
#: them in step with the loss functions' keyword options)
OBJECTIVE_OPTIONS: dict[str, type[BaseModel]] = {}


def _options(name: str, **fields: Any) -> None:
    from pydantic import create_model

    OBJECTIVE_OPTIONS[name] = create_model(f"{name}_options", __base__=_Node, **fields)


_pairs = (Literal["best_worst", "all"], ...)
_options("rjs", top_n=(int, Field(ge=1)), threshold=(float | None, ...))
_options("rrhf", sft_weight=(float, NonNeg))
_options("dpo", beta=(float, PosFloat), label_smoothing=(float, Field(ge=0, le=0.5)), pairs=_pairs)
_options("ipo", beta=(float, PosFloat), pairs=_pairs)
_options("slic", delta=(float, NonNeg), reg_weight=(float, NonNeg), pairs=_pairs)
_options("lipo", beta=(float, PosFloat))
_kl = dict(beta=(float, NonNeg), kl_estimator=(Literal["k1", "k3"], ...))
_options(
    "rloo",
    **_kl,
    kl_in=(Literal["reward", "loss"], ...),
    clip=(float | None, ...),
    epochs=(int, Field(ge=1)),
)
_options(
    "grpo",
    **_kl,
    kl_in=(Literal["reward", "loss"], ...),
    clip=(float | None, ...),
    epochs=(int, Field(ge=1)),
    scale_std=(bool, ...),
)
_options(
    "ppo",
    **_kl,
    clip=(float, PosFloat),
    value_clip=(float | None, ...),
    gamma=(float, Field(gt=0, le=1)),
    lam=(float, Field(ge=0, le=1)),
    vf_coeff=(float, NonNeg),
    epochs=(int, Field(ge=1)),
    minibatches=(int, Field(ge=1)),
)
#: objectives that learn from a prompt's several samples (pairs of them, or a group baseline):
#: K must be >= 2
PAIRWISE = ("rrhf", "dpo", "ipo", "slic", "lipo", "rloo", "grpo")


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
