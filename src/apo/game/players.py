"""The players from the config: the policy, its frozen reference and the RM (models and
tokenizers), the DataModule they share, and the one place that wraps them in LightningModules."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn
from transformers import PreTrainedTokenizerBase

from apo.checkpoint import isolated_rng
from apo.data.datamodule import GameDataModule
from apo.data.game_data import GameData
from apo.distributed import (
    LocalShards,
    full_state_dict,
    partitioned_copy,
    plain_copy,
    sharded_copy,
    sharding,
    skeleton,
    storage_bytes,
)
from apo.gathered import GatheredCopies
from apo.losses.objectives import PolicyObjective
from apo.losses.rm_objective import RMObjective
from apo.modules.backbones import build_player, check_model_positions
from apo.modules.ensemble import RMEnsemble, member_seeds, members
from apo.modules.policy import PolicyModule
from apo.modules.reward import RewardModule
from apo.modules.sampling import SamplingSpec

#: judge RM j (`game.judges`, in name order) is built from `seed + JUDGE_SEED_OFFSET + j`
JUDGE_SEED_OFFSET = 101

Optimizer = Callable[..., torch.optim.Optimizer]


def reward_module(
    model: nn.Module,
    pooling: str,
    eos_token_id: int | None,
    objective: RMObjective | None = None,
    optimizer: Optimizer | None = None,
    log_prefix: str | None = None,
    bootstrap: float = 0.0,
    bag_seed: int = 0,
) -> RewardModule:
    """A RewardModule around `model`: for a fit (`objective`, `optimizer`, `log_prefix`) or for
    scoring (none of them). The game, its test RM and the step commands all build it here."""
    return RewardModule(
        model, pooling, eos_token_id, objective, optimizer, log_prefix, bootstrap, bag_seed
    )


@dataclass
class Players:
    """The game's models and tokenizers; their weights are what the fits change."""

    policy: nn.Module
    rm: nn.Module
    tokenizer: PreTrainedTokenizerBase
    rm_tokenizer: PreTrainedTokenizerBase
    pooling: str
    policy_optimizer: Optimizer
    rm_optimizer: Optimizer
    #: the frozen reference `pi_ref`, made by `snapshot_reference` after the warm start
    ref: nn.Module | None = None
    #: the warm-start RM, kept to start every round's RM fit from (`game.rm_init: base`)
    rm_base: nn.Module | LocalShards | None = None
    #: an RM ensemble's bags of human pairs (`rm.ensemble.bootstrap`) and the seed they are
    #: drawn from
    rm_bootstrap: float = 0.0
    rm_bag_seed: int = 0
    #: the cost model of a game with a cost judge (`game.cost`), else None
    cost: nn.Module | None = None
    #: the game's other RMs (`game.judges`), by name, else None
    judge_rms: nn.ModuleDict | None = None
    #: under a sharded engine, sample from gathered plain copies (`policy.generation.weights:
    #: gathered`) instead of running the sharded policy every token
    gather_generation: bool = True
    #: the players' architectures without weights, to copy the reference (and the base RM) from
    #: once the players are sharded (taken before any fit; not submodules, so no engine wraps
    #: them)
    skeleton: nn.Module | None = field(default=None, repr=False)
    rm_skeleton: nn.Module | None = field(default=None, repr=False)
    #: the plain copies sampling predictions take of the sharded policy (and reference),
    #: gathered once per version of their weights and freed at every fit (`apo.gathered`)
    gathered: GatheredCopies | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.skeleton is None:
            self.skeleton = skeleton(self.policy)
        if self.gathered is None:
            self.gathered = GatheredCopies(self.skeleton)
        if self.rm_skeleton is None:
            self.rm_skeleton = skeleton(self.rm)

    def snapshot_reference(self) -> None:
        """Freeze a copy of the current policy as `pi_ref`: under FSDP and ZeRO-3, sharded or
        partitioned as the policy is (each rank copies its own part); else a plain copy."""
        old, kind = self.ref, sharding(self.policy)
        if kind == "fsdp":
            self.ref = sharded_copy(self.policy, self.skeleton).eval()
        elif kind == "zero3":
            self.ref = partitioned_copy(self.policy, self.skeleton).eval()
        else:
            self.ref = plain_copy(self.policy, self.skeleton).eval()
        if old is not None and sharding(old) is None:
            # a replaced reference (`game.reference: round`): finished Trainers, alive until the
            # cyclic collector runs, still refer to it: free its weights now
            old.to("meta")
        self.ref.requires_grad_(False)

    def snapshot_rm_base(self) -> None:
        """Keep the current (warm-start) RM to restart from: a plain copy, or when the RM is
        sharded, each rank's own shards (no rank keeps a full copy)."""
        sharded = sharding(self.rm) is not None
        self.rm_base = LocalShards(self.rm) if sharded else plain_copy(self.rm, self.rm_skeleton)

    def restart_rm(self) -> None:
        """The RM becomes the warm-start RM again: the base RM's weights (or, sharded, its
        shards) written back in place into the RM, so no second copy is made beside it."""
        if self.rm_base is None:
            raise RuntimeError("restart_rm before the warm start kept the base RM")
        if isinstance(self.rm_base, LocalShards):
            self.rm_base.restore(self.rm)
        else:
            self.rm.load_state_dict(self.rm_base.state_dict())

    def full_state(self, name: str) -> dict[str, torch.Tensor]:
        """The full weights of `models()[name]` on rank 0 (a collective when sharded)."""
        model = self.models()[name]
        if isinstance(model, LocalShards):
            return model.full_state_dict(self.rm)
        return full_state_dict(model)

    def storage(self) -> dict[str, int]:
        """Bytes of parameters this rank holds per player (its shards when sharded)."""
        out = {}
        for name, model in self.models().items():
            if isinstance(model, LocalShards):
                out[name] = sum(t.numel() * t.element_size() for t in model.tensors)
            elif model is not None:
                out[name] = storage_bytes(model)
        return out

    def models(self) -> dict[str, nn.Module | LocalShards | None]:
        """The weights a game state saves, by name."""
        return {
            "policy": self.policy,
            "ref": self.ref,
            "rm": self.rm,
            "rm_base": self.rm_base,
            "cost": self.cost,
            "judge_rms": self.judge_rms,
        }

    def rm_module(
        self, objective: RMObjective | None = None, log_prefix: str | None = None
    ) -> RewardModule:
        """The RM for a fit with `objective` (logging under `log_prefix`), or for scoring."""
        optimizer = self.rm_optimizer if objective is not None else None
        return reward_module(
            self.rm,
            self.pooling,
            self.rm_tokenizer.eos_token_id,
            objective,
            optimizer,
            log_prefix,
            self.rm_bootstrap,
            self.rm_bag_seed,
        )

    def cost_module(self, objective: Any = None, log_prefix: str | None = None) -> RewardModule:
        """The cost model for its fit (`objective`, a `CostObjective`) or for scoring."""
        if self.cost is None:
            raise RuntimeError("cost_module: this game has no cost model (game.cost)")
        optimizer = self.rm_optimizer if objective is not None else None
        eos = self.rm_tokenizer.eos_token_id
        return reward_module(self.cost, self.pooling, eos, objective, optimizer, log_prefix)

    def judge_module(
        self, name: str, objective: Any = None, log_prefix: str | None = None
    ) -> RewardModule:
        """Judge RM `name` (`game.judges`) for its fit (`objective`) or for scoring."""
        if self.judge_rms is None or name not in self.judge_rms:
            raise RuntimeError(f"judge_module: this game has no judge RM {name!r} (game.judges)")
        optimizer = self.rm_optimizer if objective is not None else None
        eos = self.rm_tokenizer.eos_token_id
        return reward_module(
            self.judge_rms[name], self.pooling, eos, objective, optimizer, log_prefix
        )

    def policy_module(
        self,
        objective: PolicyObjective | None = None,
        lr: float | None = None,
        log_prefix: str | None = None,
        sampling: SamplingSpec | None = None,
        seed: int | None = None,
    ) -> PolicyModule:
        """The policy for a fit (`objective`, `lr`, `log_prefix`) or a prediction (`sampling`
        when it generates, and the `seed` every prediction draws from)."""
        optimizer = self.policy_optimizer if objective is not None else None
        gather = self.gathered if self.gather_generation else None
        return PolicyModule(
            self.policy, self.ref, objective, optimizer, lr, log_prefix, sampling, seed, gather
        )


