"""Per-rank memory of the engines on the ~300M-parameter game, against the memory model.

    python benchmarks/scale.py                                  # the plan below, ~45 min
    SCALE_PLAN=fsdp:24,ddp:24:1 python benchmarks/scale.py     # engine:layers[:processes]
    SCALE_PLAN=fsdp:24/policy.generation.weights=sharded ...   # /: overrides of one game
    SCALE_PLAN=auto:24*2,fsdp:24 python benchmarks/scale.py    # *2: two games side by side
    python benchmarks/scale.py --project                        # only the 1B/7B/70B table

Each `engine:layers` plays `experiment=scale` (two Llama players of 1024 width; 24 layers are
the 308M `llama_300m`, 6 and 12 its smaller siblings) through `benchmarks/strategies.py`, and
reads every phase's peak resident memory per rank from its summary (`perf/<phase>/peak_rss_mb`:
the highest rank, `_min` the lowest), its fit step times and its generation tokens/s. The
memory model (`apo.memory_model`) predicts the RM fit's peak from the players' sizes and batch;
`base` (libraries, data) is the tiny game's measured peak. Not a test: it prints the tables
for the README.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from apo.memory_model import ENGINES, Player, game_peak, llama  # noqa: E402
from strategies import run  # noqa: E402

#: engine:layers[:processes]; DDP's per-rank memory does not depend on its number of ranks, so
#: at 24 layers, where two DDP ranks do not fit in 24 GB, one DDP process measures it
PLAN = "auto:6,fsdp:6,ddp:6,auto:12,fsdp:12,ddp:12,auto:24,fsdp:24,ddp:24:1"
GB, GIB = 1e9, 2**30


def by_phase(rows: dict, suffix: str) -> dict[str, tuple[float, float]]:
    """A per-rank phase metric (`perf/<phase><suffix>`) of a game's first two rounds, by phase:
    (highest rank, lowest rank)."""
    return {
        k.split("/")[1]: (v, row.get(k + "_min", v))
        for row in rows["rounds"][:2]
        for k, v in row.items()
        if k.startswith("perf/") and k.endswith(suffix)
    }


def measure(engine: str, layers: int, devices: int | None, extra: list[str], out: Path) -> dict:
    """One game of `engine` with `layers`-layer players: its phases' peaks per rank."""
    overrides = [
        "experiment=scale",
        *([f"strategy.devices={devices}"] if devices else []),
        f"policy.backbone.num_hidden_layers={layers}",
        f"rm.backbone.num_hidden_layers={layers}",
        *extra,
    ]
    res = run(engine, overrides, out)
    rows = json.loads((out / "summary.json").read_text())
    cfg = yaml.safe_load((out / ".hydra" / "config.yaml").read_text())
    # phase -> (highest rank, lowest rank): the warm start from round 0, the rest from round 1;
    # and what an offloading engine kept on the host (`apo.host_memory`)
    peaks, offloaded = by_phase(rows, "/peak_rss_mb"), by_phase(rows, "/offloaded_mb")
    weights = cfg["policy"]["generation"]["weights"]
    # the players' state files (~1.2 GB each at 308M per save) would fill the disk over a plan
    for f in [f for f in out.rglob("*") if f.is_file() and f.stat().st_size > 50 * 2**20]:
        f.unlink()
    return {
        **res,
        "layers": layers,
        "peaks": peaks,
        "offloaded": offloaded,
        "cfg": cfg,
        "rows": rows,
        "weights": weights,
    }


def predicted(res: dict, base: float) -> dict:
    """The memory model's RM-fit peak per rank for a measured game."""
    cfg, storage = res["cfg"], res["rows"]["param_storage_bytes"]
    n_ranks = world(res)
    sharded = ENGINES[res["strategy"]].copies_sharded
    # parameters of a player: its ranks' storage summed where the engine splits it
    params = {
        n: (sum(storage[n]) if "fitted" in sharded else storage[n][0]) // 4
        for n in ("policy", "rm")
    }
    bb = cfg["rm"]["backbone"]
    shape = lambda c: (  # noqa: E731
        c["num_hidden_layers"],
        c["hidden_size"],
        c["num_attention_heads"],
        c["intermediate_size"],
    )
    rm = Player(params["rm"], *shape(bb))
    policy = Player(params["policy"], *shape(cfg["policy"]["backbone"]))
    seq = int(cfg["data"]["max_len"])
    k = int(cfg["game"]["samples_per_prompt"])
    rm_seqs = 2 * int(cfg["rm"]["batch_size"]) + (1 + k) * int(cfg["rm"]["apo_batch_size"])
    policy_seqs = int(cfg["policy"]["batch_size"]) * int(cfg["objective"]["loss"].get("top_n", 1))
    fits = game_peak(
        res["strategy"], n_ranks, policy, rm, policy_seqs * seq, rm_seqs * seq, base=base
    )
    return {**fits["rm_fit"], "params": rm.params}


