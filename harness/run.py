"""``python -m harness.run [suite=NAME] [key=value ...]``: plan, launch, tabulate.

Everything that can be wrong with the input is checked first (config, method
names, dataset files, label budgets, stored splits, the model against the image
size); a problem is one line on stderr and exit status 2, with nothing written
under the results root. ``dry_run=true`` prints the plan and stops there. Then
the launcher runs what is not done yet (a failed run does not stop the others),
the report (``harness.report``) of the plan's runs is written and its table
printed, and a last line counts the runs done, failed and skipped; the exit
status is 1 if any failed.
"""

from __future__ import annotations

import os
import shlex
import sys
import tempfile
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from tabulate import tabulate

from harness.cli import run_command
from harness.config import config_for, load_config, suite_command
from harness.data import load_dataset, load_or_store_split
from harness.engine.checkpoint import load_weights
from harness.engine.cost import StageCost, plan_costs
from harness.engine.distributed import is_main_process
from harness.errors import UsageError
from harness.launch import LAUNCHERS, prepare, tally
from harness.lock import is_held
from harness.method import check_model, get_method
from harness.models import build_encoder, require
from harness.plan import RunSpec, make_plan, resolve_methods
from harness.store import run_record


def validate(argv: list[str]) -> tuple[DictConfig, list[RunSpec]]:
    """The config and plan for ``argv``; raises UsageError, writes nothing."""
    cfg = load_config(argv)
    prepare(cfg)
    # a dry run plans a GPU suite from a machine without one (a cluster's login node):
    # its run ids and costs do not depend on the device being here
    here = cfg.launcher != "slurm" and not cfg.dry_run
    if cfg.device == "cuda" and here and not torch.cuda.is_available():
        raise UsageError("device=cuda but torch sees no CUDA device; valid here: cpu, auto")
    results = Path(cfg.results)
    if results.exists() and not results.is_dir():
        raise UsageError(f"results={cfg.results!r} exists and is not a folder")
    if not cfg.dry_run:
        check_writable(results)
    plan = make_plan(cfg)
    if cfg.search.trials or cfg.search.space:
        from harness.search import parse_space  # optuna, where a search runs

        parse_space(cfg, resolve_methods(cfg))
    dataset = load_dataset(cfg.data)
    # one encoder (and one load of a pretrained file) per distinct model, shared by the
    # methods that train it: a VGG-16 and its 500 MB checkpoint once, not once a method
    encoders: dict[tuple[str, int, str], torch.nn.Module] = {}
    for name in dict.fromkeys(spec.method for spec in plan):  # a method may reject the model
        own = config_for(cfg, name)  # its per_method entry merged in
        key = (own.model.name, own.data.crop, own.model.pretrained)
        if key not in encoders:
            encoders[key] = build_encoder(
                own.model.name, dataset.channels, dataset.num_classes, own.data.crop
            )
            if own.model.pretrained:
                check_pretrained(own.model.pretrained, encoders[key])
        encoder = encoders[key]
        method = get_method(name)
        check_model(method, own.model.name)  # a method that trains only models of its own
        require(encoder, own.model.name, method.needs, name)  # what it needs the model offers
        method(own).build_model(encoder, dataset)
    # every split drawn (and a stored one checked) now; with every image labeled, stages
    # that train on the pool read the labeled set (harness.engine.context.Context.draws_pool)
    for labels, seed in dict.fromkeys((spec.labels, spec.split_seed) for spec in plan):
        load_or_store_split(
            Path(cfg.results), dataset, labels, seed, store=False, holdout=cfg.data.holdout
        )
    return cfg, plan


def check_writable(results: Path) -> None:
    """The results root (or the nearest folder above it that exists) must take new
    files: run folders, their locks and records go there."""
    existing = results.absolute()
    while not existing.exists():
        existing = existing.parent
    why = "is not a folder" if not existing.is_dir() else "is not writable"
    if why == "is not a folder" or not _takes_folders(existing):
        raise UsageError(
            f"results={str(results)!r} cannot be written ({existing} {why}): "
            "run records and their locks go there; give a writable results=FOLDER"
        )


def _takes_folders(folder: Path) -> bool:
    """Whether a folder can be made in ``folder``: tried, then removed (permission bits
    do not say it: root passes ``os.access`` on /proc, where nothing can be made)."""
    if not os.access(folder, os.W_OK | os.X_OK):
        return False
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".harness-probe-", dir=folder))
    except OSError:
        return False
    return True


def print_plan(cfg: DictConfig, plan: list[RunSpec]) -> None:
    """``dry_run=true``: one row per planned run, where it stands and what it will read
    and compute; then each stage's share and the plan's total; reads only."""
    costs = plan_costs(cfg, plan, load_dataset(cfg.data))
    rows = []
    for spec in plan:
        record = run_record(cfg.results, spec.suite, spec.run_id)
        if record.is_done():
            state = "done"
        elif is_held(record.path):
            state = "running"
        elif record.failure_file.is_file():
            state = "failed"
        elif record.checkpoint_file.is_file():
            state = "started"
        else:
            state = "to run"
        waits = ", ".join(spec.depends_on) or "-"
        stages = costs[spec.run_id]
        images, flops = sum(s.images for s in stages), sum(s.flops for s in stages)
        rows.append(
            [spec.run_id, spec.method, spec.labels, spec.train_seed, waits, state]
            + [f"{images:,}", tera(flops)]
        )
    headers = ["run id", "method", "labels", "seed", "waits for", "state"]
    print(tabulate(rows, headers=[*headers, "images read", "TFLOPs"], tablefmt="github"))
    print()
    print(stage_table(plan, costs))
    counts = {
        state: sum(row[5] == state for row in rows)
        for state in dict.fromkeys(row[5] for row in rows)
    }
    print(total_line(plan, costs, {row[0] for row in rows if row[5] != "done"}))
    summary = ", ".join(f"{n} {state}" for state, n in counts.items())
    print(f"suite {cfg.suite}: {len(plan)} runs planned ({summary}); dry run: nothing written")


