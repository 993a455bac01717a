"""``benchmarks/gpu_check.sh``: every part of it, small, on the CPU (``--cpu --tiny``).

The GPU numbers need a GPU; what runs here is the same code on a 3-macro-layer VGG at
28 px: the generated JPEGs and their .beton, the trainer's step timed on synthetic and
FFCV-fed batches with compile off and on (``aot_eager``, as in ``test_compile.py``),
gloo's all_reduce and the end-to-end run under torchrun, and the table.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from harness.config import ffcv_installed
from tests.conftest import REPO

SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
CHECK = REPO / "benchmarks" / "gpu_check.py"


def test_the_script_parses():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0


def test_every_part_runs_small_on_the_cpu_into_one_table(tmp_path):
    out = tmp_path / "out"
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "GPU_CHECK_FLAGS": "--cpu --tiny",
        "TORCH_COMPILE_OVERRIDE_BACKENDS": ">=0:aot_eager",
    }
    done = subprocess.run(
        ["bash", str(SCRIPT), str(out)],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    table = (out / "gpu_check.md").read_text()
    assert done.stdout == table
    rows = [line.split(" | ") for line in table.splitlines() if line.startswith("| ")][2:]
    steps = {(r[1], r[2], r[3]) for r in rows if r[0] == "| train step"}
    sources = ["synthetic", "FFCV .beton"] if ffcv_installed() else ["synthetic"]
    assert steps == {
        (m, c, s) for m in ("baseline", "swwae_all") for c in ("off", "on") for s in sources
    }
    for row in rows:
        if row[0] == "| train step":
            assert float(row[4].replace(",", "")) > 0 and float(row[5]) > 0  # images/s, TFLOP/s
    assert "world of 1, sum right" in table
    assert "exit 0; 2 of 2 runs done; report written" in table
    assert (out / "results" / "imagenet_full" / "report" / "table.md").is_file()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["bogus", "x"], "invalid choice: 'bogus'"),
        (["--cpu", "table", "nowhere"], "nowhere/rows.jsonl does not exist"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, argv, message):
    done = subprocess.run(
        [sys.executable, str(CHECK), *argv], cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and message in done.stderr


def test_the_peak_is_known_only_for_the_cards_named():
    sys.path.insert(0, str(REPO / "benchmarks"))
    from gpu_check import bf16_peak

    assert bf16_peak("NVIDIA H100 80GB HBM3") == bf16_peak("NVIDIA H200") == 989.0
    assert bf16_peak("NVIDIA H100 PCIe") is None and bf16_peak("AMD EPYC") is None