def _prompt_format(player_cfg: DictConfig) -> dict[str, Any]:
    return {k: player_cfg.get(k) for k in ("prompt_template", "separator", "chat_template")}


def cost_judge(cfg: DictConfig) -> bool:
    """Whether the game has a cost judge (`game.cost.limit` or `.weight`)."""
    return cfg.game.cost.limit is not None or cfg.game.cost.weight is not None


def build_players(cfg: DictConfig, task_tokenizer: PreTrainedTokenizerBase) -> Players:
    """Each player: a tiny model from `backbone` with the task's tokenizer, or a checkpoint
    directory (`model_name_or_path`) with its own tokenizer. The policy is built first (from
    `seed`), then the RM (from `seed + 1`; the members of an ensemble of `rm.ensemble.size`
    from `apo.modules.ensemble.member_seeds`, the first being the single RM)."""
    policy, tokenizer = build_player("policy", cfg.policy, cfg.seed, task_tokenizer)
    same = cfg.rm.get("model_name_or_path") == cfg.policy.get("model_name_or_path")
    ensemble = cfg.rm.ensemble
    built = [
        build_player(
            "rm", cfg.rm, seed, tokenizer if same else task_tokenizer, own_tokenizer=not same
        )
        for seed in member_seeds(cfg.seed + 1, int(ensemble.size))
    ]
    rm_tokenizer = built[0][1]
    rm = built[0][0] if len(built) == 1 else RMEnsemble([m for m, _ in built])
    rm_source = tokenizer if same else task_tokenizer

    def own_rm(seed: int) -> nn.Module:
        # the RM's architecture from its own seed, and the game's random stream left as it was:
        # the warm start (and its cache) is the same with and without these extra RMs
        with isolated_rng(seed):
            return build_player("rm", cfg.rm, seed, rm_source, own_tokenizer=not same)[0]

    cost = own_rm(int(cfg.seed) + 2) if cost_judge(cfg) else None
    names = sorted(cfg.game.get("judges") or {})  # judge j from seed + JUDGE_SEED_OFFSET + j
    judge_rms = (
        nn.ModuleDict(
            {n: own_rm(int(cfg.seed) + JUDGE_SEED_OFFSET + j) for j, n in enumerate(names)}
        )
        if names
        else None
    )
    return Players(
        policy=policy,
        rm=rm,
        tokenizer=tokenizer,
        rm_tokenizer=rm_tokenizer,
        pooling=str(cfg.rm.pooling),
        policy_optimizer=instantiate(cfg.policy.optimizer),
        rm_optimizer=instantiate(cfg.rm.optimizer),
        rm_bootstrap=float(ensemble.bootstrap),
        cost=cost,
        judge_rms=judge_rms,
        rm_bag_seed=int(cfg.seed),
        gather_generation=cfg.policy.generation.weights == "gathered",
    )


