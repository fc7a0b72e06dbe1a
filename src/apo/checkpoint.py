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
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from apo.distributed import gather_objects, global_rank
from apo.records import atomic_file, write_json

STATE_DIR = "state"
STATE_FILE = "game_state.pt"
PROGRESS_FILE = "progress.json"
VERSION = 1
#: config keys a resumed game may change: where it runs, how many rounds it plays in all, and
#: what never changes results (`hydra` is Hydra's own node, present in some tests' configs)
MUTABLE_KEYS = ("resume", "run_dir", "hydra", "game.rounds", "tensorboard_flush_secs")
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


def check_config(saved: str, cfg: DictConfig, path: Path) -> list[str]:
    """Raise naming every differing key when `cfg` is not the config the state was saved with.

    Keys the saved config lacks (added to the code since) are allowed; they are returned."""
    old, new = _flatten(json.loads(saved)), _flatten(json.loads(config_record(cfg)))
    diff = sorted(k for k in old if old[k] != new.get(k, _MISSING))
    if diff:
        shown = "; ".join(f"{k}: saved {old[k]!r}, now {new.get(k, _MISSING)!r}" for k in diff[:8])
        more = f" (and {len(diff) - 8} more)" if len(diff) > 8 else ""
        raise ValueError(
            f"{path}: the saved game was played with a different config: {shown}{more}. Resume "
            "with the original overrides (only game.rounds may change), or use a new run dir."
        )
    return sorted(k for k in new if k not in old)


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
        self, state: dict[str, Any], weights: dict[str, dict[str, torch.Tensor]], tag: str
    ) -> None:
        """Write `weights` (only those the phase changed) as `<name>-<tag>.pt`, then `state`
        naming them and the unchanged ones; then drop files no state names."""
        self.path.mkdir(parents=True, exist_ok=True)
        files = dict(self.weight_files)
        for name, tensors in weights.items():
            files[name] = f"{name}-{tag}.pt"
            atomic_save(tensors, self.path / files[name])
        atomic_save({**state, "version": VERSION, "weights": files}, self.file)
        self.weight_files = files
        write_json(
            self.path / PROGRESS_FILE,
            {
                "round": state["done"][0],
                "phase": state["done"][1],
                "finished": state.get("finished", False),
                "steps": state.get("loop", {}).get("steps"),
            },
        )
        keep = {STATE_FILE, PROGRESS_FILE, *files.values()}
        for p in self.path.iterdir():
            if p.is_file() and p.name not in keep:
                p.unlink(missing_ok=True)

    def load(self) -> dict[str, Any]:
        """The saved state, with `weights` as name -> state dict."""
        state = _load(self.file)
        if not isinstance(state, dict) or state.get("version") != VERSION:
            found = state.get("version") if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"{self.file}: game state version {found!r}, expected {VERSION}")
        self.weight_files = dict(state["weights"])
        state["weights"] = {n: _load(self.path / f) for n, f in self.weight_files.items()}
        return state
