"""The game state at phase boundaries, so a killed game continues where it stopped (`resume=true`).

After every phase (warm start, generate, RM fit, score, reference log-probs, policy fit,
evaluate) rank 0 writes `run_dir/state/`: `game_state.pt` (the loop's counters and summary, the
DataModule's samples, every rank's RNG states, TensorBoard event-file sizes, the names of the
weight files) and a weight file per player version, e.g. `rm-r01-rm_fit.pt`, written only by a
phase that changed those weights. Each file goes to a temporary name first and is renamed
(`os.replace`), weights before the state that names them, so a kill at any moment leaves the
previous state whole; files no state names any more are removed after the rename.
`progress.json` beside it says which phase finished last, for people and monitors.

Every fit builds a fresh optimizer, so no optimizer state crosses a phase boundary and none is
saved; a fit killed midway is played again from the phase's start.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from apo.distributed import gather_objects, global_rank
from apo.records import atomic_file, write_json

STATE_DIR = "state"
STATE_FILE = "game_state.pt"
HISTORY_DIR = "history"
INDEX_FILE = "index.json"
PROGRESS_FILE = "progress.json"
VERSION = 2
#: config keys a resumed game may change: where it runs, how many rounds it plays in all, and
#: what never changes results (`hydra` is Hydra's own node, present in some tests' configs)
MUTABLE_KEYS = (
    "resume",
    "resume_allow",
    "run_dir",
    "hydra",
    "game.rounds",
    "tensorboard_flush_secs",
    "progress",
    "progress_every_s",
)
_MISSING = "<missing>"


# ---- RNG ---------------------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """This process's python, numpy and torch (CPU, and CUDA when in use) generator states."""
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            **np_state,
            "state": {**np_state["state"], "key": np_state["state"]["key"].tolist()},
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    key = np.asarray(np_state["state"]["key"], dtype=np.uint32)
    np.random.set_state({**np_state, "state": {**np_state["state"], "key": key}})
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def gather_rng_states() -> list[dict[str, Any]]:
    """Every rank's `rng_state()`, in rank order (a collective once a process group exists)."""
    return gather_objects([rng_state()])


def restore_rng_states(states: list[dict[str, Any]]) -> None:
    """Set this rank's saved states; a rank the state has none for (saved before it was
    launched) takes rank 0's, as it would have by starting from the same seed."""
    rank = global_rank()
    set_rng_state(states[rank] if rank < len(states) else states[0])


# ---- the config a state belongs to --------------------------------------------------------------
def config_record(cfg: DictConfig) -> str:
    """The config as JSON without `MUTABLE_KEYS`: what a resumed game must share with the saved one."""
    plain = OmegaConf.to_container(cfg, resolve=False)
    for key in MUTABLE_KEYS:
        *parents, last = key.split(".")
        node = plain
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return json.dumps(plain, sort_keys=True, default=str)


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(node, dict) or not node:
        return {prefix: node}
    out: dict[str, Any] = {}
    for k, v in node.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


class ResumeRefused(ValueError):
    """A run dir's saved game cannot be continued with this config (the run dir is left as it
    was)."""


def check_config(
    saved: str, cfg: DictConfig, path: Path, allow: list[str] | tuple[str, ...] = ()
) -> tuple[list[str], dict[str, tuple[Any, Any]]]:
    """Raise naming every differing key when `cfg` is not the config the state was saved with,
    except the keys in `allow` (a key allows everything under it, e.g. `objective` or
    `objective.lr`). Returns the keys the saved config lacks (added to the code since; allowed)
    and the allowed changes, key -> (saved, now)."""
    old, new = _flatten(json.loads(saved)), _flatten(json.loads(config_record(cfg)))
    allowed = lambda k: any(k == a or k.startswith(f"{a}.") for a in allow)  # noqa: E731
    changed = {k: (old[k], new.get(k, _MISSING)) for k in old if old[k] != new.get(k, _MISSING)}
    diff = sorted(k for k in changed if not allowed(k))
    if diff:
        shown = "; ".join(f"{k}: saved {old[k]!r}, now {new.get(k, _MISSING)!r}" for k in diff[:8])
        more = f" (and {len(diff) - 8} more)" if len(diff) > 8 else ""
        raise ResumeRefused(
            f"{path}: the saved game was played with a different config: {shown}{more}. Resume "
            "with the original overrides (game.rounds may change; allow others with "
            "resume_allow=[<key>,...]), or use a new run dir."
        )
    return sorted(k for k in new if k not in old), {k: changed[k] for k in sorted(changed)}


# ---- files ---------------------------------------------------------------------------------------
def atomic_save(obj: Any, path: Path) -> None:
    """`torch.save` to a temporary file beside `path`, synced, then renamed over `path`."""
    with atomic_file(path, "wb") as f:
        torch.save(obj, f)


def _load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path}: missing; the game state in {path.parent} is incomplete"
        ) from None
    except Exception as e:  # a foreign or damaged file: say which
        raise ValueError(f"{path}: not a readable game state file ({e})") from e


