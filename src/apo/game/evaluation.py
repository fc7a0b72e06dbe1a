"""The evaluation of a round: the policy on held-out test prompts and the RM on held-out human
pairs, judged by the game's judge. It returns numbers and records; it writes nothing."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from apo.calibration import calibration_errors, preference_probs
from apo.data.datamodule import GameDataModule
from apo.decoding import best_of_n
from apo.game.plan import GamePlan
from apo.game.players import Players
from apo.game.trainers import Trainers
from apo.judges import Judge
from apo.metrics import mean, pairwise_agreement, std
from apo.modules.ensemble import member_scales, order_disagreement, z_spread


@dataclass
class Evaluation:
    """One round's evaluation."""

    metrics: dict[str, Any]
    #: the test prompts' records: prompt, texts, responses, rm_scores, logps, ref_logps, judge
    test: list[dict[str, Any]]
    #: `calibration_errors` of the RM on the held-out human pairs (with its bins)
    calibration: dict[str, Any]
    #: per test prompt, the mean judge score (the next round's win rate compares with it)
    judge_by_prompt: dict[str, float]
    #: the RM's scores by what it scored (`test_samples`: the policy's test samples;
    #: `val_chosen` / `val_rejected`: the held-out human pairs), for histograms
    rm_scores: dict[str, list[float]] = field(default_factory=dict)


