"""The project's phases against TRL on the same work: DPO, RM fits, generation and a whole round.

    pip install -e ".[bench]"                     # TRL, an optional extra (never a dependency)
    python benchmarks/vs_trl.py                   # every cell and measure, 3 runs each
    python benchmarks/vs_trl.py --runs 5 --cells tiny-fp32 --measures dpo_pre,gen

Each (measure, cell, side, run) is its own process, so its peak RSS (VmHWM) is its own; the two
sides alternate (TRL first in odd runs, here first in even ones) so that a change in the machine's
load hits both. Both sides get the same pairs, the same models (built from `LlamaConfig`, nothing
downloaded), the same batch, the same thread count and the same activation checkpointing: on by
default, as TRL's trainers have it (`gradient_checkpointing=True`; the game's own default is
off), `--checkpointing off` for both sides without.

- `dpo_live` / `dpo_pre`: 256 pairs, prompt 32 + response 32 tokens, batch 8 pairs, 4 epochs
  (128 steps). TRL's DPOTrainer with the reference run in every step (`live`) or precomputed
  (`pre`); here the game's `reference` phase and its DPO `policy_fit` phase (the project always
  precomputes), through its Trainer factory and DataModule. Rate: trained pairs per second,
  trainer construction (tokenising) included on both sides.
- `rm`: the same pairs, Bradley-Terry: TRL's RewardTrainer; here the `rm_fit` phase (human
  pairs only, `game.apo_coeff=0`).
- `gen`: 256 prompts x 4 samples, 32 new tokens, one batch of 1,024: `model.generate` (what
  TRL's online trainers call); here `GameDataModule.generate` through a prediction Trainer.
  Rate: new tokens per second.
- `round`: one round of the default game with `objective=dpo` from its warm start (computed once
  and cached): here the round's phases `generate, rm_fit, score, reference, policy_fit`; TRL's
  round composed as a TRL user would: `generate` on both splits, a new RewardTrainer on the human
  pairs plus golden-vs-sample pairs, the RM's scores, a new DPOTrainer (reference precomputed)
  on each prompt's best and worst sample. Rate: rounds per hour.

Not a test: it prints the table for the README.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from environment import describe, environment

CELLS = {
    # ~125k and ~4.1M parameters: the sizes of the measurements
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, vocab=256, heads=2),
    "small": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, vocab=2048, heads=4),
}
MEASURES = ("dpo_live", "dpo_pre", "rm", "gen", "round")
N_PAIRS, PROMPT, RESPONSE, BATCH, K = 256, 32, 32, 8, 4
#: epochs of the fits (4 = 128 steps; `--epochs` changes it, for both sides alike)
EPOCHS = 4
#: activation checkpointing in every fit, on both sides alike (`--checkpointing`): TRL's
#: trainers checkpoint by default (`gradient_checkpointing=True`), the game does not
CHECKPOINTING = True
ROOT = Path(__file__).resolve().parents[1]


# ---- shared by both sides ---------------------------------------------------------------------
def peak_rss_mib(key: str = "VmHWM") -> float:
    """This process's peak (`VmHWM`) or current (`VmRSS`) resident memory."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


#: resident memory when the timed part starts (imports, models and data in place)
BASE = {"mib": float("nan")}


def start_clock() -> float:
    BASE["mib"] = peak_rss_mib("VmRSS")
    return time.perf_counter()