def check_positions(cfg: DictConfig, players: Players) -> None:
    """Each checkpoint player against the longest sequence the game feeds it (once the token
    budgets are known; a tiny player's positions are checked with the config)."""
    d = cfg.data
    needed = {
        "policy": max(d.max_len, d.max_prompt_len + int(cfg.policy.generation.max_new_tokens)),
        "rm": d.max_len,
    }
    for kind, model in (("policy", players.policy), ("rm", members(players.rm)[0])):
        path = cfg[kind].get("model_name_or_path")
        if path is not None:
            check_model_positions(model, int(needed[kind]), f"{kind}.model_name_or_path", path)


def build_datamodule(cfg: DictConfig, data: GameData, players: Players) -> GameDataModule:
    """The DataModule both players share, with the batch sizes and token budgets of `cfg`."""
    batch_size = {
        "sft": cfg.policy.sft_batch_size,
        "policy": cfg.policy.batch_size,
        "rm": cfg.rm.batch_size,
        "apo": cfg.rm.apo_batch_size,
        "predict": cfg.data.predict_batch_size,
        "predict_tokens": cfg.data.get("predict_batch_tokens"),
    }
    return GameDataModule(
        data,
        players.tokenizer,
        batch_size,
        cfg.data.max_prompt_len,
        cfg.data.max_len,
        seed=cfg.seed,
        rm_tokenizer=players.rm_tokenizer,
        prompt_format={p: _prompt_format(cfg[p]) for p in ("policy", "rm")},
    )