class Evaluator:
    """Evaluates the players after the warm start and after every round.

    Args:
        plan: the evaluation's sampling and samples per test prompt.
        players, dm, trainers: the game's.
        judge: scores the test samples (and the human pairs, when it can).
        seed: the evaluation of round r samples from `seed * 10007 + 5000 + r`.
        calibration_bins: uniform bins of `sigmoid(r_i - r_j)` for ECE / ACE / MCE.
    """

    #: demonstrations the judge scores at round 0 (a sample keeps a test RM's cost small)
    DEMOS = 512

    def __init__(
        self,
        plan: GamePlan,
        players: Players,
        dm: GameDataModule,
        trainers: Trainers,
        judge: Judge,
        seed: int,
        calibration_bins: int,
    ) -> None:
        self.plan, self.players, self.dm, self.trainers = plan, players, dm, trainers
        self.judge, self.seed, self.bins = judge, seed, calibration_bins

    def evaluate(
        self,
        r: int,
        samples: dict[str, list[dict[str, Any]]],
        prev_judge: dict[str, float] | None,
    ) -> Evaluation:
        """Round `r`'s evaluation; `samples` are the round's training samples (scored, judged),
        `prev_judge` the last evaluation's `judge_by_prompt`."""
        dm, data, keys = self.dm, self.dm.data, self.judge.keys
        # the policy itself is evaluated, never the sampling mixture
        policy = self.players.policy_module(
            sampling=self.plan.eval_sampling, seed=self.seed * 10007 + 5000 + r
        )
        # one prediction Trainer per player for all of its predictions here
        policy_trainer = self.trainers.make("policy")
        test = dm.generate(
            policy_trainer, policy, data.test_prompts, self.plan.eval_samples_per_prompt
        )
        lp = self.trainers.predict(
            "policy", policy, dm.listwise_loader(dm.sample_items(test), "logps"), policy_trainer
        )
        rm, rm_trainer = self.players.rm_module(), self.trainers.make("rm")
        scores = self.trainers.predict(
            "rm", rm, dm.listwise_loader(dm.sample_items(test, "rm"), "score"), rm_trainer
        )
        val = self.trainers.predict(
            "rm", rm, dm.listwise_loader(dm.human_items(data.human_val, "rm"), "score"), rm_trainer
        )
        for rec, lps, sc, j in zip(test, lp, scores, self.judge.score(test)):
            rec["rm_scores"], rec["logps"], rec["ref_logps"], rec["judge"] = (
                sc["rewards"],
                lps["logps"],
                lps["ref_logps"],
                j,
            )
            rec["entropy"], rec["lengths"] = lps["entropy"], lps["lengths"]
            if "member_rewards" in sc:  # an RM ensemble: each member's reward of each sample
                rec["rm_members"] = sc["member_rewards"]
        val_rewards = [v["rewards"] for v in val]
        val_scores = [it.scores for it in data.human_val]
        calib = self.calibration(val_rewards, val_scores)
        flat = lambda key: [x for rec in test for x in rec[key]]  # noqa: E731
        m: dict[str, Any] = {
            "round": r,
            "rm/val/acc": pairwise_agreement(val_rewards, val_scores),
            **{f"rm/val/{k}": float(calib[k]) for k in ("ece", "ace", "mce")},
            "rm/val/reward_mean": mean([x for row in val_rewards for x in row]),
            "rm/val/reward_std": std([x for row in val_rewards for x in row]),
            keys.onpolicy_acc: pairwise_agreement(
                [rec["rm_scores"] for rec in test], [rec["judge"] for rec in test]
            ),
            keys.reward: mean(flat("judge")),
            "policy/kl": mean([a - b for a, b in zip(flat("logps"), flat("ref_logps"))]),
            "policy/length": mean([len(ids) for rec in test for ids in rec["responses"]]),
            "policy/rm_reward": mean(flat("rm_scores")),
            # nats per response token, over the policy's own test samples: a collapse monitor
            "policy/entropy": sum(flat("entropy")) / max(sum(flat("lengths")), 1.0),
        }
        # decoding-time alignment: the judge's score of the RM's best of the N test samples
        m[keys.best_of_n] = mean([_rm_pick(rec) for rec in test])
        # each test record's responses beside its scores: the order measure skips identical ones
        scored = [{**sc, "responses": rec["responses"]} for sc, rec in zip(scores, test)]
        m.update(self.disagreement(scored, val, samples.get("policy") if r > 0 else None))
        if keys.exact_match:
            m[keys.exact_match] = mean([float(o == 1.0) for o in flat("judge")])
        if r > 0:
            m.update(self.sample_metrics(samples["policy"]))
        else:  # the warm start's health: the SFT policy against its own demonstrations
            demos = [
                {"prompt": p, "texts": [d], "responses": [dm.enc.response(d)[:-1]]}
                for p, d in data.sft[: self.DEMOS]
            ]
            demo = mean([s for row in self.judge.score(demos) for s in row])
            m["game/demo_reward"] = demo
            m["game/warm_start_ratio"] = m[keys.reward] / demo if demo > 0 else math.nan
        if keys.val_acc:
            judged = self.judge.score(
                [{"prompt": it.prompt, "texts": it.responses} for it in data.human_val]
            )
            m[keys.val_acc] = pairwise_agreement(val_rewards, judged)
        now = {rec["prompt"]: mean(rec["judge"]) for rec in test}
        if keys.win_rate_vs_prev and prev_judge:
            shared = [p for p in now if p in prev_judge]
            wins = [
                1.0 if now[p] > prev_judge[p] else 0.5 if now[p] == prev_judge[p] else 0.0
                for p in shared
            ]
            m[keys.win_rate_vs_prev] = mean(wins)
        return Evaluation(
            metrics=m,
            test=test,
            calibration=calib,
            judge_by_prompt=now,
            rm_scores={"test_samples": flat("rm_scores"), **self.chosen_rejected(val_rewards)},
        )

    @staticmethod
    def disagreement(
        test: list[dict[str, Any]],
        val: list[dict[str, Any]],
        samples: list[dict[str, Any]] | None,
    ) -> dict[str, float]:
        """An RM ensemble's spread (mean std over its members) on the policy's test samples, on
        the held-out human responses, their ratio (above 1: the policy's samples are where the
        RM is unsure, an oracle-free sign of distribution shift) and on the round's training
        samples of the policy split; the same free of the members' offsets and scales
        (`zstd_*`: rewards standardised per member on the held-out responses; `order_*`: how
        often two members order two distinct responses of a prompt differently). Nothing for a
        single RM."""
        if not test or "rewards_std" not in test[0]:
            return {}
        ratio = lambda a, b: a / b if b > 0 else math.nan  # noqa: E731
        on_test = mean([x for s in test for x in s["rewards_std"]])
        on_val = mean([x for s in val for x in s["rewards_std"]])
        out = {
            "rm/ensemble/std_test": on_test,
            "rm/ensemble/std_val": on_val,
            "rm/ensemble/std_ratio": ratio(on_test, on_val),
        }
        if samples and "rm_std" in samples[0]:
            out["rm/ensemble/std_samples"] = mean([x for rec in samples for x in rec["rm_std"]])
        if "member_rewards" in test[0] and val and "member_rewards" in val[0]:
            t, v = ([s["member_rewards"] for s in recs] for recs in (test, val))
            loc, scale = member_scales(v)
            z_test, z_val = (mean(z_spread(rows, loc, scale)) for rows in (t, v))
            o_test, o_val = (
                order_disagreement(rows, [s.get("responses") for s in recs])
                for rows, recs in ((t, test), (v, val))
            )
            out |= {
                "rm/ensemble/zstd_test": z_test,
                "rm/ensemble/zstd_val": z_val,
                "rm/ensemble/zstd_ratio": ratio(z_test, z_val),
                "rm/ensemble/order_test": o_test,
                "rm/ensemble/order_val": o_val,
                "rm/ensemble/order_ratio": ratio(o_test, o_val),
            }
        return out

    def chosen_rejected(self, val_rewards: list[list[float]]) -> dict[str, list[float]]:
        """The held-out pairs' rewards split into the annotators' chosen response (the highest
        label of an item, the first among ties) and the others."""
        chosen, rejected = [], []
        for rewards, item in zip(val_rewards, self.dm.data.human_val):
            best = max(range(len(rewards)), key=lambda j: item.scores[j])
            chosen.append(rewards[best])
            rejected += [r for j, r in enumerate(rewards) if j != best]
        return {"val_chosen": chosen, "val_rejected": rejected}

    def calibration(self, rewards: list[list[float]], scores: list[list[float]]) -> dict:
        """ECE / ACE / MCE of sigmoid(r_i - r_j) on the human pairs (both orientations)."""
        k = max(len(r) for r in rewards)
        pad = lambda rows: torch.tensor([r + [0.0] * (k - len(r)) for r in rows])  # noqa: E731
        mask = torch.tensor([[j < len(r) for j in range(k)] for r in rewards])
        probs, labels = preference_probs(pad(rewards), pad(scores), mask)
        return calibration_errors(probs, labels, n_bins=self.bins)

    def sample_metrics(self, recs: list[dict[str, Any]]) -> dict[str, float]:
        """How well this round's RM picked among the policy's own training samples."""
        keys = self.judge.keys
        best = [_rm_pick(rec) for rec in recs]
        return {
            keys.samples_reward: mean([o for rec in recs for o in rec["judge"]]),
            keys.rm_best: mean(best),
            keys.best: mean([max(rec["judge"]) for rec in recs]),
            keys.samples_acc: pairwise_agreement(
                [rec["rm_scores"] for rec in recs], [rec["judge"] for rec in recs]
            ),
        }


def _rm_pick(rec: dict[str, Any]) -> float:
    """The judge's score of the RM's best among a record's samples (best-of-N over all of them)."""
    return rec["judge"][best_of_n(rec["rm_scores"], len(rec["rm_scores"]))[0]]
