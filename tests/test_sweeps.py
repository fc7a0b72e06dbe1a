"""Hydra multiruns: the basic launcher, submitit (`launcher=local|slurm`), Optuna, DDP jobs.

Every sweep here is a real `apo-train -m` run of `experiment=tiny`; the SLURM launcher is checked
down to the sbatch script submitit would submit, and Lightning's side of a SLURM job (one task per
device, started by srun) is run with the variables srun sets."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tests.conftest import ROOT, compose_cfg
from tests.test_cli import apo_train

TINY = ("experiment=tiny", "game.rounds=1")


def job_dirs(sweep: Path) -> list[Path]:
    return sorted((p for p in sweep.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


def final(job: Path, metric: str = "policy/gold_reward") -> float:
    return json.loads((job / "summary.json").read_text())["rounds"][-1][metric]


def job_config(job: Path) -> dict:
    return yaml.safe_load((job / ".hydra" / "config.yaml").read_text())


def check_apo_coeff_jobs(sweep: Path, values=(0, 1)) -> list[Path]:
    """One result tree per job, each with its own override in its config and summary."""
    jobs = job_dirs(sweep)
    assert [j.name for j in jobs] == [str(i) for i in range(len(values))]
    for job, value in zip(jobs, values):
        assert job_config(job)["game"]["apo_coeff"] == value
        assert f"game.apo_coeff={value}" in (job / ".hydra" / "overrides.yaml").read_text()
        rounds = json.loads((job / "summary.json").read_text())["rounds"]
        assert [r["round"] for r in rounds] == [0, 1]
        assert (job / "rounds" / "round_01" / "samples.jsonl").stat().st_size > 0
    # the same seed plays the same warm start; c_apo changes only what follows
    r0 = [json.loads((j / "summary.json").read_text())["rounds"][0] for j in jobs]
    assert r0[0]["policy/gold_reward"] == r0[1]["policy/gold_reward"]
    return jobs


# ---- configuration only -----------------------------------------------------------------------
def test_slurm_launcher_follows_trainer_and_strategy(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("APO_SLURM_ACCOUNT", "proj42")
    monkeypatch.delenv("APO_SLURM_PARTITION", raising=False)
    cfg = compose_cfg(
        [
            "launcher=slurm",
            "strategy=ddp",
            "trainer.num_nodes=2",
            "launcher.partition=gpu",
            "launcher.mem_gb=64",
            f"hydra.sweep.dir={tmp_path}",
        ],
        hydra_config=True,
    )
    launcher = instantiate(cfg.hydra.launcher)
    p = launcher.params
    assert type(launcher).__name__ == "SlurmLauncher"
    assert cfg.hydra.mode.name == "MULTIRUN"  # `apo-train launcher=slurm` submits
    # one task per device on every node, the numbers Lightning checks against SLURM's
    assert cfg.trainer.devices == cfg.strategy.devices == 2
    assert p["tasks_per_node"] == cfg.trainer.devices and p["nodes"] == cfg.trainer.num_nodes == 2
    assert p["gpus_per_node"] == 2 and p["cpus_per_task"] == 8 and p["timeout_min"] == 240
    assert (p["partition"], p["account"], p["mem_gb"], p["qos"]) == ("gpu", "proj42", 64, None)
    assert p["name"] not in ("bash", "interactive")
    # a job that reaches its time limit is requeued by submitit and continues its saved game
    assert p["max_num_timeout"] == 3 and cfg.resume is True
    assert p["submitit_folder"] == f"{tmp_path}/.submitit/%j"

    # an explicit device count wins over the strategy's, and the allocation follows it
    cfg8 = compose_cfg(
        ["launcher=slurm", "strategy=ddp", "trainer.devices=8", "launcher.gpus_per_node=null"],
        hydra_config=True,
    )
    p8 = instantiate(cfg8.hydra.launcher).params
    assert (p8["tasks_per_node"], p8["nodes"], p8["gpus_per_node"]) == (8, 1, None)


def test_slurm_sbatch_script(tmp_path: Path, monkeypatch):
    """What submitit would hand to sbatch for these parameters (an `srun` on PATH is all the
    slurm executor needs to be built; nothing is submitted)."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\nexit 1\n")
    (fake_bin / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("APO_SLURM_PARTITION", "a100")
    monkeypatch.setenv("APO_SLURM_TIMEOUT_MIN", "90")
    monkeypatch.delenv("APO_SLURM_ACCOUNT", raising=False)
    cfg = compose_cfg(
        ["launcher=slurm", "strategy=ddp", "trainer.num_nodes=3", "launcher.setup=[module load x]"],
        hydra_config=True,
    )
    params = instantiate(cfg.hydra.launcher).params
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor = submitit.AutoExecutor(folder=tmp_path / "sub", cluster="slurm")
    executor.update_parameters(
        **{
            (k if k in base else f"slurm_{k}"): v
            for k, v in params.items()
            if k not in ("submitit_folder", "max_num_timeout")
        }
    )
    script = executor._executor._make_submission_file_text("python -m job", "uid")
    for line in (
        "#SBATCH --nodes=3",
        "#SBATCH --ntasks-per-node=2",
        "#SBATCH --gpus-per-node=2",
        "#SBATCH --partition=a100",
        "#SBATCH --time=90",
        "#SBATCH --cpus-per-task=8",
        "module load x",
    ):
        assert line in script, f"{line!r} missing from\n{script}"
    assert "srun" in script and "--account" not in script


def test_local_launcher_and_search_compose(tmp_path: Path):
    cfg = compose_cfg(["launcher=local", "strategy=ddp"], hydra_config=True)
    p = instantiate(cfg.hydra.launcher).params
    assert type(instantiate(cfg.hydra.launcher)).__name__ == "LocalLauncher"
    assert (p["tasks_per_node"], p["nodes"]) == (2, 1) and cfg.trainer.num_nodes == 1

    cfg = compose_cfg(["hparams_search=apo_coeff_optuna", "seed=3"], hydra_config=True)
    s = cfg.hydra.sweeper
    assert s._target_.endswith("OptunaSweeper") and s.direction == "maximize"
    assert cfg.hydra.mode.name == "MULTIRUN" and cfg.optimized_metric == "policy/gold_reward"
    assert cfg.hydra.sweep.dir == "logs/multiruns/apo_coeff_optuna"
    assert s.sampler.seed == 3 and set(s.params) == {"game.apo_coeff", "objective.lr"}
    assert cfg.game.warm_start_cache == "logs/multiruns/apo_coeff_optuna/warm_start_cache"


# ---- real sweeps ------------------------------------------------------------------------------
@pytest.mark.slow
def test_basic_multirun_two_jobs(tmp_path: Path):
    sweep = tmp_path / "basic"
    proc = apo_train("-m", *TINY, "game.apo_coeff=0,1", f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for value, job in zip((0, 1), check_apo_coeff_jobs(sweep)):
        # TensorBoard names each job by its overrides: <job>/tensorboard/<overrides>/events.*
        (run,) = [d for d in (job / "tensorboard").iterdir() if d.is_dir()]
        assert run.name == f"experiment=tiny,game.apo_coeff={value},game.rounds=1"
        assert list(run.glob("events.out.tfevents.*"))
        hparams = yaml.safe_load((run / "hparams.yaml").read_text())
        assert hparams == {"experiment": "tiny", "game.apo_coeff": value, "game.rounds": 1}
    assert (sweep / "multirun.yaml").exists()


@pytest.mark.slow
@pytest.mark.multiprocess
def test_submitit_local_two_jobs(tmp_path: Path):
    sweep = tmp_path / "local"
    # no `-m`: the launcher configs imply a multirun
    proc = apo_train("launcher=local", *TINY, "game.apo_coeff=0,1", f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = check_apo_coeff_jobs(sweep)
    # submitit's own records: one folder per job, each task's log and pickled result
    results = sorted((sweep / ".submitit").glob("*/*_0_result.pkl"))
    assert len(results) == len(jobs) == 2
    assert "Submitit 'local' sweep output dir" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_optuna_search_records_best_trial(tmp_path: Path):
    sweep = tmp_path / "optuna"
    proc = apo_train(
        "hparams_search=apo_coeff_optuna",
        *TINY,
        "hydra.sweeper.n_trials=2",
        f"hydra.sweep.dir={sweep}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = job_dirs(sweep)
    assert [t.name for t in trials] == ["0", "1"]
    values = [final(t) for t in trials]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["name"] == "optuna"
    assert best["best_value"] == pytest.approx(max(values), abs=1e-12)
    winner = trials[values.index(max(values))]
    cfg = job_config(winner)
    assert best["best_params"]["game.apo_coeff"] == pytest.approx(cfg["game"]["apo_coeff"])
    assert best["best_params"]["objective.lr"] == pytest.approx(cfg["objective"]["lr"])
    for t in trials:  # sampled inside the search space, different per trial
        c = job_config(t)
        assert 0.0 <= c["game"]["apo_coeff"] <= 2.0 and 1e-4 <= c["objective"]["lr"] <= 3e-3
    assert job_config(trials[0])["game"] != job_config(trials[1])["game"]
    # the second trial took the first one's warm start from the sweep's cache
    assert len(list((sweep / "warm_start_cache").iterdir())) == 1


@pytest.mark.slow
@pytest.mark.multiprocess
def test_ddp_sweep_two_jobs(tmp_path: Path):
    """Lightning re-runs the command line for rank 1, so rank 1 plays the sweep too and must find
    the same (fixed) sweep dir; each job is one 2-process game."""
    sweep = tmp_path / "ddp sweep"
    proc = apo_train(
        "-m", *TINY, "strategy=ddp", "game.apo_coeff=0,1", f"hydra.sweep.dir={sweep}", timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # rank 1 joins once and keeps its process group for the next job
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in proc.stdout + proc.stderr
    for job in check_apo_coeff_jobs(sweep):
        # rank 1's log lands beside rank 0's, in the same job dir
        assert (job / "train_ddp_process_1.log").exists()
        rows = (job / "rounds" / "round_01" / "samples.jsonl").read_text().splitlines()
        assert len(rows) == (16 + 32) * 4  # both ranks' samples gathered


@pytest.mark.slow
@pytest.mark.multiprocess
def test_submitit_local_ddp_one_task_per_device(tmp_path: Path):
    """The local twin of a SLURM job: submitit starts both tasks, Lightning starts none."""
    sweep = tmp_path / "local ddp"
    proc = apo_train(
        "-m", "launcher=local", "strategy=ddp", *TINY, f"hydra.sweep.dir={sweep}", timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (job,) = job_dirs(sweep)
    assert len(json.loads((job / "summary.json").read_text())["rounds"]) == 2
    (folder,) = (sweep / ".submitit").glob("[0-9]*")
    logs = {k: (folder / f"{folder.name}_{k}_log.err").read_text() for k in (0, 1)}
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in logs[0] and "GLOBAL_RANK: 1, MEMBER: 2/2" in logs[1]
    assert not list(job.glob("train_ddp_process_*.log")), "Lightning launched processes itself"
    rows = (job / "rounds" / "round_01" / "samples.jsonl").read_text().splitlines()
    assert len(rows) == (16 + 32) * 4


@pytest.mark.slow
@pytest.mark.multiprocess
def test_srun_tasks_are_lightning_slurm_ranks(tmp_path: Path):
    """Two processes with the variables srun sets for 1 node x 2 tasks (what `launcher=slurm`
    asks for with strategy=ddp): Lightning picks SLURMEnvironment and launches nothing."""
    run = tmp_path / "srun"
    exe = shutil.which("apo-train") or str(Path(sys.executable).parent / "apo-train")
    slurm = {
        "SLURM_JOB_ID": str(random.randint(10_000, 99_999)),
        "SLURM_JOB_NAME": "apo-train",
        "SLURM_NTASKS": "2",
        "SLURM_NTASKS_PER_NODE": "2",
        "SLURM_NNODES": "1",
        "SLURM_NODEID": "0",
        "SLURM_NODELIST": "127.0.0.1",
    }
    procs = []
    for rank in (0, 1):
        env = {**os.environ, **slurm, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank)}
        env["PYTHONWARNINGS"] = "ignore"
        cmd = [exe, *TINY, "strategy=ddp", f"hydra.run.dir={run}"]
        if rank:  # as under srun, every task runs the same command; one writes Hydra's files
            cmd.append("hydra.output_subdir=null")
        procs.append(
            subprocess.Popen(
                cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        )
    try:
        outs = [p.communicate(timeout=600)[0] for p in procs]
    finally:  # a rank left waiting for its peer would wait for gloo's 30-minute timeout
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in outs[0] and "GLOBAL_RANK: 1, MEMBER: 2/2" in outs[1]
    assert not list(run.glob("train_ddp_process_*.log")), "Lightning launched processes itself"
    rows = (run / "rounds" / "round_01" / "samples.jsonl").read_text().splitlines()
    assert len(rows) == (16 + 32) * 4


@pytest.mark.slow
@pytest.mark.multiprocess
def test_optuna_search_with_ddp_ranks_draw_the_same_trials(tmp_path: Path):
    """Rank 1 re-runs the search (Lightning re-runs the command line); with the seeded sampler it
    must draw the same trials as rank 0, or the two ranks would train different games."""
    sweep = tmp_path / "optuna ddp"
    proc = apo_train(
        "hparams_search=apo_coeff_optuna",
        *TINY,
        "strategy=ddp",
        "hydra.sweeper.n_trials=2",
        f"hydra.sweep.dir={sweep}",
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    launched = re.findall(r"#(\d+) : (.*)", proc.stdout + proc.stderr)
    by_job: dict[str, list[str]] = {}
    for num, overrides in launched:
        by_job.setdefault(num, []).append(overrides.strip())
    assert sorted(by_job) == ["0", "1"]
    for num, lines in by_job.items():
        assert len(lines) == 2 and lines[0] == lines[1], f"ranks disagree on trial {num}: {lines}"
        assert f"game.apo_coeff={job_config(sweep / num)['game']['apo_coeff']}" in lines[0]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(max(final(j) for j in job_dirs(sweep)), abs=1e-12)
