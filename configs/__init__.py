"""The shipped Hydra configs, installed as the package `apo.configs` (see pyproject.toml) so that
every command finds them as `pkg://apo.configs`, in an editable install and in a wheel."""
