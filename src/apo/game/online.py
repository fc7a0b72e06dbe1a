"""The online policy fit of a round (RLOO, GRPO, PPO): its LightningModule and prompt loader
from the game's parts. The phase `policy_fit` plays it when the round's objective is online."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from torch.utils.data import DataLoader

from apo.data.collate import ListDataset, ListwiseCollator
from apo.game import judge_rms
from apo.game.plan import RoundPlan
from apo.game.players import reward_module
from apo.modules.ensemble import members
from apo.modules.online import OnlinePolicyModule, rollout_collate

if TYPE_CHECKING:
    from apo.game.loop import GameLoop


def online_fit(game: GameLoop, r: int, plan: RoundPlan) -> tuple[OnlinePolicyModule, DataLoader]:
    """The module and the loader of round `r`'s online policy fit."""
    players, dm, cfg = game.players, game.dm, game.cfg
    rl = plan.policy.rl()
    critic = None
    if rl["advantage"] == "gae":
        # PPO's value model starts as a copy of the round's RM (Stiennon et al. 2020) and is
        # trained with the policy; it lives for this fit only
        # (an ensemble's first member)
        critic = reward_module(
            copy.deepcopy(members(players.rm)[0]),
            players.pooling,
            players.rm_tokenizer.eos_token_id,
        )
    collate = ListwiseCollator(players.rm_tokenizer.pad_token_id, "score")

    def rm_batch(prompts: list[str], responses: list[list[int]]) -> dict:
        records = [{"prompt": p, "responses": [x]} for p, x in zip(prompts, responses)]
        return collate(dm.sample_items(records, "rm"))

    gold = None
    if game.judge.name == "oracle":

        def gold(prompts: list[str], texts: list[str]) -> list[float]:
            recs = [{"prompt": p, "texts": [t]} for p, t in zip(prompts, texts)]
            return [s for row in game.judge.score(recs) for s in row]

    grad_clip = cfg.trainer.get("gradient_clip_val")
    module = OnlinePolicyModule(
        model=players.policy,
        ref_model=players.ref,
        rm=players.rm_module(),
        critic=critic,
        rl=rl,
        optimizer=players.policy_optimizer,
        lr=plan.lr,
        sampling=plan.sampling,
        num_samples=game.plan.samples_per_prompt,
        rm_batch=rm_batch,
        gold=gold,
        decode=dm.enc.decode,
        eos_token_id=players.tokenizer.eos_token_id,
        pad_token_id=players.tokenizer.pad_token_id,
        seed=int(cfg.seed) * 10007 + 3000 + r,
        grad_clip=None if grad_clip is None else float(grad_clip),
        log_prefix="policy/train",
        uncertainty_penalty=float(cfg.game.uncertainty_penalty),
        cost=players.cost_module() if players.cost is not None else None,
        lagrange=float(game.state.lagrange or 0.0),
        judges=[
            (players.judge_module(s.name), s.weight, norm["mean"], norm["std"])
            for s in judge_rms.specs(cfg)
            for norm in [game.state.judge_rms[s.name]]
        ],
    )
    items: list[dict[str, Any]] = [
        {"prompt": p, "prompt_ids": dm.prompt_ids(p)} for p in dm.data.policy_prompts
    ]
    loader = DataLoader(
        ListDataset(items),
        batch_size=int(cfg.policy.batch_size),
        shuffle=True,
        collate_fn=rollout_collate(players.tokenizer.pad_token_id),
    )
    return module, loader
