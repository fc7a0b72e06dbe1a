"""APO game framework: a reward model and a policy play the Adversarial Preference Optimization game."""

__version__ = "0.1.0"
