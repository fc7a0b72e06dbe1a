"""The game state: the only thing that changes during a game besides the players' weights, saved
whole (with the weights a phase changed) after every phase and restored whole on resume."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass
class GameState:
    """Where a game stands. Phases read and update it; `apo.checkpoint.StateStore` keeps it."""

    #: the last finished phase, `(round, name)`; None before the first
    done: tuple[int, str] | None = None
    #: optimizer steps of each player so far (its TensorBoard steps continue from here)
    steps: dict[str, int] = field(default_factory=lambda: {"rm": 0, "policy": 0})
    #: the last logged value of every metric of each player's latest fit
    last_fit: dict[str, dict[str, float]] = field(default_factory=dict)
    #: one entry of metrics per evaluated round
    summary: list[dict[str, Any]] = field(default_factory=list)
    #: numbers of the round under way that phases report (their timers `time/<phase>_s`, any
    #: phase's own metrics), merged into the round's summary entry by its evaluation
    round_metrics: dict[str, float] = field(default_factory=dict)
    #: this round's samples: split (`rm`, `policy`) -> one record per prompt (prompt,
    #: responses, texts; rm_scores and judge scores once scored)
    samples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    #: reference log-likelihoods of the policy objective's selected samples (when it needs them)
    ref_logps: list[list[float]] | None = None
    #: the seed of this round's generation (and of every policy prediction that follows it)
    generation_seed: int = 0
    #: per test prompt, the last evaluation's mean judge score (win rates against it)
    prev_judge: dict[str, float] | None = None
    #: earlier rounds' samples of the RM split still in the APO term (`game.apo_history`):
    #: `{"round": r, "records": [...]}`, oldest first
    apo_pool: list[dict[str, Any]] = field(default_factory=list)
    #: the human pairs when they come from the warm-started policy (`data.human_pairs_from:
    #: policy`): part (`human_train`, `human_val`) -> `[{"prompt", "responses", "scores"}]`
    human_pairs: dict[str, list[dict[str, Any]]] | None = None
    #: label denoising's decision on the human training pairs (`rm.denoise`; indices into
    #: them, see `apo.game.denoising`), re-applied on resume
    denoised: dict[str, Any] | None = None
    #: the Lagrange multiplier of a constrained game (`game.cost`); None before its first step
    lagrange: float | None = None
    #: each of `game.judges`' standardisation, fixed at its fit: name -> {"mean", "std"}
    judge_rms: dict[str, dict[str, float]] = field(default_factory=dict)
    #: what the judge's preparation reported (the test RM's accuracy, its fit time)
    judge_info: dict[str, float] = field(default_factory=dict)
    #: config changes a resume was allowed to make (`resume_allow`): after which phase, what
    config_changes: list[dict[str, Any]] = field(default_factory=list)
    #: what phases registered outside the package keep between phases (saved with the rest)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["done"] = list(self.done) if self.done is not None else None
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GameState:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"game state: unknown fields {unknown}")
        state = cls(**d)
        if state.done is not None:
            state.done = (int(state.done[0]), str(state.done[1]))
        return state
