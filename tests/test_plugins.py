"""A method, a model and a dataset from the user's own package (issue 34 §3): found
through the entry-point group ``ssl_harness.plugins`` of an installed package, or
named by ``plugins=[module]`` for code not installed; run through the CLI under every
launcher, listed by ``methods=all``; a plugin that fails to import is one line, exit 2.

The package is built and installed by pip (``--target``, a folder on ``PYTHONPATH``
for the commands here) rather than into the test venv itself: installed there, its
method would join ``methods=all`` in the other tests running beside these."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import run_cli

PLUGIN = '''"""A user's plugin: label smoothing on the labeled images, a two-layer CNN, and
digits mirrored left to right."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from harness.config import check_fraction, register_settings
from harness.data import DATASETS, ImageSet, in_memory_dataset, register_dataset
from harness.method import Batch, Method, Stage, register_method
from harness.models import Encoder, register_model


@register_settings("smoothed")
@dataclass
class SmoothedSettings:
    epsilon: float = 0.1

    def __post_init__(self) -> None:
        check_fraction("smoothed.epsilon", self.epsilon, closed_low=True)


@register_method("smoothed")
class Smoothed(Method):
    config_sections = ("smoothed",)

    def stages(self) -> list[Stage]:
        return [Stage("pretrain"), Stage("finetune")]

    def loss(self, model: nn.Module, stage: Stage, batch: Batch) -> dict:
        epsilon = float(self.cfg.smoothed.epsilon)
        return {"cls": F.cross_entropy(model(batch.x), batch.y, label_smoothing=epsilon)}


class TinyCNN(Encoder):
    def __init__(self, channels: int, classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(nn.Linear(64, classes))
        self.num_classes = classes

    def classify(self, pooled_top: torch.Tensor) -> torch.Tensor:
        return self.classifier(pooled_top)


@register_model("tiny_cnn")
def tiny_cnn(in_channels: int, num_classes: int, input_size: int, dropout: float) -> TinyCNN:
    return TinyCNN(in_channels, num_classes)


@register_dataset("digits_mirrored")
def digits_mirrored(args) -> object:
    digits = DATASETS["digits"](args)
    flip = [ImageSet(part.targets, part.images.flip(-1)) for part in (digits.train, digits.val)]
    return in_memory_dataset("digits_mirrored", *flip, digits.classes)
'''

PYPROJECT = """[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "my-ssl-plugin"
version = "0.1"

[project.entry-points."ssl_harness.plugins"]
smoothing = "my_ssl_plugin.smoothing"

[tool.setuptools]
packages = ["my_ssl_plugin"]
"""

SHORT = [
    "methods=[baseline,smoothed]",
    "model.name=tiny_cnn",
    "data.name=digits_mirrored",
    "schedule.pretrain.epochs=2",
    "schedule.pretrain.steps=3",
    "schedule.finetune.steps=2",
    "labels=[100]",
    "seeds=[0]",
    "threads=1",
    "progress=false",
    "report.plots=false",
]


def write_package(root: Path, module: str = PLUGIN) -> Path:
    (root / "my_ssl_plugin").mkdir(parents=True)
    (root / "my_ssl_plugin" / "__init__.py").write_text("")
    (root / "my_ssl_plugin" / "smoothing.py").write_text(module)
    (root / "pyproject.toml").write_text(PYPROJECT)
    return root


def pip_install(package: Path, target: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index"]
        + ["--no-build-isolation", "--target", str(target), str(package)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr


def with_path(folder: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(folder)}


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The plugin package built and installed by pip into a folder of its own."""
    root = tmp_path_factory.mktemp("plugin")
    pip_install(write_package(root / "src"), root / "site")
    assert list((root / "site").glob("my_ssl_plugin-0.1.dist-info/entry_points.txt"))
    return root / "site"


def records(results: Path, suite: str = "digits") -> dict[str, dict]:
    found = {}
    for config in results.glob(f"{suite}/*/config.yaml"):
        method = yaml.safe_load(config.read_text())["run"]["method"]
        found[method] = json.loads((config.parent / "metrics.json").read_text())
    return found


@pytest.mark.parametrize("launcher", ["inprocess", "local_parallel"])
def test_an_installed_packages_method_model_and_dataset_run_through_the_cli(
    installed, tmp_path, launcher
):
    results = tmp_path / "results"
    done = run_cli(*SHORT, f"launcher={launcher}", f"results={results}", env=with_path(installed))
    assert done.returncode == 0, done.stderr
    found = records(results)
    assert sorted(found) == ["baseline", "smoothed"]
    assert all(0 <= metrics["top1_val"] <= 100 for metrics in found.values())
    assert "| smoothed |" in done.stdout


def test_methods_all_lists_the_plugins_method_and_its_settings_are_keys(installed, tmp_path):
    env = with_path(installed)
    shown = run_cli("methods=all", "dry_run=true", f"results={tmp_path}", env=env)
    assert shown.returncode == 0, shown.stderr
    assert "| smoothed " in shown.stdout
    bad = run_cli("smoothed.epsilon=2", f"results={tmp_path}", env=env)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "smoothed.epsilon" in bad.stderr
    assert not any(tmp_path.iterdir())
    # without the package, the same names are unknown: nothing of ours knows them
    plain = run_cli("methods=[smoothed]", f"results={tmp_path}")
    assert plain.returncode == 2 and "unknown method 'smoothed'" in plain.stderr


def test_the_plugins_key_imports_code_that_is_not_installed(tmp_path):
    source = write_package(tmp_path / "src")
    results = tmp_path / "results"
    args = [*SHORT, "plugins=[my_ssl_plugin.smoothing]", f"results={results}"]
    done = run_cli(*args, "launcher=local_parallel", env=with_path(source))
    assert done.returncode == 0, done.stderr
    assert sorted(records(results)) == ["baseline", "smoothed"]
    # the key is how the code is found, not what a run computes: the same run ids
    config = yaml.safe_load(next(results.glob("digits/*/config.yaml")).read_text())
    assert config["config"]["plugins"] == ["my_ssl_plugin.smoothing"]


def test_a_plugin_that_fails_to_import_is_one_line_exit_2(tmp_path):
    """Installed (an entry point whose module raises) or named by the key (a module
    that imports what is not there): one line naming it, exit 2, nothing written."""
    site = tmp_path / "site"
    pip_install(write_package(tmp_path / "src", module="raise RuntimeError('bad plugin')\n"), site)
    results = tmp_path / "results"
    done = run_cli(f"results={results}", env=with_path(site))
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "plugin 'smoothing' (my_ssl_plugin.smoothing, entry point group" in done.stderr
    assert "RuntimeError: bad plugin" in done.stderr and not results.exists()
    (tmp_path / "broken_plugin.py").write_text("import no_such_module\n")
    named = run_cli("plugins=[broken_plugin]", f"results={results}", env=with_path(tmp_path))
    assert named.returncode == 2 and named.stderr.count("\n") == 1
    assert "plugin module 'broken_plugin' (plugins=) failed to import" in named.stderr
    assert "No module named 'no_such_module'" in named.stderr and not results.exists()


def test_the_plugins_method_runs_as_a_slurm_job(installed, slurm_cluster, tmp_path):
    results = tmp_path / "results"
    args = [*SHORT, "launcher=slurm", "wait=true", "slurm.poll_s=0.5", f"results={results}"]
    done = run_cli(*args, env=with_path(installed), timeout=600)
    assert done.returncode == 0, done.stderr
    assert sorted(records(results)) == ["baseline", "smoothed"]
