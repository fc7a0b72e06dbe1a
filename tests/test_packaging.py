"""The package as users install it: a wheel built from this checkout carries the configs and
plays a game in a fresh venv outside the checkout; the source tree keeps one config tree."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

import pytest

from apo.train import CONFIG_DIR
from tests.conftest import ROOT

tomllib = pytest.importorskip("tomllib")


def test_every_package_is_in_pyproject():
    """`packages` is a list (see the comment in pyproject.toml): a package missing there would
    be missing from the wheel, while the editable install still finds it."""
    listed = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    src = ROOT / "src"
    found = {
        ".".join(p.parent.relative_to(src).parts)
        for p in (src / "apo").rglob("__init__.py")
        if "__pycache__" not in p.parts
    }
    assert set(listed) == found | {"apo.configs"}


def test_the_package_configs_are_the_top_level_tree():
    """The editable install maps `apo.configs` onto `configs/` itself: one config tree."""
    assert Path(CONFIG_DIR).resolve() == (ROOT / "configs").resolve()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the checkout's sources (a build in the checkout would reuse
    whatever an earlier build left in build/)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("src", "configs"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-q",
            "-w",
            str(tmp / "dist"),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (whl,) = (tmp / "dist").glob("apo_game-*.whl")
    return whl


@pytest.mark.slow
def test_the_wheel_holds_every_config_file(wheel: Path):
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = ROOT / "configs"
    for f in configs.rglob("*.yaml"):
        assert f"apo/configs/{f.relative_to(configs).as_posix()}" in names
    assert "apo/configs/__init__.py" in names
    assert not any(n.startswith(("tests/", "configs/", "examples/")) for n in names)


@pytest.mark.slow
def test_the_wheel_plays_a_game_outside_the_checkout(wheel: Path, tmp_path: Path):
    """A fresh venv with the wheel and nothing of the checkout plays `experiment=tiny`.

    Installing torch & co. again would take minutes, so the fresh venv reads the project venv's
    site-packages from a plain path line of a .pth file: its packages are importable there, but
    its own .pth files (the editable install's `__editable__*.pth`) are not processed, so `apo`
    comes from the wheel only."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps"]
        + ["--no-index", str(wheel)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(f"wheel installed in {time.perf_counter() - t0:.1f} s")
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(purelib, "project_venv_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONWARNINGS"] = "ignore"
    where = subprocess.run(
        [
            str(python),
            "-c",
            "import apo, apo.configs, sys; print(apo.__file__); print(apo.configs.__file__); "
            "print(sorted(m for m in sys.modules if 'editable' in m))",
        ],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    for path in where[:2]:
        assert Path(path).is_relative_to(venv) and not Path(path).is_relative_to(ROOT), where
    assert where[2] == "[]", "the editable install's finder was loaded"

    for exe, first in (("apo-train", "apo-train: play"), ("apo-generate", "apo-generate: ")):
        helped = subprocess.run(
            [str(venv / "bin" / exe), "--help"],
            cwd=elsewhere,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert helped.returncode == 0, helped.stderr[-3000:]
        assert helped.stdout.startswith(first), helped.stdout[:500]

    run = tmp_path / "run"
    t0 = time.perf_counter()
    proc = subprocess.run(
        [str(venv / "bin" / "apo-train"), "experiment=tiny", f"hydra.run.dir={run}"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    print(f"apo-train experiment=tiny from the wheel: {time.perf_counter() - t0:.1f} s")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == [0, 1, 2]
    assert (run / ".hydra" / "config.yaml").is_file()
    assert not list(elsewhere.iterdir()), "the run wrote into the current directory"
