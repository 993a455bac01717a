"""Shared helpers: run the real CLI in a subprocess on a short digits schedule."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# A short digits schedule: a few seconds per run, still real training on real data.
FAST = [
    "schedule.pretrain.epochs=3",
    "schedule.finetune.epochs=1",
    "progress=false",
    "seeds=[0]",
    "labels=[500]",
    "threads=1",
]


def run_cli(
    *args: str, module: str = "harness.run", timeout: float = 300
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def tree(root: Path) -> dict[str, float]:
    """Every file under ``root`` with its modification time (to prove nothing changed)."""
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def results(tmp_path: Path) -> Path:
    return tmp_path / "results"


FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
needs_fashion_mnist = pytest.mark.skipif(
    not (FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(),
    reason="Debian's dataset-fashion-mnist is not installed (.ci/run installs it)",
)
