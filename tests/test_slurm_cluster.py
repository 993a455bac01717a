"""The single-node SLURM cluster of ``slurm/cluster.sh``, used for real.

Skipped, with the reason, where it cannot start: not root, or Debian's slurm
packages (slurmctld slurmd slurm-client slurmdbd munge mariadb-server) missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from tests.conftest import REPO

SCRIPT = REPO / "slurm" / "cluster.sh"
DAEMONS = ("slurmctld", "slurmd", "slurmdbd", "munged", "mariadbd", "sbatch", "sacct")
missing = [
    name
    for name in DAEMONS
    if shutil.which(name) is None and not os.path.exists(f"/usr/sbin/{name}")
]
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or bool(missing),
    reason=f"slurm/cluster.sh needs root and Debian's slurm packages (missing: {missing})",
)


@pytest.fixture(scope="module")
def cluster():
    """SLURM_CONF of a running cluster: started here (and stopped after) unless already up."""
    status = subprocess.run([SCRIPT, "status"], capture_output=True, text=True)
    was_up = "slurmctld: running" in status.stdout
    started = subprocess.run([SCRIPT, "start"], capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stderr
    conf = started.stdout.strip().removeprefix("export SLURM_CONF=")
    yield {**os.environ, "SLURM_CONF": conf}
    if not was_up:
        subprocess.run([SCRIPT, "stop"], capture_output=True, timeout=120)


def test_a_submitit_array_is_one_sbatch_with_array_task_ids_in_sacct(cluster, tmp_path):
    import submitit

    os.environ["SLURM_CONF"] = cluster["SLURM_CONF"]
    executor = submitit.AutoExecutor(folder=tmp_path / "logs", cluster="slurm")
    executor.update_parameters(timeout_min=2, slurm_mem="200M", cpus_per_task=1)
    with executor.batch():
        jobs = [executor.submit(pow, 2, i) for i in range(4)]
    assert [job.result() for job in jobs] == [1, 2, 4, 8]
    array_id = jobs[0].job_id.split("_")[0]
    assert {job.job_id for job in jobs} == {f"{array_id}_{i}" for i in range(4)}
    for _ in range(50):  # accounting lags the jobs by a moment
        sacct = subprocess.run(
            ["sacct", "-n", "-X", "-P", "-j", array_id, "-o", "JobID,State"],
            capture_output=True,
            text=True,
            env=cluster,
        ).stdout.split()
        if len(sacct) == 4:
            break
        time.sleep(0.2)
    assert sorted(sacct) == [f"{array_id}_{i}|COMPLETED" for i in range(4)]
