"""Hyperparameter search as ordinary runs (issue 36 §2): bad input is one line before
any work; trials are runs with their own ids, selected on the validation split; a
search restarted repeats no finished trial and runs a trial asked before a kill under
its own id; a deleted study is rebuilt from the records; it runs under SLURM."""

from __future__ import annotations

import json

import optuna
import pytest
import yaml
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from harness.run import main
from harness.search import trial_name
from tests.conftest import run_cli

ARGS = [
    "data.holdout=200",
    "labels=[100]",
    "seeds=[0]",
    "methods=[baseline]",
    "schedule.pretrain.epochs=2",
    "schedule.pretrain.steps=10",
    "schedule.finetune.epochs=1",
    "schedule.finetune.steps=5",
    "threads=1",
    "progress=false",
    "report.plots=false",
]
LR = "search.space.baseline.schedule.pretrain.lr={low: 0.0005, high: 0.005, log: true}"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["search.space.baseline.nope=[1]", "search.trials=2"], "search key of method baseline"),
        (["search.space.fixmatch.threshold=[0.9]", "search.trials=2"], "method in search.space"),
        (["search.space.baseline.schedule.pretrain.lr=[]", "search.trials=2"], "empty list"),
        (
            [
                "search.space.baseline.schedule.pretrain.lr={low: 0.01, high: 0.001}",
                "search.trials=2",
            ],
            "an empty range [0.01, 0.001]",
        ),
        ([LR, "search.trials=0"], "search.trials=0 must be at least 1"),
        ([LR, "search.trials=2", "data.holdout=0"], "set data.holdout"),
        ([LR, "search.trials=2", "search.sampler=grid"], "grid needs lists of values"),
        ([LR, "search.trials=2", "search.sampler=best"], "unknown search.sampler 'best'"),
        (
            ["search.space.baseline.schedule.pretrain.lr=[fast]", "search.trials=2"],
            "search.space.baseline.schedule.pretrain.lr: 'fast'",
        ),
    ],
)
def test_bad_search_input_is_one_line_exit_2_and_writes_nothing(args, message, tmp_path, capsys):
    results = tmp_path / "results"
    assert main([*ARGS, f"results={results}", *args]) == 2
    stderr = capsys.readouterr().err
    assert message in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert not results.exists()


def _trials(suite_dir) -> dict[str, float]:
    """Trial run id -> its metrics file's mtime."""
    found = {}
    for config in suite_dir.glob("*/config.yaml"):
        if "@" in yaml.safe_load(config.read_text())["run"]["method"]:
            found[config.parent.name] = (config.parent / "metrics.json").stat().st_mtime_ns
    return found


def test_a_search_runs_trials_as_runs_resumes_and_rebuilds_its_study(tmp_path):
    """A trial asked before a kill runs first under its own id; the chosen setting trains
    the table's run; a deleted study is rebuilt from the records and goes on."""
    results = tmp_path / "results"
    suite_dir = results / "digits"
    # a trial asked by a search that was then killed (asked, never told)
    journal = suite_dir / "search" / "baseline.journal"
    journal.parent.mkdir(parents=True)
    study = optuna.create_study(
        study_name="baseline", storage=JournalStorage(JournalFileBackend(str(journal)))
    )
    lr = optuna.distributions.FloatDistribution(0.0005, 0.005, log=True)
    asked = study.ask({"schedule.pretrain.lr": lr})
    in_flight = trial_name("baseline", dict(asked.params))

    done = run_cli(*ARGS, f"results={results}", LR, "search.trials=2")
    assert done.returncode == 0, done.stderr
    assert "trial 1 of 2: schedule.pretrain.lr=" in done.stderr and in_flight in done.stderr
    first = _trials(suite_dir)
    assert len(first) == 2
    chosen = json.loads((suite_dir / "search" / "baseline.chosen.json").read_text())
    assert chosen["trials"] == 2
    summary = (suite_dir / "report" / "summary.md").read_text()
    assert "## Search (validation split)" in summary and "selection never reads the test" in summary
    # the table's run: the chosen lr, under the method's own name
    (table,) = [c for c in suite_dir.glob("*/config.yaml") if c.parent.name not in first]
    stored = yaml.safe_load(table.read_text())
    assert stored["run"]["method"] == "baseline"
    assert (
        stored["config"]["schedule"]["pretrain"]["lr"] == chosen["values"]["schedule.pretrain.lr"]
    )

    # the study deleted, then restarted with a larger budget: rebuilt from the two
    # records (none trained again), one new trial
    journal.unlink()
    done = run_cli(*ARGS, f"results={results}", LR, "search.trials=3")
    assert done.returncode == 0, done.stderr
    second = _trials(suite_dir)
    assert len(second) == 3 and {k: second[k] for k in first} == first
    again = json.loads((suite_dir / "search" / "baseline.chosen.json").read_text())
    assert again["trials"] == 3


def test_a_search_runs_under_slurm(slurm_cluster, tmp_path):
    args = [*ARGS, f"results={tmp_path}", LR, "search.trials=2", "search.batch=2"]
    done = run_cli(*args, "launcher=slurm", "wait=true", "slurm.poll_s=0.5", timeout=600)
    assert done.returncode == 0, done.stderr
    assert len(_trials(tmp_path / "digits")) == 2
    assert (tmp_path / "digits" / "search" / "baseline.chosen.json").is_file()
