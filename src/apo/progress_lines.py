"""The line each phase leaves in the log: `round 1 rm_fit: 10.6 s, rm/train 120 steps in 10.4 s,
loss 0.6100, 5.2k tok/s, peak 812 MB`. Every phase gets its time and the fits it ran; the
phases below add what they produced. A phase registered elsewhere gets the common part."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from apo.progress import duration, si

if TYPE_CHECKING:
    from apo.game.loop import GameLoop
    from apo.progress import GameWatch


def _samples(recs: list[dict[str, Any]]) -> int:
    return sum(len(rec["responses"]) for rec in recs)


def _generate(game: GameLoop, r: int) -> list[str]:
    samples = game.state.samples
    n = sum(_samples(recs) for recs in samples.values())
    prompts = sum(len(recs) for recs in samples.values())
    out = [f"{n:,} samples of {prompts:,} prompts"]
    rate = game.state.round_metrics.get("perf/generate_tokens_per_s")
    if rate is not None:
        out.append(f"{si(rate)} tok/s")
    return out


def _score(game: GameLoop, r: int) -> list[str]:
    n = sum(_samples(recs) for recs in game.state.samples.values())
    return [f"{n:,} samples scored by the RM and the {game.judge.name} judge"]


def _reference(game: GameLoop, r: int) -> list[str]:
    ref = game.state.ref_logps
    return [f"reference log-probs of {sum(len(x) for x in ref):,} samples"] if ref else []


def _evaluate(game: GameLoop, r: int) -> list[str]:
    # the two numbers to follow; the round's line of the RoundWriter has the others
    last = game.state.summary[-1] if game.state.summary else {}
    keys = (game.judge.keys.reward, game.judge.keys.onpolicy_acc)
    # and the other judges' verdicts, when the game has them
    keys += ("policy/cost", "game/lagrange", "rm/ensemble/std_ratio")
    out = [f"{k} {last[k]:.4f}" for k in keys if k in last]
    if "game/warm_start_ratio" in last:  # round 0: the warm start's health
        out.append(
            f"warm start at {last['game/warm_start_ratio']:.0%} of its demonstrations' "
            f"{last['game/demo_reward']:.4f}"
        )
    return out


def _denoise(game: GameLoop, r: int) -> list[str]:
    m = game.dm.data.meta
    changed = sum(m.get(f"denoise_{k}", 0) for k in ("flipped", "dropped", "softened"))
    out = [f"{game.cfg.rm.denoise.rule} {changed} of {m.get('denoise_pairs', 0)} human pairs"]
    if "denoise_precision" in m:
        out.append(
            f"{m['denoise_precision']:.0%} of them mislabeled by the oracle "
            f"(all pairs: {m['denoise_mislabeled_rate']:.0%})"
        )
    return out


def _cost_model(game: GameLoop, r: int) -> list[str]:
    m = game.dm.data.meta
    return [
        f"cost model accuracy {m.get('cost_model_val_acc', float('nan')):.3f} on held-out labels"
    ]


def _warm_start(game: GameLoop, r: int) -> list[str]:
    return [] if game.watch.fits else ["loaded from the warm-start cache"]


#: what a phase adds to its line, by name
DETAILS: dict[str, Callable[[GameLoop, int], list[str]]] = {
    "warm_start": _warm_start,
    "generate": _generate,
    "score": _score,
    "reference": _reference,
    "evaluate": _evaluate,
    "denoise": _denoise,
    "cost_model": _cost_model,
}


def fit_text(fit: dict[str, Any], named: bool) -> str:
    """`rm/train 120 steps in 10.4 s, loss 0.6100, 5.2k tok/s, peak 812 MB`."""
    perf = fit.get("perf", {})
    head = f"{fit['name']} " if named else ""
    parts = [f"{head}{fit['steps']} steps in {perf.get('seconds', 0.0):.1f} s"]
    if fit.get("loss") is not None:
        parts.append(f"loss {fit['loss']:.4f}")
    if "tokens_per_s" in perf:
        parts.append(f"{si(perf['tokens_per_s'])} tok/s")
    if "peak_memory_mb" in perf:
        parts.append(f"peak {perf['peak_memory_mb']:.0f} MB")
    return ", ".join(parts)


def phase_line(watch: GameWatch, r: int, name: str, seconds: float) -> str:
    """The line of round `r`'s phase `name`, which took `seconds`."""
    game = watch.game
    parts = [f"{seconds:.1f} s"]
    parts += [fit_text(f, named=True) for f in watch.fits]
    details = DETAILS.get(name)
    if details is not None:
        parts += details(game, r)
    if name == "evaluate":
        eta = watch.game_eta()
        if eta is not None:
            parts.append(f"game ETA {duration(eta)}")
    return f"round {r} {name}: " + ", ".join(parts)


def plan_line(watch: GameWatch, first: int) -> str:
    """The first line of a game: its phases by round, objective, players' sizes, where it writes."""
    by_round: dict[int, list[str]] = {}
    for r, name in watch.schedule:
        by_round.setdefault(r, []).append(name)
    rounds = [r for r in by_round if r > 0]
    start = " → ".join(by_round.get(0, []))
    each = " → ".join(by_round[rounds[0]]) if rounds else ""
    params = {
        n: sum(p.numel() for p in m.parameters())
        for n, m in (("policy", watch.game.players.policy), ("RM", watch.game.players.rm))
    }
    parts = [
        f"APO game plan: round 0 {start}, then {len(rounds)} rounds of {each} "
        f"({len(watch.schedule)} phases)",
        f"objective {watch.game.cfg.objective.name}",
        ", ".join(f"{n} {si(v)} parameters" for n, v in params.items()),
        f"run dir {watch.game.run_dir}",
        f"TensorBoard: tensorboard --logdir {watch.game.logger.log_dir.rstrip('/')}",
        f"progress {watch.mode}",
    ]
    if first:
        r, name = watch.schedule[first - 1]
        parts.append(f"resuming after round {r} {name} ({first} phases played)")
    return "; ".join(parts)