def ranks(peaks: dict, phase: str) -> str:
    """A phase's peak per rank in GiB, highest first (one number where the ranks agree)."""
    values = sorted({x for x in peaks.get(phase, ()) if x is not None}, reverse=True)
    return " / ".join(f"{v / 1024:.2f}" for v in values) or "-"


def project() -> str:
    """What each engine needs per GPU for 1B, 7B and 70B players (policy and RM of one size),
    8 GPUs, bf16 weights and gradients with fp32 AdamW, 2,048-token sequences, micro-batches of
    one pair (RM: 2 sequences and 3 APO sequences with K = 2), activation checkpointing."""
    lines = [
        "| engine | 1B | 7B | 70B | fits 80 GB for |",
        "|---|---|---|---|---|",
    ]
    for engine in ENGINES:
        need = []
        for size in (1, 7, 70):
            p = llama(size)
            fits = game_peak(
                engine,
                8,
                p,
                p,
                2 * 2048,
                5 * 2048,
                bytes_per_param=2,
                checkpointing=True,
                device_only=True,
            )
            need.append(max(f["total"] for f in fits.values()) / GB)
        ok = [s for s, n in zip(("1B", "7B", "70B"), need) if n <= 80] or ["none"]
        lines.append(
            f"| {engine} | " + " | ".join(f"{n:,.0f} GB" for n in need) + f" | {', '.join(ok)} |"
        )
    return "\n".join(lines)


def tiny_base(run_dir: Path) -> float:
    """Bytes a game process holds besides its players: the tiny game's highest phase peak."""
    rows = json.loads((run_dir / "summary.json").read_text())["rounds"]
    return max(v for r in rows for k, v in r.items() if k.endswith("/peak_rss_mb")) * 2**20


def world(r: dict) -> int:
    """A game's ranks (a process count would also see DeepSpeed's compiler helpers)."""
    return len(r["rows"]["param_storage_bytes"]["rm"])


def per_process(r: dict) -> float:
    """A game's round-1 generation tokens/s per game rank."""
    return r["rows"]["rounds"][1].get("perf/generate_tokens_per_s", float("nan")) / world(r)


def with_gather(r: dict) -> float:
    """`per_process` had round 1's generation gathered the sharded policy itself: a sharded
    round-1 generation samples from the copy round 0's evaluation gathered (`apo.gathered`),
    so that gather's seconds are added to the phase's (nothing for unsharded engines)."""
    rounds = r["rows"]["rounds"]
    own = rounds[1].get("perf/generate/gather_s", 0.0)
    taken = 0.0 if own else rounds[0].get("perf/evaluate/gather_s", 0.0)
    t = rounds[1].get("time/generate_s", float("nan"))
    return per_process(r) * t / (t + taken)


