"""Where and with what one attempt of a run ran (``config.yaml``'s ``attempts``), and
how long all its attempts took (``Clock``)."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import socket
import subprocess
import time
from pathlib import Path

import torch

from harness.engine import distributed


def provenance(device: torch.device, place: distributed.World, flushing: bool) -> dict:
    """Where and with what one attempt ran (``config.yaml``'s ``attempts``);
    ``flushing``: whether the CPU flushed subnormal floats (``flush_denormal``)."""
    cuda = device.type == "cuda"
    return {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "harness": _harness_version(),
        "git_commit": _git_commit(),
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "device": torch.cuda.get_device_name(device) if cuda else _cpu_model(),
        "threads": torch.get_num_threads(),
        "flush_denormal": flushing,
        "world_size": place.size,
        "slurm_job": os.environ.get("SLURM_JOB_ID") or None,
    }


def _cpu_model() -> str:
    """The CPU's model name (``platform.processor()`` is empty on Linux): step times,
    and what subnormal floats cost, differ by CPU, so a run's time is read against it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def _harness_version() -> str:
    try:
        return importlib.metadata.version("ssl-harness")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _git_commit() -> str | None:
    """The commit of the checkout the harness runs from (None outside one), with
    ``-dirty`` where tracked files differ from it."""
    source = Path(__file__).resolve().parents[2]  # harness/engine/provenance.py -> repo
    try:
        commit = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "--show-toplevel", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        top, _, head = commit.stdout.strip().partition("\n")
        # an installed copy may lie inside some other checkout (a venv in a repo)
        if commit.returncode != 0 or Path(top).resolve() != source:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("-dirty" if dirty.stdout.strip() else "")


class Clock:
    """Seconds a run has trained and evaluated, over all its attempts: the checkpoint
    carries the total so far; a killed attempt loses only its unfinished epoch."""

    def __init__(self, before: float = 0.0):
        self.before, self.start = before, time.perf_counter()

    def total(self) -> float:
        return self.before + time.perf_counter() - self.start