class StateStore:
    """`run_dir/state/`: rank 0 saves after each phase; any rank loads the latest saved state."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / STATE_DIR
        #: player weights -> the file holding their latest saved version
        self.weight_files: dict[str, str] = {}

    @property
    def file(self) -> Path:
        return self.path / STATE_FILE

    def exists(self) -> bool:
        return self.file.exists()

    def save(
        self,
        state: dict[str, Any],
        weights: dict[str, dict[str, torch.Tensor] | Callable[[], dict[str, torch.Tensor]]],
        tag: str,
    ) -> None:
        """Write `weights` (only those the phase changed) as `<name>-<tag>.pt`, then `state`
        naming them and the unchanged ones, also kept as `history/<tag>.pt` (the states of this
        round and the last, so that a guard can rewind to one); then drop files no state names.
        A player's weights may come as a function that gives them: it is called as its file is
        written, so that one player's weights at a time are in memory."""
        self.path.mkdir(parents=True, exist_ok=True)
        files = dict(self.weight_files)
        for name, tensors in weights.items():
            files[name] = f"{name}-{tag}.pt"
            atomic_save(tensors() if callable(tensors) else tensors, self.path / files[name])
        record = {**state, "version": VERSION, "weights": files}
        atomic_save(record, self.path / HISTORY_DIR / f"{tag}.pt")
        index = {k: v for k, v in self._index().items() if k != tag}
        index[tag] = {"done": list(state["done"]), "weights": files}
        write_json(self.path / HISTORY_DIR / INDEX_FILE, index)
        atomic_save(record, self.file)
        self.weight_files = files
        self._progress(state)
        self._prune(int(state["done"][0]) - 1)

    def _index(self) -> dict[str, dict[str, Any]]:
        """tag -> `done` and weight files of every kept state, in the order they were saved."""
        path = self.path / HISTORY_DIR / INDEX_FILE
        return json.loads(path.read_text()) if path.exists() else {}

    def _progress(self, state: dict[str, Any]) -> None:
        write_json(
            self.path / PROGRESS_FILE,
            {
                "round": state["done"][0],
                "phase": state["done"][1],
                "finished": state.get("finished", False),
                "steps": (state.get("game") or {}).get("steps"),
            },
        )

    def _prune(self, oldest_round: int) -> None:
        """Drop kept states of rounds before `oldest_round`, then every file no state names."""
        index = self._index()
        kept = {t: e for t, e in index.items() if e["done"][0] >= oldest_round}
        if kept != index:
            write_json(self.path / HISTORY_DIR / INDEX_FILE, kept)
        names = {f"{t}.pt" for t in kept} | {INDEX_FILE}
        for p in (self.path / HISTORY_DIR).iterdir():
            if p.name not in names:
                p.unlink(missing_ok=True)
        keep = {STATE_FILE, PROGRESS_FILE, *self.weight_files.values()}
        keep |= {f for e in kept.values() for f in e["weights"].values()}
        for p in self.path.iterdir():
            if p.is_file() and p.name not in keep:
                p.unlink(missing_ok=True)

    def rewind(self, before: tuple[int, str]) -> tuple[int, str]:
        """Make the last state saved before phase `before` (of this game) the game state again
        and drop the states saved after it; return its `(round, phase)`."""
        index = self._index()
        tags = list(index)
        done = [tuple(index[t]["done"]) for t in tags]
        at = next((i for i, d in enumerate(done) if d == before), len(done))
        if at == 0:
            raise ValueError(f"{self.path}: no state kept before round {before[0]} {before[1]}")
        tag = tags[at - 1]
        record = _load(self.path / HISTORY_DIR / f"{tag}.pt")
        write_json(self.path / HISTORY_DIR / INDEX_FILE, {t: index[t] for t in tags[:at]})
        atomic_save(record, self.file)
        self.weight_files = dict(record["weights"])
        self._progress(record)
        self._prune(int(record["done"][0]) - 1)
        return int(record["done"][0]), str(record["done"][1])

    def mark_interrupted(self, r: int, phase: str, reason: str) -> None:
        """Note in `progress.json` that phase `phase` of round `r` was left unfinished."""
        path = self.path / PROGRESS_FILE
        progress = json.loads(path.read_text()) if path.exists() else {}
        write_json(path, {**progress, "interrupted": {"round": r, "phase": phase, "by": reason}})

    def load(self) -> dict[str, Any]:
        """The saved state, with `weights` as name -> state dict."""
        state = _load(self.file)
        if not isinstance(state, dict) or state.get("version") != VERSION:
            found = state.get("version") if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"{self.file}: game state version {found!r}, expected {VERSION}")
        self.weight_files = dict(state["weights"])
        state["weights"] = {n: _load(self.path / f) for n, f in self.weight_files.items()}
        return state


@contextmanager
def isolated_rng(seed: int) -> Iterator[None]:
    """Run the block from `seed` and put every generator back as it was afterwards, so that what
    it draws does not depend on, nor change, the game's own random stream."""
    saved = rng_state()
    torch.manual_seed(seed)
    try:
        yield
    finally:
        set_rng_state(saved)
