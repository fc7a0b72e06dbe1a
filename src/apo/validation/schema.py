"""The typed schema of every key the game reads, with its ranges (pydantic), and the options
of every policy objective; `apo.validation` checks a config against it."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


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


class Cost(_Node):
    limit: float | None = Field(ge=0, le=1)
    weight: float | None = Field(ge=0)
    lr: float = NonNeg
    multiplier: Literal["step", "solve"]
    init: float = NonNeg


class Lookahead(_Node):
    beams: int = NonNeg
    expand: int = Field(ge=1)
    chunk: int = Field(ge=1)


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
    eval_lookahead: Lookahead
    save_weights: bool
    num_text_samples: int = NonNeg
    rm_loss: str
    rm_margin: float = NonNeg
    rm_centering_coeff: float = NonNeg
    uncertainty_penalty: float = NonNeg
    cost: Cost
    #: more RMs the policy is aligned on, by name (checked by `apo.game.judge_rms.specs`)
    judges: dict[str, dict[str, Any]]
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
    weights: Literal["gathered", "sharded"]


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
    activation_checkpointing: bool
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


class Ensemble(_Node):
    size: int = Field(ge=1)
    bootstrap: float = Field(ge=0, lt=1)


class Denoise(_Node):
    rule: Literal["none", "flip", "drop", "soften"]
    fraction: float = Field(ge=0, le=1)
    smoothing: float = Field(ge=0, le=1)
    adaptive_margin: float = NonNeg


class RM(Player):
    pooling: Literal["last", "eos", "average", "max"]
    ensemble: Ensemble
    denoise: Denoise
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
    zero: dict[str, Any] | None = None

    @field_validator("zero")
    @classmethod
    def _zero(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        from apo.zero_sizes import check

        return check(v, where="zero")


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
    malloc_mmap_threshold_kb: int | None = Field(default=None, gt=0)
    hugepages: bool
    progress: Literal["auto", "rich", "lines", "off"]
    progress_every_s: float | None = Field(gt=0)


#: the options of each policy objective, with their ranges (`tests/test_bad_inputs.py` keeps
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
