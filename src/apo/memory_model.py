"""What a rank holds at the peak of a game's fits, engine by engine: a memory model in bytes per
parameter, checked against measured 300M games (`benchmarks/scale.py`) and used to say what
each engine needs for larger players.

A fit of one player (the RM's or the policy's) holds, per rank:

- the weights of every live copy: the fitted player, the other player, the frozen reference
  policy and the base RM (`game.rm_init: base`); split over the ranks where the engine shards
  them (FSDP and ZeRO-3: every copy, the reference and the base RM as each rank's own part);
- the fitted player's gradients (split under ZeRO-2/3 and FSDP), and DDP's reducer buckets (a
  second gradient copy);
- AdamW's two moments (split under ZeRO and FSDP), and DeepSpeed's fp32 master partition
  (ZeRO-2 and offload: a second copy of the fitted player's part even in fp32; ZeRO-3 steps
  fp32 weights in place, `apo.deepspeed_fixes`; it also copies one optimizer sub-group's
  gradients at its step: one layer with `strategy.zero` sized, not counted);
  offload keeps both on the host, with a second fp32 gradient partition (each optimizer
  sub-group's own buffer): off the device on GPUs, the same RAM on a CPU-only host;
- one layer gathered in full, and the next prefetched (FSDP; ZeRO-3 with its working set
  sized from the player, `apo.zero_sizes`);
- activations: per token and layer `10 h + 4 i + a` values (width h, MLP width i, a heads) for
  a transformers Llama layer with SDPA attention, counted exactly by the tensors autograd saves
  (`saved_tensors_hooks`, at several widths and lengths; no `s^2` term: SDPA keeps no attention
  matrix), `h` with activation checkpointing (the layer inputs);
- what the process holds besides (libraries, data, the sampler): `base` bytes, measured.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Engine:
    """Which of a fit's tensors an engine splits over the ranks, and what it adds."""

    copies_sharded: tuple[str, ...] = ()  # the live copies split over the ranks
    grads_sharded: bool = False
    optimizer_sharded: bool = False
    master: bool = False  # DeepSpeed's fp32 partition of the weights the optimizer steps
    fp32_in_place: bool = False  # ZeRO-3: no master copy of weights already in fp32
    grad_buckets: bool = False  # DDP: the reducer's buckets, a second gradient copy
    gathers_layers: bool = False  # a layer (and the next) gathered in full as it runs
    offload: bool = False  # optimizer state and master weights on the host


ALL = ("fitted", "other", "ref", "rm_base")
ENGINES = {
    "auto": Engine(),
    "ddp": Engine(grad_buckets=True),
    "fsdp": Engine(ALL, True, True, gathers_layers=True),
    "deepspeed_stage_2": Engine((), True, True, master=True),
    "deepspeed_stage_3": Engine(ALL, True, True, True, fp32_in_place=True, gathers_layers=True),
    "deepspeed_stage_3_offload": Engine(ALL, True, True, True, gathers_layers=True, offload=True),
}


@dataclass(frozen=True)
class Player:
    """A player's size: parameters, decoder layers, their width, MLP width and heads."""

    params: int
    layers: int
    hidden: int
    heads: int
    intermediate: int = 0  # 0: 4 x hidden

    @property
    def layer_params(self) -> int:
        return self.params // max(self.layers, 1)


def fit_bytes(
    engine: str,
    world: int,
    fitted: Player,
    copies: dict[str, int],
    tokens: int,
    base: float = 0.0,
    bytes_per_param: int = 4,
    checkpointing: bool = False,
    device_only: bool = False,
) -> dict[str, float]:
    """Bytes one rank holds at the peak of a fit of `fitted`, by part: `copies` are the
    parameters of every live copy by name (`ALL`); `tokens` per micro-batch. `device_only`: what an accelerator holds (offloaded state and `base` are on
    the host)."""
    e, b, w = ENGINES[engine], bytes_per_param, max(world, 1)
    out = {f"weights/{n}": copies[n] * b / (w if n in e.copies_sharded else 1) for n in ALL}
    out["grads"] = fitted.params * b / (w if e.grads_sharded else 1)
    out["grad_buckets"] = fitted.params * b if e.grad_buckets else 0.0
    # offload: the optimizer's own fp32 gradient partition on the host, beside the flat buffer
    out["host_grads"] = fitted.params * 4 / w if e.offload and not device_only else 0.0
    on_host = e.offload and device_only
    out["optimizer"] = 0.0 if on_host else 2 * fitted.params * 4 / (w if e.optimizer_sharded else 1)
    copied = e.master and not on_host and not (e.fp32_in_place and b == 4)
    out["master"] = fitted.params * 4 / w if copied else 0.0
    out["gathered_layers"] = 2 * fitted.layer_params * b if e.gathers_layers else 0.0
    h, i = fitted.hidden, fitted.intermediate or 4 * fitted.hidden
    values = h if checkpointing else 10 * h + 4 * i + fitted.heads  # per token and layer
    out["activations"] = tokens * fitted.layers * values * b
    out["base"] = 0.0 if device_only else base
    out["total"] = sum(out.values())
    return out


def game_peak(
    engine: str,
    world: int,
    policy: Player,
    rm: Player,
    policy_tokens: int,
    rm_tokens: int,
    **kw,
) -> dict[str, dict[str, float]]:
    """Each fit's parts (see `fit_bytes`), `{"rm_fit": ..., "policy_fit": ...}`: both hold the
    two players, the reference (the policy's size) and the base RM (the RM's)."""
    return {
        "rm_fit": fit_bytes(
            engine,
            world,
            rm,
            {
                "fitted": rm.params,
                "other": policy.params,
                "ref": policy.params,
                "rm_base": rm.params,
            },
            rm_tokens,
            **kw,
        ),
        "policy_fit": fit_bytes(
            engine,
            world,
            policy,
            {
                "fitted": policy.params,
                "other": rm.params,
                "ref": policy.params,
                "rm_base": rm.params,
            },
            policy_tokens,
            **kw,
        ),
    }


def llama(params_b: float) -> Player:
    """The Llama shapes of the usual sizes (1B: Llama-3.2-1B; 7B: Llama-2-7B; 70B: Llama-2-70B,
    counted with full-width attention)."""
    shapes = {1: (16, 2048, 32, 8192), 7: (32, 4096, 32, 11008), 70: (80, 8192, 64, 28672)}
    layers, hidden, heads, intermediate = shapes[int(params_b)]
    return Player(int(params_b * 1e9), layers, hidden, heads, intermediate)
