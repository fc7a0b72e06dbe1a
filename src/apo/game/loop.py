"""The GameLoop: build the game's parts from the config, then play its phases in order, saving
the game state after each, so that `resume=true` continues a killed game where it stopped."""

from __future__ import annotations

import functools
import logging
import signal
import time
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

from apo import checkpoint
from apo.config import plain
from apo.data.budgets import check_budgets, check_unknown_tokens
from apo.data.sizing import resolve_sizes
from apo.data.sources import build_game_data, build_tokenizer, has_oracle
from apo.distributed import gather_objects, is_global_zero
from apo.game import cost, denoising, human_pairs, judge_rms
from apo.game.evaluation import Evaluator
from apo.game.outputs import RoundWriter, write_run_config
from apo.game.phases import PHASES, START_PHASES, Phase
from apo.game.plan import build_plan
from apo.game.players import build_datamodule, build_players, check_positions
from apo.game.state import GameState
from apo.game.trainers import Trainers, timed
from apo.guards import GuardStop
from apo.host_memory import offloaded_mb
from apo.judges import build_judge
from apo.logger import GameTensorBoardLogger, hydra_job, run_name
from apo.monitors import peak_rss_mb, reset_peak_rss
from apo.preemption import Preempted, StopSignals
from apo.progress import GameWatch
from apo.records import format_table
from apo.validation import check_sizes

log = logging.getLogger(__name__)


