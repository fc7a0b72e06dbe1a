"""What a game writes after each evaluation: the round's files, the summary, TensorBoard's round
metrics and sample texts, the reliability diagram and the players' checkpoints."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from apo.calibration import reliability_diagram
from apo.distributed import full_state_dict, is_global_zero
from apo.export import save_player
from apo.game.evaluation import Evaluation
from apo.game.players import Players
from apo.judges import JudgeKeys
from apo.logger import GameTensorBoardLogger
from apo.modules.ensemble import member_state, members
from apo.records import atomic_file, round_dir, write_json, write_jsonl

log = logging.getLogger(__name__)


class RoundWriter:
    """Writes a round's results into `run_dir` (rank 0 writes; the others return at once).

    Args:
        run_dir: the game's run directory.
        logger: the game's TensorBoard logger.
        keys: the judge's metric names (its score column, the logged table keys).
        judge_name: shown in TensorBoard's sample table.
        save_weights: also export both players after every round (the last round always is).
        num_text_samples: sample texts per round in TensorBoard.
    """

    def __init__(
        self,
        run_dir: Path,
        logger: GameTensorBoardLogger,
        keys: JudgeKeys,
        judge_name: str,
        save_weights: bool,
        num_text_samples: int,
    ) -> None:
        self.run_dir, self.logger, self.keys, self.judge_name = (
            Path(run_dir),
            logger,
            keys,
            judge_name,
        )
        self.save_weights, self.num_text_samples = save_weights, num_text_samples

    def write_round(
        self,
        r: int,
        ev: Evaluation,
        samples: dict[str, list[dict[str, Any]]],
        players: Players,
        final: bool,
        summary: dict[str, Any],
    ) -> None:
        """Round `r`'s files: `reliability.png`, `calibration.json`, `samples.jsonl` (the round's
        training samples, from round 1), `eval_samples.jsonl`, `metrics.json`; the players'
        checkpoints (every round with `save_weights`, `final/` after the last); `summary.json`
        (`summary`); TensorBoard's round metrics and sample texts."""
        dirs = [round_dir(self.run_dir, r)] if self.save_weights else []
        dirs += [self.run_dir / "final"] if final else []
        # gathered on every rank (a collective for sharded players), written by rank 0
        players_ = (("policy", players.policy), ("rm", players.rm))
        weights = {n: full_state_dict(m) for n, m in players_} if dirs else {}
        if not is_global_zero():
            return
        d, m = round_dir(self.run_dir, r), ev.metrics
        calib = ev.calibration
        reliability_diagram(calib, d / "reliability.png", f"RM on held-out human pairs, round {r}")
        write_json(
            d / "calibration.json",
            {k: v.tolist() if hasattr(v, "tolist") else v for k, v in calib.items()},
        )
        log.info("round %d: %s", r, "  ".join(f"{k}={m[k]:.4f}" for k in self.keys.table if k in m))
        if r > 0:
            write_jsonl(
                d / "samples.jsonl",
                [row for split, recs in samples.items() for row in self.rows(r, recs, split)],
            )
        write_jsonl(d / "eval_samples.jsonl", self.rows(r, ev.test, "test"))
        write_json(d / "metrics.json", m)
        self.export(players, weights, dirs)
        write_json(self.run_dir / "summary.json", summary)
        self.logger.log_round(
            {k: v for k, v in m.items() if k != "round"},
            r,
            {"policy/samples": self.text(ev.test)},
            histograms=self.histograms(ev, samples if r > 0 else {}),
            images={"rm/val/reliability": _read_png(d / "reliability.png")},
        )

    def histograms(
        self, ev: Evaluation, samples: dict[str, list[dict[str, Any]]]
    ) -> dict[str, list[float]]:
        """The round's RM scores for TensorBoard's histograms: on the policy's test samples, on
        this round's training samples of each split, on the held-out pairs' chosen and rejected
        responses."""
        out = {f"rm/scores/{k}": v for k, v in ev.rm_scores.items()}
        for split, recs in samples.items():
            out[f"rm/scores/{split}_samples"] = [x for rec in recs for x in rec["rm_scores"]]
        return out

    def rows(self, r: int, recs: list[dict[str, Any]], split: str) -> list[dict[str, Any]]:
        """One JSONL row per sample: prompt, response, RM score, judge score (and log-probs)."""
        return [
            {
                "round": r,
                "split": split,
                "prompt": rec["prompt"],
                "sample": j,
                "response": t,
                "rm_score": rec["rm_scores"][j],
                self.keys.record: rec["judge"][j],
                **(
                    {"logp": rec["logps"][j], "ref_logp": rec["ref_logps"][j]}
                    if "logps" in rec
                    else {}
                ),
                # a constrained game's predicted cost (rm_score is then r - lambda * cost)
                **({"cost_score": rec["cost_scores"][j]} if "cost_scores" in rec else {}),
                # each of game.judges' standardised score (rm_score includes their weighted sum)
                **{f"judge_{n}": z[j] for n, z in rec.get("judge_scores", {}).items()},
                # an RM ensemble's members' mean and std (rm_score is the shaped reward)
                **(
                    {"rm_mean": rec["rm_mean"][j], "rm_std": rec["rm_std"][j]}
                    if "rm_std" in rec
                    else {}
                ),
                # and each member's own reward (the order of two samples by member, per member)
                **({"rm_members": rec["rm_members"][j]} if rec.get("rm_members") else {}),
            }
            for rec in recs
            for j, t in enumerate(rec["texts"])
        ]

    def export(self, players: Players, weights: dict[str, dict], dirs: list[Path]) -> None:
        """Both players as plain transformers checkpoints in `<dir>/policy` and `<dir>/rm` (an RM
        ensemble's members in `<dir>/rm/member_<i>`, each a checkpoint of its own)."""
        rms = members(players.rm)
        for out in dirs:
            save_player(players.policy, players.tokenizer, out / "policy", weights["policy"])
            if len(rms) == 1:
                save_player(players.rm, players.rm_tokenizer, out / "rm", weights["rm"])
                continue
            for i, member in enumerate(rms):
                state = member_state(weights["rm"], i)
                save_player(member, players.rm_tokenizer, out / "rm" / f"member_{i}", state)

    def text(self, test: list[dict[str, Any]]) -> str:
        """A Markdown table of the first test samples for TensorBoard's text tab."""
        shown = "\n".join(
            f"| `{rec['prompt']}` | `{rec['texts'][0]}` | {rec['judge'][0]:.2f} | "
            f"{rec['rm_scores'][0]:.2f} |"
            for rec in test[: self.num_text_samples]
        )
        judge = "oracle" if self.judge_name == "oracle" else "test RM"
        return f"| prompt | response | {judge} | RM |\n|---|---|---|---|\n" + shown


def write_run_config(run_dir: Path, cfg: Any) -> None:
    """`.hydra/config.yaml`, `hydra.yaml` and `overrides.yaml` of a Hydra run, written by the
    game once its config is validated and a resume accepted (Hydra's own copy is off:
    `hydra.output_subdir: null`), so a refused run never rewrites a game's record. Nothing
    outside a Hydra app."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    if not HydraConfig.initialized():
        return
    hc = HydraConfig.get()
    files = {
        "config.yaml": OmegaConf.to_yaml(cfg),
        "hydra.yaml": OmegaConf.to_yaml({"hydra": hc}),
        "overrides.yaml": OmegaConf.to_yaml(list(hc.overrides.task)),
    }
    for name, text in files.items():
        with atomic_file(Path(run_dir) / ".hydra" / name) as f:
            f.write(text)


def _read_png(path: Path) -> Any:
    """An RGB array `[H, W, 3]` of a PNG the round wrote, for TensorBoard's images."""
    from matplotlib.image import imread

    return imread(path)[..., :3]
