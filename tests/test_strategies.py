"""Strategies: every config builds its Lightning object; 2-process games on CPU for every engine,
agreeing with one process and with DDP; per-round weights reload into plain transformers models.

How the 2-process runs are made comparable (the tolerances below rest on this):
- 1 vs 2 processes: the warm-start fits use half the per-process batch in 2 processes, so the
  global batch (32) and, with Lightning's seeded DistributedSampler (also used by DDP in one
  process), the examples of every step are the same. The RM loss is a mean over preference
  pairs and every tiny human item holds exactly one pair, so the mean of the two ranks' means
  is the single-process mean: the base RM must match up to float summation order. (The policy's
  SFT loss is a token mean over the batch, which no data-parallel engine reproduces exactly
  across process counts, so the policy is compared engine against DDP instead.)
- engine vs DDP, both in 2 processes: same data on the same rank, same per-rank sampling seeds,
  so the whole 2-round game (generation, RM scores, second fits of both players) must agree.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy, ModelParallelStrategy
from safetensors.torch import load_file
from torch.distributed.fsdp.wrap import ModuleWrapPolicy
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from apo.strategies import (
    STRATEGIES,
    CPUDeepSpeedStrategy,
    FSDP2Strategy,
    build_strategy,
    to_cpu_adam,
)
from tests.conftest import ROOT, compose_cfg
from tests.test_cli import apo_train

ENGINES = ["fsdp", "deepspeed_stage_2", "deepspeed_stage_3", "deepspeed_stage_3_offload"]
#: same global batch as the single-process reference (32) in the warm-start fits
HALF_BATCH = ["policy.sft_batch_size=16", "rm.batch_size=16"]
#: max |w - w_ref| of the base RM, 1 vs 2 processes. Only the float summation order differs
#: (measured 2.4e-7, the same for DDP and every engine); the 4-step fit itself moves weights by
#: up to 2e-3, so a wrong batch or data order would break this by orders of magnitude.
TOL_PROCESSES = 1e-5
#: max |w - w_ddp| of any saved weight after 2 rounds (7 fits): engines may sum in another
#: order (reduce-scatter vs all-reduce, DeepSpeed's flat buffers, CPU Adam). Measured: FSDP2 0
#: (bit-equal), ZeRO-2 1.1e-6, ZeRO-3 6.2e-7, ZeRO-3 offload (DeepSpeedCPUAdam) 1.5e-5.
TOL_ENGINE = 1e-4


# ---- fast: configs -> Lightning objects ---------------------------------------------------------
def test_registry_names_and_config_files_are_in_sync():
    files = {p.stem for p in (ROOT / "configs" / "strategy").glob("*.yaml")}
    listed = [f for fs in STRATEGIES.values() for f in fs]
    assert sorted(listed) == sorted(files)
    for name, fs in STRATEGIES.items():
        for f in fs:
            assert compose_cfg([f"strategy={f}"]).strategy.name == name, f


def _built(*overrides: str):
    cfg = compose_cfg(list(overrides))
    return build_strategy(cfg.strategy)


def test_auto_and_ddp_build_as_before():
    assert _built("strategy=auto") == ("auto", 1)
    s, devices = _built("strategy=ddp")
    assert type(s) is DDPStrategy and devices == 2 and s._start_method == "popen"


def test_fsdp_builds_fsdp2_by_default_and_fsdp1_with_decoder_layer_auto_wrap():
    s, devices = _built("strategy=fsdp")
    assert isinstance(s, FSDP2Strategy) and isinstance(s, ModelParallelStrategy) and devices == 2
    s1, _ = _built("strategy=fsdp", "strategy.version=1", "strategy.activation_checkpointing=true")
    assert type(s1) is FSDPStrategy
    policy = s1.kwargs["auto_wrap_policy"]
    assert isinstance(policy, ModuleWrapPolicy)
    assert policy._module_classes == {LlamaDecoderLayer}
    assert s1.sharding_strategy.name == "FULL_SHARD"
    assert s1._activation_checkpointing_kwargs["auto_wrap_policy"]._module_classes == {
        LlamaDecoderLayer
    }
    with pytest.raises(ValueError, match="version must be 1 or 2"):
        _built("strategy=fsdp", "strategy.version=3")
    with pytest.raises(ValueError, match="layer_classes"):
        _built("strategy=fsdp", "strategy.version=1", "strategy.layer_classes=[]")


@pytest.mark.parametrize(
    "config, stage, offload",
    [
        ("deepspeed_stage_2", 2, False),
        ("deepspeed_stage_3", 3, False),
        ("deepspeed_stage_3_offload", 3, True),
    ],
)
def test_deepspeed_configs_build_their_zero_stage(config: str, stage: int, offload: bool):
    s, devices = _built(f"strategy={config}")
    assert isinstance(s, CPUDeepSpeedStrategy) and devices == 2
    zero = s.config["zero_optimization"]
    assert zero["stage"] == stage
    assert ("offload_optimizer" in zero) == offload and ("offload_param" in zero) == offload
    if offload:
        assert zero["offload_optimizer"]["device"] == zero["offload_param"]["device"] == "cpu"
    assert s.cpu_adam == offload
    assert s.config["train_micro_batch_size_per_gpu"] == 1


def test_unknown_strategy_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown strategy 'zero9'.*deepspeed"):
        build_strategy({"name": "zero9"})


def test_cpu_adam_keeps_the_players_optimizer_settings():
    params = [torch.nn.Parameter(torch.zeros(3))]
    opt = to_cpu_adam(torch.optim.AdamW(params, lr=3e-4, betas=(0.8, 0.9), weight_decay=0.1))
    assert type(opt).__name__ == "DeepSpeedCPUAdam" and opt.adam_w_mode
    g = opt.param_groups[0]
    assert (g["lr"], g["betas"], g["weight_decay"]) == (3e-4, (0.8, 0.9), 0.1)
    assert g["params"][0] is params[0]
    with pytest.raises(ValueError, match="Adam or AdamW.*SGD"):
        to_cpu_adam(torch.optim.SGD(params, lr=0.1))


# ---- slow: real 2-process games -----------------------------------------------------------------
class Runs:
    """`apo-train` runs under one session tmp dir, each distinct setting played once."""

    def __init__(self, root: Path) -> None:
        self.root, self.done = root, {}

    def __call__(self, tag: str, *overrides: str) -> Path:
        if tag not in self.done:
            run = self.root / tag
            # the human pairs from the task, not sampled by the warm-started policy: sampling is
            # seeded per rank, so 1 and 2 processes would label different pairs
            proc = apo_train(
                "experiment=tiny",
                "data.human_pairs_from=task",
                *overrides,
                f"hydra.run.dir={run}",
                timeout=1200,
            )
            assert proc.returncode == 0, proc.stderr[-4000:]
            (run / "output.log").write_text(proc.stdout + proc.stderr)
            self.done[tag] = run
        return self.done[tag]

    def single_process(self) -> Path:
        return self("single", "strategy=ddp", "strategy.devices=1", "game.rounds=0")

    def ddp(self) -> Path:
        return self("ddp", "strategy=ddp", *HALF_BATCH)


@pytest.fixture(scope="session")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    return Runs(tmp_path_factory.mktemp("strategies"))


def _weights(run: Path, r: int, player: str) -> dict[str, torch.Tensor]:
    return load_file(run / "rounds" / f"round_{r:02d}" / player / "model.safetensors")


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _summary(run: Path) -> list[dict]:
    return json.loads((run / "summary.json").read_text())["rounds"]


def _assert_same_game(run: Path, ref: Path) -> None:
    for r in range(3):
        for player in ("policy", "rm"):
            d = _max_diff(_weights(run, r, player), _weights(ref, r, player))
            assert d < TOL_ENGINE, (r, player, d)
    for got, want in zip(_summary(run), _summary(ref), strict=True):
        assert got["rm/val/acc"] == want["rm/val/acc"]
        assert got["policy/gold_reward"] == pytest.approx(want["policy/gold_reward"], abs=1e-6)
        assert got["policy/kl"] == pytest.approx(want["policy/kl"], abs=1e-3)


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.parametrize("engine", ENGINES)
def test_two_process_game(engine: str, runs: Runs):
    run = runs(engine, f"strategy={engine}", *HALF_BATCH)
    log = (run / "output.log").read_text()
    assert "MEMBER: 2/2" in log
    if engine == "fsdp":
        assert "FSDP2: sharded LlamaForCausalLM (1 decoder layers) over 2 ranks" in log
        assert "FSDP2: sharded LlamaModel (1 decoder layers) over 2 ranks" in log
    else:
        stage = 3 if "stage_3" in engine else 2
        assert f"DeepSpeed ZeRO stage {stage} over 2 processes" in log
    assert [r["round"] for r in _summary(run)] == [0, 1, 2]
    # what offload kept on the host in the RM fits (apo.host_memory), for offload only: its
    # fp32 master, two gradient buffers and Adam's two moments, 5 fp32 values per parameter of
    # the rank's partition (its weights' storage)
    offloaded = [r.get("perf/rm_fit/offloaded_mb", 0) for r in _summary(run)[1:]]
    if "offload" in engine:
        part = max(json.loads((run / "summary.json").read_text())["param_storage_bytes"]["rm"])
        assert offloaded == pytest.approx([5 * part / 2**20] * 2, rel=0.05)
    else:
        assert offloaded == [0, 0]

    # what each rank holds: a sharded engine a share of every player, whose full copies exist
    # only while they are gathered (ZeRO-2 shards optimizer state and gradients, not weights)
    full = json.loads((runs.single_process() / "summary.json").read_text())["param_storage_bytes"]
    held = json.loads((run / "summary.json").read_text())["param_storage_bytes"]
    for name in ("policy", "ref", "rm", "rm_base"):
        assert len(held[name]) == 2, name
        for nbytes in held[name]:
            if engine == "deepspeed_stage_2":
                assert nbytes == full[name][0], name
            else:
                assert nbytes <= 0.6 * full[name][0], (name, held[name], full[name])

    # 1 vs 2 processes, same global batch: the base RM after the warm start
    single = _weights(runs.single_process(), 0, "rm")
    assert _max_diff(_weights(run, 0, "rm"), single) < TOL_PROCESSES
    # the whole game, second fits included, against 2-process DDP
    _assert_same_game(run, runs.ddp())
    # the second round's fits moved both players (a stale engine hook could freeze them): one
    # Adam step at lr 1e-3 moves the largest weight change by ~1e-3, far above the tolerance
    for player in ("policy", "rm"):
        assert _max_diff(_weights(run, 2, player), _weights(run, 1, player)) > 5 * TOL_ENGINE

    # the saved rounds reload into plain transformers models with exactly those weights
    d = run / "rounds" / "round_02"
    policy = AutoModelForCausalLM.from_pretrained(d / "policy")
    rm = AutoModelForSequenceClassification.from_pretrained(d / "rm")
    for model, player in ((policy, "policy"), (rm, "rm")):
        saved = _weights(run, 2, player)
        assert _max_diff({k: v for k, v in model.state_dict().items() if k in saved}, saved) == 0
    ids = torch.tensor([[1, 5, 6, 7]])
    assert torch.isfinite(policy(ids).logits).all() and rm(ids).logits.shape == (1, 1)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_per_player_strategies_mix_engines(runs: Runs):
    run = runs("mixed", "strategy=fsdp", "strategy@rm_strategy=deepspeed_stage_2", *HALF_BATCH)
    log = (run / "output.log").read_text()
    assert "FSDP2: sharded LlamaForCausalLM" in log and "FSDP2: sharded LlamaModel" not in log
    assert "DeepSpeed ZeRO stage 2 over 2 processes" in log
    _assert_same_game(run, runs.ddp())


def test_trainer_devices_and_num_nodes_reach_every_engine(tmp_path: Path):
    from apo.game import GameLoop

    cfg = compose_cfg(
        [
            "experiment=tiny",
            "strategy=fsdp",
            "strategy@rm_strategy=deepspeed_stage_3",
            "trainer.devices=1",
            "trainer.num_nodes=2",
        ],
        run_dir=tmp_path,
    )
    game = GameLoop(cfg)
    policy, rm = game.trainers.make("policy", "warmup"), game.trainers.make("rm")
    assert isinstance(policy.strategy, FSDP2Strategy) and isinstance(
        rm.strategy, CPUDeepSpeedStrategy
    )
    for t in (policy, rm):
        assert (t.num_devices, t.num_nodes, t.world_size) == (1, 2, 2)


#: Adam with a large eps is no longer invariant to the gradients' scale (its step is about
#: lr·g/eps there), so a loss divided once too often or not at all under accumulation moves the
#: weights by orders of magnitude more than TOL_PROCESSES; with the default eps it would not.
SCALE_SENSITIVE = ["+rm.optimizer.eps=1e-3", "rm.optimizer.fused=false", "game.rounds=0"]
#: the warm-start RM fit in micro-batches of a quarter of the single-process batch per rank
#: (8 pairs), 2 of them per optimizer step on each of 2 ranks: the same 32 pairs per step
ACCUMULATE = ["rm.batch_size=8", "policy.sft_batch_size=8", "trainer.accumulate_grad_batches=2"]


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.parametrize("engine", ["ddp", *ENGINES])
def test_two_micro_batches_step_like_one_double_batch(engine: str, runs: Runs):
    run = runs(f"{engine}_accumulate", f"strategy={engine}", *SCALE_SENSITIVE, *ACCUMULATE)
    single = runs("single_sensitive", "strategy=ddp", "strategy.devices=1", *SCALE_SENSITIVE)
    assert _max_diff(_weights(run, 0, "rm"), _weights(single, 0, "rm")) < TOL_PROCESSES
    # and the fit did move the RM, by far more than the tolerance
    init = runs(
        "untrained_rm",
        "strategy=ddp",
        "strategy.devices=1",
        *SCALE_SENSITIVE,
        "+rm.warmup.max_steps=0",
    )
    assert _max_diff(_weights(single, 0, "rm"), _weights(init, 0, "rm")) > 100 * TOL_PROCESSES


@pytest.mark.slow
def test_one_process_accumulation_steps_like_one_double_batch(runs: Runs):
    half = ["rm.batch_size=16", "policy.sft_batch_size=16", "trainer.accumulate_grad_batches=2"]
    run = runs("auto_accumulate", *SCALE_SENSITIVE, *half)
    full = runs("auto_full", *SCALE_SENSITIVE)
    assert _max_diff(_weights(run, 0, "rm"), _weights(full, 0, "rm")) < TOL_PROCESSES


def _samples(run: Path, r: int) -> list[dict]:
    lines = (run / "rounds" / f"round_{r:02d}" / "samples.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.parametrize("engine", ["fsdp", "deepspeed_stage_3"])
def test_gathered_weights_sample_what_the_sharded_policy_samples(engine: str, runs: Runs):
    gathered = runs(engine, f"strategy={engine}", *HALF_BATCH)  # the default
    sharded = runs(
        f"{engine}_sharded", f"strategy={engine}", *HALF_BATCH, "policy.generation.weights=sharded"
    )
    log = (gathered / "output.log").read_text()
    assert "the sharded policy's weights gathered once" in log
    # each round's generation samples from the copy its previous evaluation gathered (the
    # policy has not changed between them), checked by every rank's fingerprint
    assert log.count("the sharded policy's weights kept from before") >= 2
    assert "the sharded policy's weights" not in (sharded / "output.log").read_text()
    rounds = json.loads((gathered / "summary.json").read_text())["rounds"]
    assert all(rounds[r]["perf/evaluate/gather_s"] > 0 for r in (0, 1, 2))
    assert not any("perf/generate/gather_s" in rounds[r] for r in (1, 2))
    for r in (1, 2):
        got, want = _samples(gathered, r), _samples(sharded, r)
        assert len(got) == len(want) > 0
        assert got == want
    _assert_same_game(gathered, sharded)