def table(results: list[dict], base: float) -> str:
    """The measured peaks per rank against the memory model (GiB), and generation speed."""
    lines = [
        f"base (the tiny game's peak): {base / GIB:.2f} GiB\n",
        "| engine | layers | params per player | warm start peak GiB (ranks) "
        "| RM fit peak GiB (ranks) | model GiB | model / measured | policy fit peak GiB "
        "| on the device GiB | generation tok/s per process | auto's / this |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    autos = {r["layers"]: r for r in results if r["strategy"] == "auto"}
    for r in results:
        model = predicted(r, base)
        p, m = r["peaks"], model["total"] / GIB
        per_proc = per_process(r)
        a = autos.get(r["layers"])
        vs = per_process(a) / per_proc if a else None
        sharded = " sharded gen." if r.get("weights") == "sharded" else ""
        # the RM fit's peak less what offload kept on the host (the same RAM here; a GPU's not)
        off = r.get("offloaded", {}).get("rm_fit", (0, 0))
        device = " / ".join(f"{(x - o) / 1024:.2f}" for x, o in zip(p["rm_fit"], off))
        lines.append(
            f"| {r['strategy']} ({world(r)}){sharded} | {r['layers']} | {model['params'] / 1e6:.0f}M "
            f"| {ranks(p, 'warm_start')} | {ranks(p, 'rm_fit')} | {m:.2f} "
            f"| {m * 1024 / p['rm_fit'][0]:.2f} | {ranks(p, 'policy_fit')} | {device} "
            f"| {per_proc:,.0f} | {'-' if vs is None else f'{vs:.2f}x'} |"
        )
    return "\n".join(lines)


def generation(results: list[dict]) -> str:
    """Generation tokens/s per process, median [min-max] over a plan's repeated games, against
    `auto` and `ddp` with as many processes on the machine (`auto:L*2`: two one-process games
    side by side): the processes share this machine's cores, so only equal counts compare."""
    groups: dict[tuple, list[float]] = {}
    for r in results:
        own = " ".join(r.get("own", []))  # a plan item's own overrides: a group of their own
        key = (r["strategy"], world(r), r.get("beside", 1), r["layers"], r.get("weights"), own)
        groups.setdefault(key, []).append((per_process(r), with_gather(r)))
    # (engine, processes on the machine, layers) -> median tok/s per process (the first group)
    base: dict[tuple, float] = {}
    for (e, w, b, n, _, _), pairs in groups.items():
        base.setdefault((e, w * b, n), statistics.median(v for v, _ in pairs))
    lines = [
        "| engine (processes) | layers | weights | runs | tok/s per process, median [min-max] "
        "| auto's / this | ddp's / this | with the gather it took from the evaluation: tok/s "
        "| auto's / that |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (engine, n_ranks, beside, layers, weights, own), pairs in groups.items():
        v, g = [x for x, _ in pairs], statistics.median(y for _, y in pairs)
        m = statistics.median(v)
        vs = [base.get((e, n_ranks * beside, layers)) for e in ("auto", "ddp")]
        side = f" x {beside} side by side" if beside > 1 else ""
        lines.append(
            f"| {engine} ({n_ranks}){side} {own} | {layers} | {weights} | {len(v)} "
            f"| {m:,.1f} [{min(v):,.1f}-{max(v):,.1f}] | "
            + " | ".join(f"{ref / m:.2f}x" if ref else "-" for ref in vs)
            + f" | {g:,.1f} | {f'{vs[0] / g:.2f}x' if vs[0] else '-'} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--project", action="store_true", help="only the model's 1B/7B/70B table")
    ap.add_argument("--table", default=None, help="only the tables of a results.json")
    ap.add_argument("extra", nargs="*", help="more Hydra overrides for every game")
    a = ap.parse_args()
    if a.project:
        print(project())
        return
    if a.table:
        path = Path(a.table)
        results = json.loads(path.read_text())
        print(table(results, tiny_base(path.parent / "tiny")) + "\n\n" + generation(results))
        return
    tmp = Path(tempfile.mkdtemp(prefix="apo-bench-scale-"))
    run("auto", ["experiment=tiny", "game.rounds=1", *a.extra], tmp / "tiny")
    base = tiny_base(tmp / "tiny")
    results = []
    for i, item in enumerate(os.environ.get("SCALE_PLAN", PLAN).split(",")):
        spec, *own = item.split("/")
        spec, _, beside = spec.partition("*")
        engine, layers, *devices = spec.split(":")
        n, copies = (int(devices[0]) if devices else None), int(beside or 1)
        # several copies of a game start together (a baseline under the same load)
        with ThreadPoolExecutor(copies) as pool:
            jobs = [
                pool.submit(
                    measure, engine, int(layers), n, [*a.extra, *own], tmp / f"{i}-{c}-{engine}"
                )
                for c in range(copies)
            ]
            try:
                batch = [{**job.result(), "beside": copies, "own": own} for job in jobs]
            except RuntimeError as err:  # a game's failure (e.g. out of memory) ends its row
                print(f"  {item}: failed: {str(err)[-600:]}", file=sys.stderr, flush=True)
                continue
        results.extend(batch)
        for res in batch:
            print(
                f"  {item}: {res['peaks']} {per_process(res):.1f} tok/s",
                file=sys.stderr,
                flush=True,
            )
        (tmp / "results.json").write_text(json.dumps(results, indent=1, default=str))
    print(table(results, base))
    print("\ngeneration (round 1):\n\n" + generation(results))
    print("\nwhat the model says each engine needs per GPU (8 GPUs):\n")
    print(project())
    print(f"\nraw results: {tmp / 'results.json'}")


if __name__ == "__main__":
    main()
