"""A failure is recorded and the plan goes on: non-finite losses, dependents, launchers."""

from __future__ import annotations

import json

import pytest

from tests.conftest import FAST, run_cli

# the reconstruction terms overflow at the first decoder step: swwae_first must fail
# there, while the baselines it starts from finish
OVERFLOW = [
    "methods=[baseline,swwae_first]",
    "seeds=[0,1]",
    "schedule.decoder_layerwise.epochs=1",
    "schedule.decoder_topdown.epochs=1",
    "decoding.weights=[1e38,1e38]",
    "report.plots=false",
]


@pytest.mark.parametrize("launcher", ["inprocess", "local_parallel"])
def test_a_non_finite_loss_fails_its_run_at_once_and_the_others_finish(results, launcher):
    done = run_cli(*FAST, *OVERFLOW, f"launcher={launcher}", f"results={results}")
    assert done.returncode == 1
    assert "2 done, 2 failed, 0 skipped of 4 runs" in done.stderr
    assert "Traceback" not in done.stderr  # one line per failure; the trace is on file
    assert done.stderr.count("NonFiniteLoss: non-finite loss at step 1") == 2
    assert "| baseline | 2 |" in done.stdout  # the report is written...
    assert "| swwae_first | 0/2 (2 failed) |" in done.stdout  # ...counting the failures
    failures = sorted(results.glob("digits/*/failed.json"))
    assert len(failures) == 2
    for path in failures:
        failure = json.loads(path.read_text())  # valid JSON: "inf", not a bare inf
        assert failure["stage"] == "decoder_layerwise"
        assert (failure["epoch"], failure["step"]) == (1, 1)
        assert set(failure["loss"]) == {"recon_image", "recon_pool1"}
        assert all(value in ("inf", "nan") for value in failure["loss"].values())
        assert "NonFiniteLoss" in failure["traceback"]
        assert not (path.parent / "metrics.json").exists()  # never marked done


def test_runs_that_start_from_a_failed_run_are_skipped_naming_it(results):
    args = [*FAST, "methods=[baseline,swwae_first]", "schedule.pretrain.lr=1e30"]
    done = run_cli(*args, "report.plots=false", f"results={results}")
    assert done.returncode == 1
    assert "0 done, 1 failed, 1 skipped of 2 runs" in done.stderr
    (failure,) = results.glob("digits/*/failed.json")
    assert f"starts from run {failure.parent.name}, which failed" in done.stderr
    assert json.loads(failure.read_text())["stage"] == "pretrain"