def tera(flops: float) -> str:
    """FLOPs as TFLOPs, to three significant digits (whole numbers from 100 on)."""
    value = flops / 1e12
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def stage_table(plan: list[RunSpec], costs: dict[str, list[StageCost]]) -> str:
    """Each stage's images and FLOPs, one row per method, budget and stage (the seeds of
    one budget read as many images and take as many FLOPs)."""
    rows: dict[tuple, int] = {}
    for spec in plan:
        for cost in costs[spec.run_id]:
            if cost.epochs:
                key = (spec.method, spec.labels, cost.stage, cost.epochs, cost.steps)
                key += (cost.labeled, cost.unlabeled, cost.flops)
                rows[key] = rows.get(key, 0) + 1
    table = [
        [method, labels, stage, runs, f"{epochs} x {steps}", f"{labeled:,}", f"{unlabeled:,}"]
        + [tera(flops)]
        for (method, labels, stage, epochs, steps, labeled, unlabeled, flops), runs in rows.items()
    ]
    headers = ["method", "labels", "stage", "runs", "epochs x steps", "labeled read"]
    headers += ["unlabeled read", "TFLOPs per run"]
    return tabulate(table, headers=headers, tablefmt="github")


def total_line(plan: list[RunSpec], costs: dict[str, list[StageCost]], to_run: set[str]) -> str:
    """The plan's images and training FLOPs in all, and those of the runs not done."""

    def total(ids: list[str]) -> str:
        stages = [cost for run_id in ids for cost in costs[run_id]]
        images = sum(cost.images for cost in stages)
        return f"{images:,} images read, {tera(sum(cost.flops for cost in stages))} TFLOPs"

    ids = [spec.run_id for spec in plan]
    left = [run_id for run_id in ids if run_id in to_run]
    return (
        f"\ntraining in all: {total(ids)} (forward + backward, FlopCounterMode); "
        f"not done: {total(left)}"
    )


def check_pretrained(path: str, encoder: torch.nn.Module) -> None:
    """The ``model.pretrained`` file must load strictly into the suite's classifier."""
    try:
        encoder.load_state_dict(load_weights(path, map_location="cpu"))
    except Exception as error:  # noqa: BLE001 - any failure means the same to the user
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UsageError(
            f"model.pretrained={path!r} does not load into model {encoder.__class__.__name__} "
            f"as built by this suite ({first})"
        ) from None


COMMAND = suite_command(
    "harness.run",
    "Plan every run of a suite (methods x label budgets x seeds), train what is not "
    "done yet under the chosen launcher, then write and print the report. dry_run=true prints "
    "the plan and writes nothing. Bad input: one line on stderr, exit 2, nothing written; "
    "exit 1 if a run failed.",
)


def _searched(cfg: DictConfig) -> tuple[DictConfig, list[RunSpec]]:
    """Each searched method's trials (``harness.search``), then the config and plan of
    the suite's runs with the chosen settings."""
    from harness.search import parse_space, run_search, with_chosen

    def launch(batch: DictConfig) -> None:
        LAUNCHERS[batch.launcher](make_plan(batch), batch)

    chosen = run_search(cfg, parse_space(cfg, resolve_methods(cfg)), launch)
    cfg = with_chosen(cfg, chosen)
    return cfg, make_plan(cfg)


def main(argv: list[str] | None = None) -> int:
    return run_command(COMMAND, _main, argv)


def _main(argv: list[str]) -> int:
    cfg, plan = validate(argv)
    if cfg.dry_run:
        if is_main_process():
            print_plan(cfg, plan)
        return 0
    suite_dir = Path(cfg.results) / cfg.suite
    if not is_main_process():  # a DDP rank > 0 (torchrun): train, leave the talking to rank 0
        cfg = OmegaConf.merge(cfg, {"progress": False})
        LAUNCHERS[cfg.launcher](plan, cfg)  # a failed run raises under DDP
        return 0
    if cfg.search.trials:
        cfg, plan = _searched(cfg)
    done = sum((suite_dir / spec.run_id / "metrics.json").is_file() for spec in plan)
    print(f"suite {cfg.suite}: {len(plan)} runs planned, {done} already done", file=sys.stderr)
    outcome = LAUNCHERS[cfg.launcher](plan, cfg)
    if not outcome.finished:  # submitted to SLURM: its report job writes the report
        print(f"run records: {suite_dir}/<run_id>/", file=sys.stderr)
        return 0
    # imported here: pandas, scipy and seaborn are a second and a half of every start,
    # and a bad key, a dry run or a run that fails needs none of them
    from harness.report import build_report, print_report

    print_report(cfg, build_report(cfg, plan))
    print(f"run records: {suite_dir}/<run_id>/", file=sys.stderr)
    counts = tally(plan, cfg)
    print(
        f"suite {cfg.suite}: {counts['done']} done, {counts['failed']} failed, "
        f"{counts['skipped']} skipped of {len(plan)} runs",
        file=sys.stderr,
    )
    if counts["failed"]:
        print(
            f"error: {counts['failed']} runs failed; their errors: "
            f"python -m harness.status {shlex.join(argv)}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
