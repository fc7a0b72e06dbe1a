"""DeepSpeed's buffers and ZeRO-3's working set, sized from the player it runs.

DeepSpeed's own defaults are made for billions of parameters: 2e8-element gradient buckets
(800 MB in fp32, whatever the model) and, under ZeRO-3, up to 1e9 parameters kept gathered and
none released that is reused within 1e9 parameters — so a player under ~0.5B parameters stays
gathered whole on every rank through its forward and backward passes, and ZeRO-3 holds more
per rank than DDP (measured on the 308M game: 10.0 GB per rank at the warm start, DDP 7.7 GB).

`auto` sizes every entry from the player instead (width `h`, largest decoder layer `L`
parameters): the buckets `h²` and ZeRO-3's prefetch `0.9 h²`, parameters under `10 h` elements
kept gathered (transformers' `auto` values for its DeepSpeed integration), and at most `3 L`
parameters gathered, released unless reused within `L` — a layer at a time, as FSDP reshards
after each layer —, and the optimizer stepped in sub-groups of `L` parameters: ZeRO-3 copies a
sub-group's gradients into one flat fp32 tensor for its step, and Lightning's one sub-group
of 1e12 made that a second copy of all of a rank's gradients at every step. A number is used
as it is; null leaves the entry to Lightning / DeepSpeed.
"""

from __future__ import annotations

from typing import Any

from torch import nn

#: the `strategy.zero` entries, each the `zero_optimization` key of DeepSpeed's config
KEYS = (
    "reduce_bucket_size",
    "allgather_bucket_size",
    "stage3_prefetch_bucket_size",
    "stage3_param_persistence_threshold",
    "stage3_max_live_parameters",
    "stage3_max_reuse_distance",
    "sub_group_size",
)


def check(settings: dict[str, Any] | None, where: str = "strategy.zero") -> dict[str, Any]:
    """The settings, checked: known keys, each `auto`, null or a positive integer."""
    settings = dict(settings or {})
    for key, value in settings.items():
        if key not in KEYS:
            raise ValueError(f"{where}.{key}: unknown; expected one of {', '.join(KEYS)}")
        ok = value is None or value == "auto"
        ok = ok or (isinstance(value, int | float) and value >= 1 and float(value).is_integer())
        if not ok:
            raise ValueError(
                f"{where}.{key}: expected auto, null or a positive integer, got {value!r}"
            )
    return settings


def decoder_layer_names(model: nn.Module) -> set[str]:
    """Class names of a transformers model's decoder layers (its `_no_split_modules`)."""
    names: set[str] = set()
    for m in model.modules():
        names.update(getattr(m, "_no_split_modules", None) or [])
    return names


def _numel(p: nn.Parameter) -> int:
    return int(getattr(p, "ds_numel", 0)) or p.numel()  # a ZeRO-3 partition holds a slice


def player_shape(model: nn.Module) -> tuple[int | None, int | None]:
    """(width, parameters of the largest decoder layer) of the transformers models in `model`;
    None where it has none (a model without `config.hidden_size` or `_no_split_modules`)."""
    layers = decoder_layer_names(model)
    widths = [getattr(getattr(m, "config", None), "hidden_size", None) for m in model.modules()]
    widths = [h for h in widths if isinstance(h, int)]
    sizes = [
        sum(_numel(p) for p in m.parameters())
        for m in model.modules()
        if type(m).__name__ in layers
    ]
    return (max(widths) if widths else None), (max(sizes) if sizes else None)


def zero_sizes(model: nn.Module, settings: dict[str, Any] | None) -> dict[str, int]:
    """The `zero_optimization` entries for `model`: `auto` ones computed (see the module), the
    others as given; entries left to DeepSpeed (null, or `auto` where the shape is unknown) are
    absent."""
    h, layer = player_shape(model)
    auto = {}
    if h:
        auto |= {
            "reduce_bucket_size": h * h,
            "allgather_bucket_size": h * h,
            "stage3_prefetch_bucket_size": int(0.9 * h * h),
            "stage3_param_persistence_threshold": 10 * h,
        }
    if layer:
        auto |= {
            "stage3_max_live_parameters": 3 * layer,
            "stage3_max_reuse_distance": layer,
            "sub_group_size": layer,
        }
    out = {}
    for key, value in check(settings).items():
        if value == "auto":
            if key in auto:
                out[key] = auto[key]
        elif value is not None:
            out[key] = int(value)
    return out
