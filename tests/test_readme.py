"""The README's tables of knobs and defaults say what the composed config says."""

from __future__ import annotations

import re

import pytest
import yaml
from omegaconf import OmegaConf

from tests.conftest import ROOT, compose_cfg

README = (ROOT / "README.md").read_text()


def _table(header: str) -> list[list[str]]:
    """The rows (cells) of the Markdown table whose header row starts with `header`."""
    lines = README.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def _value(text: str):
    """A default as the README writes it: `null` / (none) are None, YAML scalars otherwise."""
    text = text.strip().strip("`")
    if text in ("(none)", "none", "null"):
        return None
    return yaml.safe_load(text)


@pytest.fixture(scope="module")
def composed(tmp_path_factory):
    return compose_cfg([], run_dir=tmp_path_factory.mktemp("r"), hydra_config=True)


def _knob_rows():
    for cells in _table("| override | default | meaning |"):
        names = re.findall(r"`([^`]+)`", cells[0].split("(")[0])
        yield names, cells[1]


KNOBS = list(_knob_rows())


def test_the_knob_table_is_there():
    assert len(KNOBS) >= 20
    assert any("game.apo_coeff" in names for names, _ in KNOBS)


@pytest.mark.parametrize(("names", "default"), KNOBS, ids=[",".join(n) for n, _ in KNOBS])
def test_readme_default_is_the_config_default(composed, names, default):
    choices = composed.hydra.runtime.choices
    for name in names:
        if name in choices:  # a config group: its default option
            got = choices[name]
        else:
            assert OmegaConf.select(composed, name, default="<missing>") != "<missing>", name
            got = OmegaConf.select(composed, name)
        want = _value(default)
        if isinstance(want, float) or isinstance(got, float):
            assert got == pytest.approx(want), name
        else:
            assert got == want, name


def _objective_rows():
    for cells in _table("| `objective=` | paper | knobs (defaults) |"):
        name = cells[0].strip("`")
        for knob, default in re.findall(r"`(\w+)` \(([^)]*)\)", cells[2]):
            first = re.findall(r"`([^`]+)`", default)
            yield name, knob, first[0] if first else default


OBJECTIVE_KNOBS = list(_objective_rows())


@pytest.mark.parametrize(("objective", "knob", "default"), OBJECTIVE_KNOBS)
def test_readme_objective_defaults(objective, knob, default):
    loss = compose_cfg([f"objective={objective}"]).objective.loss
    assert knob in loss, f"{objective}: README names {knob}, the config has {list(loss)}"
    want = _value(default)
    assert loss[knob] == (pytest.approx(want) if isinstance(want, float) else want)
