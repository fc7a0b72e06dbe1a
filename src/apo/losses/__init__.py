"""Pure loss functions for both players, picked by name from dict registries."""

from apo.losses.objectives import POLICY_OBJECTIVES, PolicyObjective, policy_objective
from apo.losses.rm import RM_LOSSES
from apo.losses.rm_objective import RMObjective

__all__ = ["POLICY_OBJECTIVES", "PolicyObjective", "RM_LOSSES", "RMObjective", "policy_objective"]
