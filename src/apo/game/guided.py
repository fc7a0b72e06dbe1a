"""RM-guided look-ahead decoding in every evaluation (`game.eval_lookahead.beams` > 0; DeAL):
one guided response per test prompt, searched with the round's policy and RM
(`apo.decoding.lookahead_search`: `beams` partial responses, each extended `expand` times by
`chunk` sampled tokens, kept by the RM's score), judged beside the plain policy's samples and
the RM's best-of-N pick (`policy/best_of_n_*`).

The search runs the models directly on plain (gathered) copies of the players, in no-grad mode
and apart from the game's random stream: turning it on changes no other number of the game.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from apo.checkpoint import isolated_rng
from apo.distributed import plain_copy
from apo.game.players import reward_module
from apo.metrics import mean
from apo.steps.lookahead import lookahead_samples

if TYPE_CHECKING:
    from apo.game.loop import GameLoop


def enabled(game: GameLoop) -> bool:
    return int(game.cfg.game.eval_lookahead.beams) > 0


def evaluate(game: GameLoop, r: int) -> dict[str, float]:
    """The judge's mean score of the guided responses to the test prompts, the RM's (the search's
    own objective: how far it climbs the RM against how far the judge follows) and their length."""
    if not enabled(game):
        return {}
    players, dm, keys = game.players, game.dm, game.judge.keys
    seed = int(game.cfg.seed) * 10007 + 7000 + r
    # gathered copies (a collective when the players are sharded: every rank calls it)
    policy = plain_copy(players.policy, players.skeleton)
    rm_model = plain_copy(players.rm, players.rm_skeleton)
    rm = reward_module(rm_model, players.pooling, players.rm_tokenizer.eos_token_id)
    prompts = dm.data.test_prompts
    # the predictions too: a DataLoader's iterator draws its base seed from the global stream
    with isolated_rng(seed):
        texts = lookahead_samples(
            policy,
            players.tokenizer,
            dm,
            rm,
            dm,
            prompts,
            game.plan.eval_sampling,
            game.cfg.game.eval_lookahead,
            1,
            seed,
        )
        records: list[dict[str, Any]] = [
            {"prompt": p, "texts": t, "responses": [dm.enc.response(x)[:-1] for x in t]}
            for p, t in zip(prompts, texts)
        ]
        judged = [s for row in game.judge.score(records) for s in row]
        loader = dm.listwise_loader(dm.sample_items(records, "rm"), "score")
        scored = game.trainers.predict("rm", players.rm_module(), loader)
    return {
        keys.lookahead: mean(judged),
        "policy/lookahead_rm_reward": mean([s for o in scored for s in o["rewards"]]),
        "policy/lookahead_length": mean([len(rec["responses"][0]) for rec in records]),
    }
