"""A non-editable install works away from the repo: the suites ship as package data."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "README.md", "harness", "methods", "suites")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """``pip install --target`` of a copy of the repo's sources (a copy: building
    in-tree would leave build/ in the repo). Offline: no index, no dependencies,
    and the build uses this environment's setuptools."""
    root = tmp_path_factory.mktemp("packaging")
    source = root / "source"
    source.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
            shutil.copytree(REPO / name, source / name, ignore=ignore)
        else:
            shutil.copy2(REPO / name, source / name)
    target = root / "site"
    flags = ["--no-deps", "--no-build-isolation", "--no-index", "--quiet", "--no-compile"]
    subprocess.run(
        [sys.executable, "-m", "pip", "install", *flags, "--target", str(target), str(source)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return target


def _python(target: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """This environment's python in ``cwd`` with ``target`` on the path, then this
    environment's site-packages (torch and friends). -P: not the cwd; -S: no .pth files,
    so not the finder of an editable install of the repo either."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    paths = sysconfig.get_paths()
    path = dict.fromkeys([str(target), paths["purelib"], paths["platlib"]])
    env["PYTHONPATH"] = os.pathsep.join(path)
    return subprocess.run(
        [sys.executable, "-P", "-S", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_installed_package_finds_its_suites_away_from_the_repo(installed, tmp_path):
    assert sorted(p.name for p in (installed / "suites").glob("*.yaml")) == sorted(
        p.name for p in (REPO / "suites").glob("*.yaml")
    )
    check = f"""
import sys
from pathlib import Path
import harness, harness.config as config
target, repo = Path({str(installed)!r}), Path({str(REPO)!r})
assert str(repo) not in sys.path, sys.path
assert Path(config.__file__).is_relative_to(target), config.__file__
# harness is a namespace package (no __init__.py): no part of it may come from the repo
assert all(Path(part).is_relative_to(target) for part in harness.__path__), harness.__path__
assert config.SUITES_DIR.is_relative_to(target), config.SUITES_DIR
assert "digits" in config.available_suites(), config.available_suites()
cfg = config.load_config(["suite=digits"])
assert cfg.suite == "digits" and cfg.data.name == "digits", cfg
print("ok", config.SUITES_DIR)
"""
    done = _python(installed, tmp_path, "-c", check)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"ok {installed / 'suites'}")


def test_python_m_harness_run_from_another_folder_plans_the_digits_suite(installed, tmp_path):
    results = tmp_path / "results"
    done = _python(
        installed, tmp_path, "-m", "harness.run", "suite=digits", "dry_run=true",
        f"results={results}",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "digits" in done.stdout + done.stderr
    assert not results.exists()  # a dry run writes nothing