def word_tokenizer(vocab: int):
    """A word-level tokenizer: every `wN` is one token, so texts have exact token counts on
    both sides. No bos (TRL adds none either); pad and eos of their own."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {"<pad>": 0, "<eos>": 1, "<unk>": 2}
    words.update({f"w{i}": i + 3 for i in range(vocab - 3)})
    tok = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    out = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )
    out.padding_side = "right"
    return out


def pairs(vocab: int, seed: int = 0) -> list[tuple[str, str, str]]:
    """`(prompt, chosen, rejected)` texts: 32 prompt words, 31 response words (+ eos = 32)."""
    import random

    rng = random.Random(seed)
    text = lambda n: " ".join(f"w{rng.randrange(vocab - 3)}" for _ in range(n))  # noqa: E731
    return [
        (text(PROMPT), " " + text(RESPONSE - 1), " " + text(RESPONSE - 1)) for _ in range(N_PAIRS)
    ]


def model_config(cell: str, tok):
    from transformers import LlamaConfig

    c = CELLS[cell]
    return LlamaConfig(
        vocab_size=len(tok),
        hidden_size=c["hidden_size"],
        intermediate_size=c["intermediate_size"],
        num_hidden_layers=c["num_hidden_layers"],
        num_attention_heads=c["heads"],
        num_key_value_heads=c["heads"],
        max_position_embeddings=128,
        tie_word_embeddings=False,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=None,
    )


def build_models(cell: str, tok, kind: str):
    import torch
    from transformers import LlamaForCausalLM, LlamaForSequenceClassification

    torch.manual_seed(0)
    cfg = model_config(cell, tok)
    if kind == "rm":
        cfg.num_labels = 1
        return checkpointed(LlamaForSequenceClassification(cfg))
    model = checkpointed(LlamaForCausalLM(cfg))
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    return model


def checkpointed(model):
    """The model with activation checkpointing as `CHECKPOINTING` says (TRL's trainers switch it
    on themselves from their args; enabling it twice is harmless)."""
    from apo.modules.backbones import enable_activation_checkpointing

    if CHECKPOINTING:
        enable_activation_checkpointing(model)
    return model


# ---- the project's side -----------------------------------------------------------------------
def apo_parts(cell: str, precision: str, tok, measure: str, run_dir: Path):
    """The game's own parts around the benchmark's models and pairs: config, plan, players,
    DataModule, Trainer factory and state, as the phases read them."""
    from types import SimpleNamespace

    from apo.allocator import fix_mmap_threshold
    from apo.api import compose_config
    from apo.data.game_data import GameData, ListwiseItem
    from apo.game.plan import build_plan
    from apo.game.players import Players, build_datamodule
    from apo.game.state import GameState
    from apo.game.trainers import Trainers
    from apo.logger import GameTensorBoardLogger

    cfg = compose_config(
        [
            "objective=dpo",
            "game.apo_coeff=0",
            f"trainer.precision={precision}",
            f"policy.batch_size={BATCH}",
            f"policy.round.max_epochs={EPOCHS}",
            f"rm.batch_size={BATCH}",
            f"rm.round.max_epochs={EPOCHS}",
            f"data.max_prompt_len={PROMPT}",
            f"data.max_len={PROMPT + RESPONSE}",
            f"policy.generation.max_new_tokens={RESPONSE}",
            "data.predict_batch_size=1024",
        ],
        run_dir=run_dir,
    )
    fix_mmap_threshold(cfg.get("malloc_mmap_threshold_kb"))  # as `apo.train.run_game` does
    data = GameData(
        human_train=[ListwiseItem(p, [c, r], [1.0, 0.0]) for p, c, r in pairs(len(tok))],
        policy_prompts=[p for p, _, _ in pairs(len(tok))],
    )
    from hydra.utils import instantiate

    players = Players(
        policy=build_models(cell, tok, "policy"),
        rm=build_models(cell, tok, "rm"),
        tokenizer=tok,
        rm_tokenizer=tok,
        pooling="last",
        policy_optimizer=instantiate(cfg.policy.optimizer),
        rm_optimizer=instantiate(cfg.rm.optimizer),
    )
    players.snapshot_reference()
    players.snapshot_rm_base()  # every round's RM fit starts from it, as the game's
    logger = GameTensorBoardLogger(str(run_dir))
    game = SimpleNamespace(
        cfg=cfg,
        plan=build_plan(cfg),
        players=players,
        dm=build_datamodule(cfg, data, players),
        trainers=Trainers(cfg, logger, run_dir),
        state=GameState(),
    )
    game.state.steps = {"policy": 0, "rm": 0}
    game.state.generation_seed = 1
    return game


def apo_side(measure: str, cell: str, precision: str, tok, run_dir: Path) -> dict:
    from apo.game.phases import PHASES

    game = apo_parts(cell, precision, tok, measure, run_dir)
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    if measure.startswith("dpo"):
        game.state.samples = {
            "policy": [
                {"prompt": p, "responses": [ids(c), ids(r)], "rm_scores": [1.0, 0.0]}
                for p, c, r in pairs(len(tok))
            ]
        }
        t0 = start_clock()
        PHASES["reference"].run(game, 1)
        PHASES["policy_fit"].run(game, 1)
        return {"rate": N_PAIRS * EPOCHS / (time.perf_counter() - t0)}
    if measure == "rm":
        t0 = start_clock()
        PHASES["rm_fit"].run(game, 1)
        return {"rate": N_PAIRS * EPOCHS / (time.perf_counter() - t0)}
    if measure == "gen":
        policy = game.players.policy_module(sampling=game.plan.round(1).sampling, seed=1)
        prompts = game.dm.data.policy_prompts
        game.dm.generate(game.trainers.make("policy"), policy, prompts[:8], K)  # warm-up
        t0 = start_clock()
        recs = game.dm.generate(game.trainers.make("policy"), policy, prompts, K)
        dt = time.perf_counter() - t0
        new = sum(min(len(r) + 1, RESPONSE) for rec in recs for r in rec["responses"])
        return {"rate": new / dt}
    raise ValueError(measure)


# ---- TRL's side -------------------------------------------------------------------------------
def trl_args(kind: str, precision: str, out: Path, **kw):
    from trl import DPOConfig, RewardConfig

    cls = DPOConfig if kind == "dpo" else RewardConfig
    return cls(
        output_dir=str(out),
        per_device_train_batch_size=kw.pop("batch", BATCH),
        num_train_epochs=kw.pop("epochs", EPOCHS),
        learning_rate=kw.pop("lr", 1e-4),
        max_grad_norm=1.0,
        bf16=precision == "bf16-mixed",
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        logging_steps=5,
        dataloader_num_workers=0,
        max_length=None,
        seed=0,
        gradient_checkpointing=CHECKPOINTING,
        **kw,
    )


def trl_side(measure: str, cell: str, precision: str, tok, run_dir: Path) -> dict:
    import torch
    from datasets import Dataset

    data = pairs(len(tok))
    ds = Dataset.from_dict(
        {
            "prompt": [p for p, _, _ in data],
            "chosen": [c for _, c, _ in data],
            "rejected": [r for _, _, r in data],
        }
    )
    if measure.startswith("dpo"):
        from trl import DPOTrainer

        policy = build_models(cell, tok, "policy")
        ref = build_models(cell, tok, "policy").eval()
        t0 = start_clock()
        args = trl_args(
            "dpo",
            precision,
            run_dir,
            beta=0.1,
            precompute_ref_log_probs=measure == "dpo_pre",
            precompute_ref_batch_size=64,
        )
        DPOTrainer(
            model=policy, ref_model=ref, args=args, train_dataset=ds, processing_class=tok
        ).train()
        return {"rate": N_PAIRS * EPOCHS / (time.perf_counter() - t0)}
    if measure == "rm":
        from trl import RewardTrainer

        rm = build_models(cell, tok, "rm")
        t0 = start_clock()
        args = trl_args("rm", precision, run_dir, lr=5e-4)
        RewardTrainer(model=rm, args=args, train_dataset=ds, processing_class=tok).train()
        return {"rate": N_PAIRS * EPOCHS / (time.perf_counter() - t0)}
    if measure == "gen":
        policy = build_models(cell, tok, "policy").eval()
        enc = tok([p for p, _, _ in data], return_tensors="pt", add_special_tokens=False)
        ids = enc["input_ids"].repeat_interleave(K, 0)
        att = enc["attention_mask"].repeat_interleave(K, 0)

        def generate(i, a):
            with (
                torch.no_grad(),
                torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16-mixed"),
            ):
                return policy.generate(
                    input_ids=i,
                    attention_mask=a,
                    do_sample=True,
                    top_k=0,
                    top_p=1.0,
                    temperature=1.0,
                    max_new_tokens=RESPONSE,
                )

        generate(ids[:8], att[:8])  # warm-up
        torch.manual_seed(1)
        t0 = start_clock()
        out = generate(ids, att)[:, ids.shape[1] :]
        dt = time.perf_counter() - t0
        new = 0
        for row in out.tolist():
            new += row.index(tok.eos_token_id) + 1 if tok.eos_token_id in row else len(row)
        return {"rate": new / dt}
    raise ValueError(measure)


# ---- a whole round ----------------------------------------------------------------------------
ROUND = ["objective=dpo", "game.rounds=1"]
ROUND_PHASES = ("generate", "rm_fit", "score", "reference", "policy_fit")


def warm_game(precision: str, run_dir: Path, cache: Path):
    """The default game (objective=dpo) after its warm start, loaded from `cache` (fitted and
    saved there by the first call)."""
    from apo.api import compose_config
    from apo.game.loop import GameLoop

    ckpt = f"activation_checkpointing={str(CHECKPOINTING).lower()}"
    cfg = compose_config(
        [
            *ROUND,
            f"trainer.precision={precision}",
            f"game.warm_start_cache={cache}",
            f"policy.{ckpt}",
            f"rm.{ckpt}",
        ],
        run_dir=run_dir,
    )
    game = GameLoop(cfg)
    game.play(0, "warm_start")
    return game


def apo_round(game) -> dict:
    from apo.allocator import fix_mmap_threshold

    fix_mmap_threshold(game.cfg.get("malloc_mmap_threshold_kb"))  # as `apo.train.run_game` does
    t0 = start_clock()
    for name in ROUND_PHASES:
        game.play(1, name)
    return {"rate": 3600 / (time.perf_counter() - t0)}


def trl_round(game, precision: str, run_dir: Path) -> dict:
    """The same round from TRL's parts, each trainer built anew, on the game's models and data."""
    import torch
    from datasets import Dataset
    from trl import DPOTrainer, RewardTrainer

    from apo.data.collate import pad_2d

    dm, data, players, cfg = game.dm, game.dm.data, game.players, game.cfg
    tok, k = players.tokenizer, int(cfg.game.samples_per_prompt)
    gen, bf16 = cfg.policy.generation, precision == "bf16-mixed"
    auto = lambda: torch.autocast("cpu", torch.bfloat16, enabled=bf16)  # noqa: E731
    t0 = start_clock()
    prompts = data.rm_prompts + data.policy_prompts
    texts: list[list[str]] = []
    torch.manual_seed(1)
    per = max(1, int(cfg.data.predict_batch_size) // k)
    for i in range(0, len(prompts), per):
        ids, att = pad_2d(
            [dm.prompt_ids(p) for p in prompts[i : i + per]], tok.pad_token_id, left=True
        )
        with torch.no_grad(), auto():
            out = players.policy.generate(
                input_ids=ids,
                attention_mask=att,
                do_sample=True,
                top_k=0,
                top_p=1.0,
                temperature=1.0,
                max_new_tokens=int(gen.max_new_tokens),
                num_return_sequences=k,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
            )
        rows = tok.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)
        texts += [rows[j : j + k] for j in range(0, len(rows), k)]
    rm_texts, pol_texts = texts[: len(data.rm_prompts)], texts[len(data.rm_prompts) :]
    # the RM: human pairs and golden answers over each sample, one new trainer
    human = [
        (it.prompt, *(it.responses if it.scores[0] > it.scores[1] else it.responses[::-1]))
        for it in data.human_train
    ]
    apo = [(p, data.golden[p], s) for p, ss in zip(data.rm_prompts, rm_texts) for s in ss]
    rows = human + apo
    ds = Dataset.from_dict(
        {
            "prompt": [r[0] for r in rows],
            "chosen": [r[1] for r in rows],
            "rejected": [r[2] for r in rows],
        }
    )
    # about the game's RM steps: its 47 steps of 64 human pairs and 16 APO items
    bs = -(-len(rows) // -(-len(human) // int(cfg.rm.batch_size)))
    args = trl_args(
        "rm",
        precision,
        run_dir / "rm",
        batch=bs,
        epochs=int(cfg.rm.round.max_epochs),
        lr=float(cfg.rm.optimizer.lr),
    )
    RewardTrainer(model=players.rm, args=args, train_dataset=ds, processing_class=tok).train()
    # the RM's scores of the policy split's samples, then each prompt's best and worst
    players.rm.eval()
    seqs = [(p, s) for p, ss in zip(data.policy_prompts, pol_texts) for s in ss]
    scores = []
    for i in range(0, len(seqs), int(cfg.data.predict_batch_size)):
        chunk = [
            tok(p + s + tok.eos_token, add_special_tokens=False)["input_ids"]
            for p, s in seqs[i : i + int(cfg.data.predict_batch_size)]
        ]
        ids, att = pad_2d(chunk, tok.pad_token_id)
        with torch.no_grad(), auto():
            scores += players.rm(input_ids=ids, attention_mask=att).logits[:, 0].float().tolist()
    best_worst = []
    for j, p in enumerate(data.policy_prompts):
        sc = scores[j * k : (j + 1) * k]
        order = sorted(range(k), key=lambda i: -sc[i])
        best_worst.append((p, pol_texts[j][order[0]], pol_texts[j][order[-1]]))
    ds = Dataset.from_dict(
        {
            "prompt": [r[0] for r in best_worst],
            "chosen": [r[1] for r in best_worst],
            "rejected": [r[2] for r in best_worst],
        }
    )
    args = trl_args(
        "dpo",
        precision,
        run_dir / "dpo",
        batch=int(cfg.policy.batch_size),
        epochs=int(cfg.policy.round.max_epochs),
        lr=float(cfg.objective.lr),
        beta=float(cfg.objective.loss.beta),
        precompute_ref_log_probs=True,
        precompute_ref_batch_size=int(cfg.data.predict_batch_size) // 2,
    )
    DPOTrainer(
        model=players.policy,
        ref_model=players.ref,
        args=args,
        train_dataset=ds,
        processing_class=tok,
    ).train()
    return {"rate": 3600 / (time.perf_counter() - t0)}


# ---- one measure in this process --------------------------------------------------------------
def one(side: str, measure: str, cell: str, precision: str, threads: int, cache: Path) -> dict:
    import logging
    import warnings

    if side == "apo":  # as `apo-train` does before the first tensor exists (README, Strategies)
        from apo.allocator import use_hugepages
        from apo.api import compose_config

        use_hugepages(bool(compose_config([], run_dir=".").hugepages))
    import torch

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    torch.set_num_threads(threads)
    run_dir = Path(tempfile.mkdtemp(prefix=f"vs-trl-{side}-"))
    if measure == "round":
        game = warm_game(precision, run_dir / "game", cache)
        out = apo_round(game) if side == "apo" else trl_round(game, precision, run_dir)
    else:
        tok = word_tokenizer(CELLS[cell]["vocab"])
        fn = apo_side if side == "apo" else trl_side
        out = fn(measure, cell, precision, tok, run_dir)
    out["peak_mib"], out["base_mib"] = peak_rss_mib(), BASE["mib"]
    return out


def run_one(side, measure, cell, precision, threads, cache) -> dict:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "PYTHONWARNINGS": "ignore",
        "TOKENIZERS_PARALLELISM": "false",
    }
    cmd = [
        sys.executable,
        __file__,
        "--one",
        side,
        measure,
        cell,
        precision,
        "--threads",
        str(threads),
        "--cache",
        str(cache),
        "--epochs",
        str(EPOCHS),
        "--checkpointing",
        "on" if CHECKPOINTING else "off",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"{side} {measure} {cell} {precision} failed:\n{proc.stderr[-4000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["load1"] = os.getloadavg()[0]  # the 1-minute load average as the measure ended
    return out


def stats(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def main() -> None:
    global EPOCHS, CHECKPOINTING
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--cells", default="tiny-fp32,small-fp32,small-bf16")
    ap.add_argument("--measures", default=",".join(MEASURES))
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 2)))
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "apo-vs-trl-warm"))
    ap.add_argument("--json", default=None, help="write every run's numbers here")
    ap.add_argument("--table", default=None, help="only print the table of a --json file")
    ap.add_argument("--epochs", type=int, default=EPOCHS, help="epochs of the fits (4 = 128 steps)")
    ap.add_argument(
        "--checkpointing",
        choices=("on", "off"),
        default="on",
        help="activation checkpointing on both sides (on: TRL's default)",
    )
    ap.add_argument("--one", nargs=4, metavar=("SIDE", "MEASURE", "CELL", "PRECISION"))
    a = ap.parse_args()
    EPOCHS, CHECKPOINTING = a.epochs, a.checkpointing == "on"
    if a.one:
        print(json.dumps(one(*a.one, a.threads, Path(a.cache))))
        return
    if a.table:
        print(table(json.loads(Path(a.table).read_text())))
        return
    precisions = {"fp32": "32-true", "bf16": "bf16-mixed"}
    cells = [c.split("-") for c in a.cells.split(",")]
    results: dict[str, Any] = {"_environment": environment()}
    load0 = os.getloadavg()
    for measure in a.measures.split(","):
        for size, prec in cells:
            if measure == "round" and size != cells[0][0]:
                continue  # the round plays the default game's models: once per precision
            key = f"{measure} {'default' if measure == 'round' else size} {prec}"
            if key in results:
                continue
            results[key] = {"trl": [], "apo": []}
            for r in range(a.runs):
                order = ("trl", "apo") if r % 2 == 0 else ("apo", "trl")
                for side in order:
                    res = run_one(side, measure, size, precisions[prec], a.threads, a.cache)
                    results[key][side].append(res)
                    print(f"  {key} run {r + 1} {side}: {res}", file=sys.stderr, flush=True)
                    if a.json:  # after every run, so that a stopped benchmark keeps its numbers
                        Path(a.json).write_text(json.dumps(results, indent=1))
    load1 = os.getloadavg()
    print(
        f"\n{a.runs} runs per side, interleaved, {a.threads} threads, fits of {EPOCHS} epochs "
        f"({N_PAIRS // BATCH * EPOCHS} steps), activation checkpointing {a.checkpointing}; "
        "load average "
        f"{load0[0]:.2f} / {load0[1]:.2f} / {load0[2]:.2f} at the start, "
        f"{load1[0]:.2f} / {load1[1]:.2f} / {load1[2]:.2f} at the end; "
        f"{describe(results['_environment'])}\n"
    )
    print(table(results))


UNITS = {
    "dpo_live": "pairs/s",
    "dpo_pre": "pairs/s",
    "rm": "pairs/s",
    "gen": "new tok/s",
    "round": "rounds/h",
}


def table(results: dict[str, Any]) -> str:
    """The Markdown ratio table of `results` (key -> side -> runs; `_environment` aside)."""
    lines = [
        "| measure | cell | TRL median (min-max) | here median (min-max) | here / TRL "
        "| paired runs: median (min-max) | peak RSS MiB TRL / here "
        "| of it during the measure TRL / here |",
        "|---|---|---|---|---|---|---|---|",
    ]
    fmt = lambda s: f"{s[0]:,.1f} ({s[1]:,.1f}-{s[2]:,.1f})"  # noqa: E731
    for key, sides in results.items():
        if key.startswith("_") or not sides["trl"] or not sides["apo"]:  # `_environment`
            continue
        measure, cell, prec = key.split()
        t, h = (stats([x["rate"] for x in sides[s]]) for s in ("trl", "apo"))
        mt, mh = (statistics.median([x["peak_mib"] for x in sides[s]]) for s in ("trl", "apo"))
        dt, dh = (
            statistics.median([x["peak_mib"] - x["base_mib"] for x in sides[s]])
            for s in ("trl", "apo")
        )
        # run i of both sides ran back to back: their ratio is the one a change in load hits least
        p = stats([b["rate"] / a["rate"] for a, b in zip(sides["trl"], sides["apo"])])
        lines.append(
            f"| {measure} ({UNITS[measure]}) | {cell} {prec} | {fmt(t)} | {fmt(h)} "
            f"| {h[0] / t[0]:.2f}x | {p[0]:.2f}x ({p[1]:.2f}-{p[2]:.2f}) "
            f"| {mt:,.0f} / {mh:,.0f} | {dt:,.0f} / {dh:,.0f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
