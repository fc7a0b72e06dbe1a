"""Pure loss functions for both players, picked by name from dict registries."""

from apo.losses.policy import POLICY_OBJECTIVES, PolicyObjective
from apo.losses.rm import RM_LOSSES

__all__ = ["POLICY_OBJECTIVES", "PolicyObjective", "RM_LOSSES"]
