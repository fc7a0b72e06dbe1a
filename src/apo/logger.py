"""One TensorBoard event stream for the whole game: step metrics of every fit; metrics, histograms,
images and texts per round; the HParams dashboard at the end; sweep jobs named by their overrides."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

EVENT_GLOB = "events.out.tfevents.*"


class GameTensorBoardLogger(TensorBoardLogger):
    """A TensorBoard logger reused by every Trainer of a game.

    Each fit's Trainer counts steps from 0; `step_offset` (set by the GameLoop before a fit) makes
    the steps of a player continue across rounds. `finalize` only flushes, so the next Trainer
    keeps writing to the same event file; `close` ends the game.

    A resumed game `rewind`s the event files to their sizes at the saved phase boundary (see
    `event_file_sizes`), so steps a killed fit logged are not in TensorBoard twice. SummaryWriter's
    `purge_step` cannot do this: it hides every tag's events from one step on, but the players'
    steps and the rounds are separate step axes in one event file.
    """

    def __init__(
        self, save_dir: str, name: str = "tensorboard", version: str = "", **kwargs: Any
    ) -> None:
        super().__init__(
            save_dir=save_dir, name=name, version=version, default_hp_metric=False, **kwargs
        )
        self.step_offset = 0

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        super().log_metrics(metrics, None if step is None else step + self.step_offset)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self.flush()

    @rank_zero_only
    def flush(self) -> None:
        if self._experiment is not None:
            self.experiment.flush()

    @rank_zero_only
    def log_round(
        self,
        metrics: dict[str, float],
        round_idx: int,
        texts: dict[str, str],
        histograms: dict[str, list[float]] | None = None,
        images: dict[str, Any] | None = None,
    ) -> None:
        """A round's scalars, texts, histograms (of a list of values) and images (`[H, W, 3]`
        arrays), all with the round as their step."""
        x = self.experiment
        for k, v in metrics.items():
            x.add_scalar(k, v, global_step=round_idx)
        for k, v in texts.items():
            x.add_text(k, v, global_step=round_idx)
        for k, v in (histograms or {}).items():
            if len(v):
                x.add_histogram(k, np.asarray(v, dtype=np.float64), global_step=round_idx)
        for k, v in (images or {}).items():
            x.add_image(k, v, global_step=round_idx, dataformats="HWC")
        x.flush()

    @rank_zero_only
    def log_game_hparams(self, params: dict[str, Any], metrics: list[str]) -> None:
        """TensorBoard's HParams dashboard: the game's `params` (e.g. its overrides) against the
        round metrics named in `metrics`. The dashboard reads their values from the scalars the
        rounds logged (the last round's), so none is logged again here. Also `hparams.yaml`."""
        from lightning.pytorch.core.saving import save_hparams_to_yaml
        from torch.utils.tensorboard.summary import hparams

        params = {k: _hparam_value(v) for k, v in params.items()}
        writer = self.experiment._get_file_writer()
        for summary in hparams(params, dict.fromkeys(metrics, 0.0)):
            writer.add_summary(summary)
        self.hparams = dict(params)
        # Lightning writes hparams.yaml once, at the first fit (empty then); this is the game's
        save_hparams_to_yaml(os.path.join(self.log_dir, self.NAME_HPARAMS_FILE), self.hparams)
        self.flush()

    @rank_zero_only
    def close(self) -> None:
        if self._experiment is not None:
            self.experiment.close()

    # ---- resuming (rank 0 only) ---------------------------------------------------------------
    def event_file_sizes(self) -> dict[str, int]:
        """Name -> size of every event file, once everything logged so far is on disk."""
        self.flush()
        d = Path(self.log_dir)
        return {p.name: p.stat().st_size for p in sorted(d.glob(EVENT_GLOB))} if d.is_dir() else {}

    def rewind(self, sizes: dict[str, int]) -> None:
        """Cut every event file back to its size in `sizes` and delete files not in it (a killed
        session's). Records are appended whole, so a cut at a flushed size is a record boundary.
        Call before this logger writes anything: its own file is new."""
        if self._experiment is not None:
            raise RuntimeError("GameTensorBoardLogger.rewind: the logger has already written")
        d = Path(self.log_dir)
        for p in sorted(d.glob(EVENT_GLOB)) if d.is_dir() else []:
            if p.name not in sizes:
                p.unlink()
            elif p.stat().st_size > sizes[p.name]:
                os.truncate(p, sizes[p.name])


def _hparam_value(v: Any) -> Any:
    """A value TensorBoard's HParams dashboard takes: a number, a string or a bool."""
    return v if isinstance(v, bool | int | float | str) else str(v)


def run_name(run_dir: str | Path, hydra_job: Any | None) -> str:
    """The event directory under `run_dir/tensorboard`: "" (the files lie in it) for a single
    run; for a job of a Hydra multirun (`hydra_job`: its `HydraConfig`, or None) the job's
    overrides, `hydra.job.override_dirname` (e.g. `game.apo_coeff=0,objective=dpo`), so that
    `tensorboard --logdir <sweep dir>` names every job by what it changed. A game that already
    wrote event files keeps their directory, so a resumed job rewinds the files it wrote, however
    it is resumed."""
    from hydra.types import RunMode

    root = Path(run_dir) / "tensorboard"
    if root.is_dir():
        if any(root.glob(EVENT_GLOB)):
            return ""
        written = sorted(p.name for p in root.iterdir() if p.is_dir() and any(p.glob(EVENT_GLOB)))
        if written:
            return written[0]
    if hydra_job is None or hydra_job.mode != RunMode.MULTIRUN:
        return ""
    name = str(hydra_job.job.override_dirname or "").replace(os.sep, "_")
    if len(name) > 200:  # a file name's limit is 255 bytes
        name = f"{name[:180]}...{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    return name


def hydra_job(run_dir: str | Path) -> Any | None:
    """The `HydraConfig` of the Hydra job playing in `run_dir`, or None: outside a Hydra app,
    or when the one Hydra holds is not this game's (e.g. a config composed for a test)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    out = OmegaConf.select(hc, "runtime.output_dir", default=None, throw_on_missing=False)
    if out is None or Path(str(out)).resolve() != Path(run_dir).resolve():
        return None
    return hc


#: keys (or their first part) that say where and how a game is watched, resumed, written or
#: cached, never what it plays (configs/hydra/default.yaml leaves them out of sweep run names)
UNRECORDED = (
    "run_dir",
    "hydra",
    "resume",
    "resume_allow",
    "progress",
    "progress_every_s",
    "tensorboard_flush_secs",
    "game.warm_start_cache",
)


def _recorded(key: str) -> bool:
    return key not in UNRECORDED and key.split(".")[0].split("@")[0] not in UNRECORDED


def _parse(value: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value


def game_hparams(cfg: Any, hydra: Any | None) -> dict[str, Any]:
    """What sets this game apart, for the HParams dashboard: the job's Hydra overrides (`hydra`:
    its `HydraConfig`), e.g. `{"objective": "dpo", "game.apo_coeff": 0}`; outside Hydra, every
    config value that differs from the packaged defaults (dotted keys)."""
    if hydra is not None:
        out = {}
        for override in hydra.overrides.task:
            key, _, value = override.partition("=")
            key = key.lstrip("+~")
            if _recorded(key):
                out[key] = _parse(value)
        return out
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from apo.train import CONFIG_MODULE

    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            base = compose(config_name="train")
    except ValueError:  # Hydra is initialised by someone else: no defaults to compare with
        return {}
    mine = _leaves(OmegaConf.to_container(cfg, resolve=False))
    theirs = _leaves(OmegaConf.to_container(base, resolve=False))
    missing = object()
    return {k: v for k, v in mine.items() if _recorded(k) and theirs.get(k, missing) != v}


def _leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(node, dict):
        return {prefix: node}
    out: dict[str, Any] = {}
    for k, v in node.items():
        out.update(_leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out
