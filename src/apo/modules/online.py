"""The policy's online RL fit (RLOO, GRPO, PPO): every step samples K responses per prompt from
the current policy, the game's current RM scores them (frozen, in inference mode), and the
policy is updated on them against the frozen reference. One LightningModule for one fit."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
from torch import nn

from apo.data.collate import pad_2d
from apo.losses.rl import (
    clipped_policy_loss,
    clipped_value_loss,
    gae,
    group_advantages,
    kl_per_token,
    rloo_advantages,
)
from apo.modules.logps import per_token_logps
from apo.modules.sampling import SamplingSpec, sample
from apo.rewards import constrained, penalised, weighted
from apo.strategies import build_optimizer, shard


class OnlinePolicyModule(L.LightningModule):
    """The policy fitted online against the game's RM (manual optimisation: each batch is
    optimised `epochs` times, PPO over `minibatches`).

    Args:
        model, ref_model: the policy and the frozen `pi_ref`.
        rm: the game's RM as a scoring `RewardModule` (its parameters are frozen here).
        critic: PPO's value model (a `RewardModule` whose per-token head gives values), else None.
        rl: the objective's settings (`PolicyObjective.rl()`).
        optimizer, lr: the policy's optimizer factory and the round's rate (None: its own).
        sampling, num_samples: how the K responses of a prompt are drawn.
        rm_batch: `(prompts, responses as policy token ids) -> a listwise batch for the RM`.
        gold: `(prompts, response texts) -> judge scores`, logged as `gold_reward` (or None).
        decode: `policy token ids -> text`.
        eos_token_id, pad_token_id: the policy tokenizer's.
        seed: seeds each step's sampling, per rank.
        grad_clip: the gradient norm clipped to (manual optimisation clips itself).
        log_prefix: e.g. `policy/train`.
        uncertainty_penalty: kappa of the reward `mean - kappa * std` of an RM ensemble.
        cost, lagrange: a constrained game's cost model (a scoring `RewardModule`, frozen here)
            and multiplier: the reward is `r - lagrange * sigmoid(cost logit)` (`apo.rewards`).
        judges: the game's other RMs (`game.judges`) as `(scoring RewardModule, weight, mean,
            std)`, frozen here: the reward gains `weight * (score - mean) / std` of each.
    """

    def __init__(
        self,
        model: nn.Module,
        ref_model: nn.Module,
        rm: L.LightningModule,
        critic: L.LightningModule | None,
        rl: dict[str, Any],
        optimizer: Callable[..., torch.optim.Optimizer],
        lr: float | None,
        sampling: SamplingSpec,
        num_samples: int,
        rm_batch: Callable[[list[str], list[list[int]]], dict],
        gold: Callable[[list[str], list[str]], list[float]] | None,
        decode: Callable[[list[int]], str],
        eos_token_id: int,
        pad_token_id: int,
        seed: int,
        grad_clip: float | None,
        log_prefix: str,
        uncertainty_penalty: float = 0.0,
        cost: nn.Module | None = None,
        lagrange: float = 0.0,
        judges: Sequence[tuple[L.LightningModule, float, float, float]] = (),
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.model, self.ref_model, self.rm, self.critic = model, ref_model, rm, critic
        self.rm.requires_grad_(False)
        self.rl, self.optimizer_factory, self.lr = rl, optimizer, lr
        self.sampling, self.k = sampling, num_samples
        self.rm_batch, self.gold, self.decode = rm_batch, gold, decode
        self.kappa = uncertainty_penalty
        self.cost, self.lagrange = cost, lagrange
        if cost is not None:
            cost.requires_grad_(False)
        self.judges = nn.ModuleList([j for j, *_ in judges])
        self.judges.requires_grad_(False)
        self.judge_norms = [tuple(rest) for _, *rest in judges]
        self.eos, self.pad, self.seed = eos_token_id, pad_token_id, seed
        self.grad_clip, self.log_prefix = grad_clip, log_prefix
        #: seconds of every step's parts: sampling, log-probs, scoring, update
        self.split: dict[str, list[float]] = {"sample": [], "logps": [], "score": [], "update": []}

    def configure_model(self) -> None:
        roots = [self.model, self.ref_model, *self.rm.shard_roots()]
        frozen = [self.ref_model, self.rm.model]
        if self.cost is not None:
            roots += self.cost.shard_roots()
            frozen.append(self.cost.model)
        for judge in self.judges:
            roots += judge.shard_roots()
            frozen.append(judge.model)
        if self.critic is not None:
            roots += [self.critic.model.base_model, self.critic.model.score]
        shard(self, roots, frozen=frozen)

    def on_train_start(self) -> None:
        self.ref_model.eval()
        self.rm.eval()
        if self.cost is not None:
            self.cost.eval()
        self.judges.eval()

    # ---- a rollout -------------------------------------------------------------------------
    @torch.no_grad()
    def rollout(self, batch: dict) -> dict[str, Any]:
        """K samples per prompt, their sequences, old and reference log-probs, RM scores."""
        torch.manual_seed(self.seed * 1000 + self.global_step * 7 + self.global_rank)
        t0 = time.perf_counter()
        responses = sample(
            self.model,
            batch["input_ids"],
            batch["attention_mask"],
            num_samples=self.k,
            spec=self.sampling,
            eos_token_id=self.eos,
            pad_token_id=self.pad,
            ref_model=self.ref_model if self.sampling.mixture > 0 else None,
            stop_together=lambda f: self.trainer.strategy.reduce_boolean_decision(f, all=True),
        )
        prompts = [p for p in batch["prompt_ids"] for _ in range(self.k)]
        flat = [r for rows in responses for r in rows]
        seqs = [p + r + [self.eos] for p, r in zip(prompts, flat)]
        ids, att = pad_2d(seqs, self.pad)
        loss_mask = torch.zeros_like(att)
        for i, (p, s) in enumerate(zip(prompts, seqs)):
            loss_mask[i, len(p) : len(s)] = 1
        ids, att, loss_mask = (t.to(self.device) for t in (ids, att, loss_mask))
        t1 = time.perf_counter()
        old, ent = per_token_logps(self.model, ids, att, loss_mask, entropy=True)
        ref, _ = per_token_logps(self.ref_model, ids, att, loss_mask)
        t2 = time.perf_counter()
        texts = [p for p in batch["prompts"] for _ in range(self.k)]
        rmb = {
            k: v.to(self.device) if torch.is_tensor(v) else v
            for k, v in self.rm_batch(texts, flat).items()
        }
        mean, sd = self.rm.listwise_spread(rmb)
        scores = penalised(mean, sd, self.kappa).reshape(-1)
        if len(self.judges):
            extra = [
                (w, (judge.listwise_rewards(rmb).reshape(-1) - mu) / std)
                for judge, (w, mu, std) in zip(self.judges, self.judge_norms)
            ]
            scores = weighted(scores, extra)
        if self.cost is not None:
            costs = torch.sigmoid(self.cost.listwise_rewards(rmb)).reshape(-1)
            scores = constrained(scores, costs, self.lagrange)
        self.split["sample"].append(t1 - t0)
        self.split["logps"].append(t2 - t1)
        self.split["score"].append(time.perf_counter() - t2)
        out = {
            "ids": ids,
            "att": att,
            "loss_mask": loss_mask,
            "old": old,
            "ref": ref,
            "entropy": ent,
            "scores": scores,
            "texts": texts,
            "flat": flat,
        }
        if self.critic is not None:
            out["old_values"] = self._values(ids, att, loss_mask)
        return out

    def _values(
        self, ids: torch.Tensor, att: torch.Tensor, loss_mask: torch.Tensor
    ) -> torch.Tensor:
        """The critic's value of each response position `[N, T-1]` (its head on every token)."""
        hidden = self.critic.model.base_model(input_ids=ids, attention_mask=att)[0]
        v = self.critic.model.score(hidden).squeeze(-1).float()[:, :-1]
        return torch.where(loss_mask[:, 1:].bool(), v, torch.zeros_like(v))

    def advantages(
        self, ro: dict[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """`(advantages, returns or None, per-sequence KL)` of a rollout."""
        rl, m = self.rl, ro["loss_mask"][:, 1:].bool()
        kl_tok = kl_per_token(ro["old"], ro["ref"], rl["kl_estimator"]) * m
        kl_seq = kl_tok.sum(-1)
        if rl["advantage"] == "gae":
            rewards = -rl["beta"] * kl_tok
            last = m.long().cumsum(-1).argmax(-1)  # each row's last response token
            rewards[torch.arange(len(last)), last] += ro["scores"]
            adv, ret = gae(rewards, ro["old_values"], m, rl["gamma"], rl["lam"])
            # whitened over the batch's tokens, as the PPO implementations do
            mean, std = adv[m].mean(), adv[m].std().clamp(min=1e-6)
            return torch.where(m, (adv - mean) / std, torch.zeros_like(adv)), ret, kl_seq
        r = ro["scores"] - (rl["beta"] * kl_seq if rl["kl_in"] == "reward" else 0.0)
        r = r.view(-1, self.k)
        group = torch.ones_like(r, dtype=torch.bool)
        if rl["advantage"] == "rloo":
            adv = rloo_advantages(r, group)
        else:
            adv = group_advantages(r, group, scale=rl["scale_std"])
        return adv.reshape(-1), None, kl_seq

    # ---- the update ------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> None:
        rl, opt = self.rl, self.optimizers()
        ro = self.rollout(batch)
        adv, ret, kl_seq = self.advantages(ro)
        m = ro["loss_mask"][:, 1:].bool()
        n = ro["ids"].shape[0]
        parts = torch.arange(n).chunk(rl.get("minibatches", 1))
        stats: dict[str, torch.Tensor] = {}
        t0 = time.perf_counter()
        for _ in range(rl["epochs"]):
            for idx in parts:
                lp, _ = per_token_logps(
                    self.model, ro["ids"][idx], ro["att"][idx], ro["loss_mask"][idx]
                )
                loss, st = clipped_policy_loss(lp, ro["old"][idx], adv[idx], m[idx], rl["clip"])
                if rl["kl_in"] == "loss":
                    kl = kl_per_token(lp, ro["ref"][idx], rl["kl_estimator"])
                    loss = loss + rl["beta"] * (kl * m[idx]).sum() / m[idx].sum().clamp(min=1)
                if ret is not None:
                    v = self._values(ro["ids"][idx], ro["att"][idx], ro["loss_mask"][idx])
                    v_loss = clipped_value_loss(
                        v, ro["old_values"][idx], ret[idx], m[idx], rl["value_clip"]
                    )
                    loss = loss + rl["vf_coeff"] * v_loss
                    st["value_loss"] = v_loss.detach()
                opt.zero_grad()
                self.manual_backward(loss)
                if self.grad_clip:
                    self.clip_gradients(
                        opt, gradient_clip_val=self.grad_clip, gradient_clip_algorithm="norm"
                    )
                opt.step()
                stats = {"loss": loss.detach(), **st}
        self.split["update"].append(time.perf_counter() - t0)
        tokens = m.sum().clamp(min=1)
        logs = {
            **stats,
            "rm_reward": ro["scores"].mean(),
            "kl": kl_seq.mean(),
            "entropy": ro["entropy"].sum() / tokens,
            "advantage_mean": adv.mean(),
            "advantage_std": adv.std() if adv.numel() > 1 else torch.zeros(()),
            "length": (m.sum(-1).float() - 1).mean(),
        }
        if self.gold is not None:
            texts = [self.decode(r) for r in ro["flat"]]
            logs["gold_reward"] = torch.tensor(sum(self.gold(ro["texts"], texts)) / n)
        self.log_dict(
            {f"{self.log_prefix}/{k}": v for k, v in logs.items()}, batch_size=len(batch["prompts"])
        )

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.critic is not None:
            params += [p for p in self.critic.model.parameters() if p.requires_grad]
        kwargs = {} if self.lr is None else {"lr": self.lr}
        return build_optimizer(self.trainer, self.optimizer_factory, params, **kwargs)

    def on_fit_end(self) -> None:
        self.rm.requires_grad_(True)


def rollout_collate(pad_id: int) -> Callable[[list[dict]], dict]:
    """Prompts `{"prompt", "prompt_ids"}` -> a left-padded batch that keeps both."""

    def collate(items: list[dict]) -> dict:
        ids, att = pad_2d([it["prompt_ids"] for it in items], pad_id, left=True)
        return {
            "input_ids": ids,
            "attention_mask": att,
            "prompts": [it["prompt"] for it in items],
            "prompt_ids": [it["prompt_ids"] for it in items],
        }

    return collate
