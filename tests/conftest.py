"""Shared helpers: run the real CLI in a subprocess on a short digits schedule."""

from __future__ import annotations

import functools
import os
import shutil
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


def without_figures(args: list[str] | tuple[str, ...], module: str = "harness.run") -> list[str]:
    """``harness.run``'s arguments with ``report.plots=false`` unless a test sets it:
    seaborn's figures cost about two seconds of every report, and only the tests that
    look at figures ask for them (``report.plots=true``)."""
    if module == "harness.run" and not any(a.startswith("report.plots=") for a in args):
        return [*args, "report.plots=false"]
    return list(args)


def run_cli(
    *args: str,
    module: str = "harness.run",
    timeout: float = 300,
    env: dict | None = None,
    fresh: bool = False,
) -> subprocess.CompletedProcess:
    """``python -m module args`` from the repo root: its status, stdout and stderr.

    It runs as a child of this worker's fork server (``tests/_cli_child.py``), which has
    imported torch and the harness once: the same ``main()`` on the same ``sys.argv``,
    three seconds sooner. ``env`` (a changed ``PYTHONPATH`` must reach a new
    interpreter) or ``fresh=True`` runs a new interpreter instead, as a user would."""
    argv = without_figures(args, module)
    if env is not None or fresh:
        return subprocess.run(
            [sys.executable, "-m", module, *argv],
            cwd=REPO,
            stdin=subprocess.DEVNULL,  # never a pytest-xdist worker's stdin (its channel)
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
    import tempfile

    from tests import _cli_child

    with tempfile.TemporaryDirectory() as folder:
        out, err = f"{folder}/stdout", f"{folder}/stderr"
        child = _fork_server().Process(
            target=_cli_child.run_main,
            args=(module, argv, str(REPO), dict(os.environ), out, err),
        )
        child.start()
        child.join(timeout)
        if child.exitcode is None:
            child.kill()
            child.join()
            raise subprocess.TimeoutExpired([module, *argv], timeout)
        return subprocess.CompletedProcess(
            [module, *argv],
            child.exitcode,
            Path(out).read_text(errors="replace"),
            Path(err).read_text(errors="replace"),
        )


@functools.cache
def _fork_server():
    """This worker's multiprocessing context whose server preloads ``tests._cli_child``."""
    import multiprocessing

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["tests._cli_child"])
    return context


def kill_when(args: list[str], checkpoints: str, reached, timeout: float = 120) -> bool:
    """Start ``harness.run args``, SIGKILL it as soon as a checkpoint matching the glob
    ``checkpoints`` satisfies ``reached(state)``; whether one did before ``timeout``."""
    import signal
    import time

    import torch

    process = subprocess.Popen(
        [sys.executable, "-m", "harness.run", *without_figures(args)],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    folder, pattern = Path(checkpoints).parent, Path(checkpoints).name
    deadline, caught = time.monotonic() + timeout, False
    while time.monotonic() < deadline and not caught:
        for found in folder.parent.glob(f"{folder.name}/{pattern}"):
            try:
                state = torch.load(found, weights_only=True)
            except Exception:  # noqa: BLE001 - replaced while we read: try again
                continue
            caught = caught or reached(state)  # one checkpoint must not reset another's catch
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    return caught


def assert_same_run(reference: Path, run: Path) -> None:
    """Two run folders hold the same result: metrics (but wall time), every history row
    (but its seconds) and every val prediction, bit for bit."""
    import json

    import numpy as np
    import pandas as pd

    ref, got = (json.loads((f / "metrics.json").read_text()) for f in (reference, run))
    ref.pop("seconds"), got.pop("seconds")
    assert got == ref
    a, b = (pd.read_csv(f / "history.csv").drop(columns="seconds") for f in (reference, run))
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    want, found = (np.load(f / "predictions.npz")["val_topk"] for f in (reference, run))
    assert np.array_equal(want, found)


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


CLUSTER_SCRIPT = REPO / "slurm" / "cluster.sh"
SLURM_PROGRAMS = ("slurmctld", "slurmd", "slurmdbd", "munged", "mariadbd", "sbatch", "sacct")


def _why_no_cluster() -> str | None:
    missing = [
        name
        for name in SLURM_PROGRAMS
        if shutil.which(name) is None and not os.path.exists(f"/usr/sbin/{name}")
    ]
    if os.geteuid() != 0 or missing:
        return (
            "slurm/cluster.sh needs root and Debian's slurmctld slurmd slurm-client slurmdbd "
            f"munge mariadb-server (missing: {missing or 'none'}; root: {os.geteuid() == 0})"
        )
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under pytest-xdist every worker is a session of its own: the tests that use the
    one SLURM cluster run on one worker, so only one starts it and stops it, and so
    do the DDP tests (process groups on free local ports: two at once could race for
    a port, seen as a gloo rank aborting). First among the hooks: xdist's worker reads
    the marks into the test ids in its own hook, which runs before a conftest's
    (registered earlier) unless told otherwise; after it, the marks did nothing and a
    worker that finished early stopped the cluster under the other's running jobs."""
    for item in items:
        uses_cluster = "slurm_cluster" in getattr(item, "fixturenames", ())
        if uses_cluster or item.path.name == "test_ddp.py":
            item.add_marker(pytest.mark.xdist_group("cluster_and_ddp"))
        elif _module_fixtures(item):
            # the tests sharing a module-scoped fixture (real runs, tens of seconds) on one
            # worker: spread over two, each worker would train the fixture's runs again
            item.add_marker(pytest.mark.xdist_group(f"fixtures_of_{item.path.stem}"))


def _module_fixtures(item: pytest.Item) -> list[str]:
    """The module-scoped fixtures ``item`` uses."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return []
    return [
        name for name, defs in info.name2fixturedefs.items() if defs and defs[-1].scope == "module"
    ]


def pytest_collection_finish(session: pytest.Session) -> None:
    """Fail a worker whose grouped tests did not get their group into their ids (what
    xdist's scheduler reads): a pytest that xdist does not follow (9.2 reads ids from
    elsewhere) would otherwise spread the cluster tests again, and they would fail
    only by chance, as timeouts."""
    if not (os.environ.get("PYTEST_XDIST_WORKER") and session.config.getvalue("loadgroup")):
        return
    lost = [
        item.nodeid
        for item in session.items
        if any(True for _ in item.iter_markers("xdist_group")) and "@" not in item.nodeid
    ]
    if lost:
        raise pytest.UsageError(
            f"pytest-xdist did not group {len(lost)} tests (first: {lost[0]}) under pytest "
            f"{pytest.__version__}; pyproject.toml pins a pytest it works with"
        )


@pytest.fixture(scope="session")
def slurm_cluster():
    """A running single-node SLURM cluster (slurm/cluster.sh): started here and stopped
    after the session, also when tests fail, unless it was already up. Skipped where it
    cannot start, except under CI, which must run these tests."""
    why = _why_no_cluster()
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the SLURM tests, but {why}")
        pytest.skip(why)
    status = subprocess.run([CLUSTER_SCRIPT, "status"], capture_output=True, text=True)
    was_up = "slurmctld: running" in status.stdout
    started = subprocess.run([CLUSTER_SCRIPT, "start"], capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stderr
    conf = started.stdout.strip().removeprefix("export SLURM_CONF=")
    before = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = conf  # for the CLI subprocesses and the slurm commands here
    try:
        yield conf
    finally:
        if before is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = before
        if not was_up:
            subprocess.run([CLUSTER_SCRIPT, "stop"], capture_output=True, timeout=120)