class GameLoop:
    """One APO game, built from a composed Hydra config (see `configs/train.yaml`).

    Every rank of a multi-process strategy runs this loop; data and samples are the same on all
    ranks (built from the seed, or gathered after prediction) and only rank 0 writes files.
    """

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg, self.run_dir = cfg, Path(cfg.run_dir)
        self.task = instantiate(cfg.task)
        cost.check(cfg, self.task)
        judge_rms.check(cfg)
        data = build_game_data(cfg, self.task)
        task_tokenizer = build_tokenizer(cfg, self.task, data)
        self.players = build_players(cfg, task_tokenizer)
        # budgets left null are sized from the data (in each player's tokens), then checked
        # like set ones
        tokenizers = {"policy": self.players.tokenizer, "rm": self.players.rm_tokenizer}
        resolve_sizes(cfg, data, tokenizers)
        check_sizes({k: plain(cfg[k]) for k in ("data", "policy", "rm")})
        check_positions(cfg, self.players)
        self.plan = build_plan(cfg)
        self.dm = build_datamodule(cfg, data, self.players)
        # every text against its token budget, before anything runs (nothing is cut silently)
        where = data.meta.get("file") or f"task {type(self.task).__name__}"
        if has_oracle(cfg) and cfg.policy.model_name_or_path is None:
            check_unknown_tokens(self.dm, where)
        new = int(cfg.policy.generation.max_new_tokens)
        data.meta.update(check_budgets(self.dm, new, str(cfg.data.overlength), where))
        self.logger = GameTensorBoardLogger(
            str(self.run_dir),
            version=run_name(self.run_dir, hydra_job(self.run_dir)),
            flush_secs=cfg.tensorboard_flush_secs,
        )
        self.watch = GameWatch(cfg, self)  # progress on the terminal or in the log
        self.trainers = Trainers(
            cfg, self.logger, self.run_dir, self.watch.callbacks, self.players.gathered.drop
        )
        self.judge = build_judge(cfg, self.task, self.dm, self.trainers, self.run_dir)
        self.evaluator = Evaluator(
            self.plan,
            self.players,
            self.dm,
            self.trainers,
            self.judge,
            int(cfg.seed),
            int(cfg.rm.calibration_bins),
        )
        self.writer = RoundWriter(
            self.run_dir,
            self.logger,
            self.judge.keys,
            self.judge.name,
            bool(cfg.game.save_weights),
            int(cfg.game.num_text_samples),
        )
        self.state = GameState()
        self.store = checkpoint.StateStore(self.run_dir)

    def schedule(self) -> list[tuple[int, Phase]]:
        """`(round, phase)` in playing order: round 0's `START_PHASES`, then
        `game.round_phases` of every round; phases a game does not need are left out."""
        unknown = [p for p in self.cfg.game.round_phases if p not in PHASES]
        if unknown:
            raise ValueError(
                f"game.round_phases: unknown phases {unknown}; registered: {sorted(PHASES)}"
            )
        rounds = range(1, int(self.cfg.game.rounds) + 1)
        plan = [(0, p) for p in START_PHASES] + [
            (r, p) for r in rounds for p in self.cfg.game.round_phases
        ]
        return [(r, PHASES[p]) for r, p in plan if PHASES[p].enabled(self)]

    def run(self) -> dict[str, Any]:
        """Play the game (or what is left of it); return the summary rounds and their table.
        SIGTERM / SIGUSR1 stop it at the next safe point with `Preempted` (see
        `apo.preemption`); a divergence stops it with `DivergenceError`; either way the state
        stays after the last finished phase."""
        t0, schedule = time.perf_counter(), self.schedule()
        first = self.resume_index(schedule)
        if is_global_zero():
            write_run_config(self.run_dir, self.cfg)
            if first == 0:
                self.players.tokenizer.save_pretrained(str(self.run_dir / "tokenizer"))
        saving = 0.0
        with StopSignals() as signals, self.watch.watch_game(schedule, first):
            for r, phase in schedule[first:]:
                # this rank's peak memory in the phase and its saving, in the round's metrics
                # (the evaluation, which writes them, reports the phases before it)
                measured = phase.name != "evaluate" and reset_peak_rss()
                gathering = self.players.gathered.seconds
                try:
                    with self.watch.watch_phase(r, phase):
                        self.play_timed(r, phase)
                except SIGTERMException:
                    self.stop(signals.received or signal.SIGTERM, r, phase, finished=False)
                except GuardStop as e:
                    self.reject(e, r)
                    raise
                t1 = time.perf_counter()
                stop = self.save(r, phase, (r, phase) == schedule[-1], signals.received)
                saving += time.perf_counter() - t1
                # seconds spent gathering sharded players for sampling (the evaluation, which
                # writes the round's metrics, reports its own)
                gathered = self.players.gathered.seconds - gathering
                if gathered and phase.name != "evaluate":
                    self.state.round_metrics[f"perf/{phase.name}/gather_s"] = gathered
                if measured:
                    self.state.round_metrics[f"perf/{phase.name}/peak_rss_mb"] = peak_rss_mb()
                    if offloaded := offloaded_mb():
                        self.state.round_metrics[f"perf/{phase.name}/offloaded_mb"] = offloaded
                if stop and (r, phase) != schedule[-1]:
                    self.stop(stop, r, phase, finished=True)
        self.players.gathered.drop()
        self.logger.close()
        table = format_table(self.state.summary, list(self.judge.keys.table))
        if is_global_zero():
            log.info(
                "APO game %s in %.1f s (%d phases played, game state saved in %.1f s); "
                "run dir %s\n%s",
                "finished" if first < len(schedule) else "was already finished",
                time.perf_counter() - t0,
                len(schedule) - first,
                saving,
                self.run_dir,
                table,
            )
        return {"rounds": self.state.summary, "table": table}

    def play_timed(self, r: int, phase: Phase) -> None:
        if phase.timed:
            with timed(self.state.round_metrics, f"time/{phase.name}_s"):
                phase.run(self, r)
        else:
            phase.run(self, r)

    def reject(self, error: GuardStop, r: int) -> None:
        """Say where the saved game stands after a divergence. When a guard rejects round `r`'s
        `error.rewind_before` phase (e.g. a policy fit that broke the policy's log-probs), the
        game state goes back to before it, so a resume plays that phase again."""
        if error.rewind_before is not None and is_global_zero():
            done = self.store.rewind((r, error.rewind_before))
            where = f"is rewound to after round {done[0]} {done[1]}"
        elif self.state.done is not None:
            where = f"stays after round {self.state.done[0]} {self.state.done[1]}"
        else:
            return
        error.args = (f"{error.args[0]} The game state {where}.",)

    def stop(self, signum: int, r: int, phase: Phase, finished: bool) -> None:
        """End the game on a signal: note an unfinished phase, close TensorBoard, raise."""
        where = f"after round {r} {phase.name}" if finished else f"in round {r} {phase.name}"
        if is_global_zero() and not finished:
            self.store.mark_interrupted(r, phase.name, signal.Signals(signum).name)
        self.logger.close()
        raise Preempted(signum, where)

    def play(self, r: int, name: str) -> None:
        """Play phase `name` of round `r` in memory, without saving the game state (for
        scripts and tests that drive the game themselves; `run` is the resumable game)."""
        PHASES[name].run(self, r)

    def play_round(self, r: int) -> None:
        """Play round `r`'s phases (those this game plays) in memory, in order."""
        for rr, phase in self.schedule():
            if rr == r:
                phase.run(self, r)

    # ---- the game state ----------------------------------------------------------------------
    def save(self, r: int, phase: Phase, finished: bool, received: int | None) -> int | None:
        """Every rank hands in its RNG states (and the stop signal it received, if any); rank 0
        writes the state after `phase` of round `r` with the weights the phase changed. Returns
        the signal any rank received, so that all ranks stop together."""
        self.state.done = (r, phase.name)
        gathered = gather_objects([(checkpoint.rng_state(), received)])
        rng = [g[0] for g in gathered]
        stop = next((g[1] for g in gathered if g[1] is not None), None)
        models = self.players.models()
        changed = [n for n in phase.changes if models[n] is not None]
        if not is_global_zero():
            for name in changed:  # the gathers rank 0 makes as it writes each player's file
                self.players.full_state(name)
            return stop
        # each player gathered (a collective when sharded) as its file is written, then let go:
        # rank 0 never holds more than one player's full copy beyond the live weights
        weights = {n: functools.partial(self.players.full_state, n) for n in changed}
        record = {
            "done": [r, phase.name],
            "finished": finished,
            "config": checkpoint.config_record(self.cfg),
            "game": self.state.to_dict(),
            "rng": rng,
            "tensorboard": self.logger.event_file_sizes(),
        }
        self.store.save(record, weights, tag=f"r{r:02d}-{phase.name}")
        return stop

    def resume_index(self, schedule: list[tuple[int, Phase]]) -> int:
        """Index of the first phase to play: 0 for a new game, the one after the saved phase when
        resuming (having restored the state).

        Rank 0 resumes with `resume=true` only, and without it refuses a run dir that holds a
        game. Other ranks always start from the saved state: rank 0 launches them (or is launched
        with them) when it has reached that state, so none of them can be ahead of it.
        """
        store = self.store
        if is_global_zero():
            if not store.exists():
                if self.cfg.resume:
                    log.info("resume=true: no game state in %s yet, a new game", store.path)
                return 0
            if not self.cfg.resume:
                raise FileExistsError(
                    f"{store.file}: {self.run_dir} already holds a game; pass resume=true to "
                    "continue it (a finished game only prints its table), or use a new run dir"
                )
        elif not store.exists():
            return 0
        saved = store.load()
        allow = list(self.cfg.resume_allow)
        added, changed = checkpoint.check_config(saved["config"], self.cfg, store.file, allow)
        if added and is_global_zero():
            log.warning("config keys the saved game did not have (defaults used): %s", added)
        names = [(r, p.name) for r, p in schedule]
        done = (int(saved["done"][0]), str(saved["done"][1]))
        if done not in names:
            raise ValueError(
                f"{store.file}: saved after round {done[0]} {done[1]}, a phase this game "
                f"(game.rounds={self.cfg.game.rounds}) does not play"
            )
        played = names[: names.index(done) + 1]
        self.restore(saved, prepared=(0, "prepare_judge") in played)
        if changed:
            self.state.config_changes.append(
                {"after": list(done), "changed": {k: list(v) for k, v in changed.items()}}
            )
            if is_global_zero():
                log.warning("resuming with changed config (resume_allow): %s", changed)
        if is_global_zero():
            log.info("resuming %s after round %d %s", self.run_dir, *done)
        return names.index(done) + 1

    def restore(self, saved: dict[str, Any], prepared: bool) -> None:
        """Load a saved state: the game state, the players' weights, the judge (when it was
        prepared), then every generator's state and TensorBoard's files."""
        self.state = GameState.from_dict(saved["game"])
        w, players = saved["weights"], self.players
        players.policy.load_state_dict(w["policy"])
        players.rm.load_state_dict(w["rm"])
        players.snapshot_reference()
        players.ref.load_state_dict(w["ref"])
        if "cost" in w and players.cost is not None:
            players.cost.load_state_dict(w["cost"])
        if "judge_rms" in w and players.judge_rms is not None:
            players.judge_rms.load_state_dict(w["judge_rms"])
            self.dm.data.meta.update(judge_rms.meta(self.state.judge_rms))
        if "rm_base" in w:
            players.snapshot_rm_base()
            players.rm_base.load_state_dict(w["rm_base"])
        if self.state.human_pairs is not None:
            human_pairs.apply(self, self.state.human_pairs)
        if self.state.denoised is not None:
            denoising.apply(self, self.state.denoised)
        if prepared and self.judge.needs_prepare:
            self.judge.prepare()
        checkpoint.restore_rng_states(saved["rng"])
        if is_global_zero():
            self.logger.rewind(saved["tensorboard"])
