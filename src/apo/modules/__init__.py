"""The two players as LightningModules, and the backbones they are built on."""

from apo.modules.policy import PolicyModule
from apo.modules.reward import RewardModule

__all__ = ["PolicyModule", "RewardModule"]
