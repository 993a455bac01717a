"""Aggregating 10,000 run records into the report: wall time and peak memory.

Generates a suite's worth of run records of realistic size (Fashion-MNIST
scale: 10,000 val images, top-5 predictions for every evaluation, a 40-row
history, a full metrics.json), written through ``RunRecord`` as the trainer
writes them, then times ``harness.report.build_report`` (tables + stats.csv +
summary; figures separately) in a fresh process per case, so each peak RSS is
that case's own:

- cold: no Parquet cache, every record read;
- warm: the cache is current, nothing reread;
- one changed: one record rewritten since the cache was made;
- warm + figures: the report's figures as well.

Goals (issue 14): cold < 5 s, warm < 3 s, peak < 1 GiB. Wall time depends on what
else the machine runs, so each case also gives its CPU seconds, and the table
the load average. A cold report reads each record's ``correct.json`` where the
store wrote one (bit-packed per-example correctness), else ``predictions.npz``
(about 15 times the cost): the table says how many records have one.

    python benchmarks/bench_report.py              # 10,010 records
    python benchmarks/bench_report.py --seeds 5    # a smaller suite
    python benchmarks/bench_report.py --keep DIR   # generate once into DIR, then reuse it
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from harness.config import load_config  # noqa: E402
from harness.plan import make_plan  # noqa: E402
from harness.report.data import CORRECT_NAME  # noqa: E402
from harness.store import RunRecord  # noqa: E402

VAL, CLASSES = 10_000, 10
GOALS = (5.0, 3.0, None, None)  # seconds: cold, warm (the other cases have none)
LABELS = [100, 200, 300, 400, 500, 600, 700, 800, 900, 1000]


def suite_args(results: Path, seeds: int) -> list[str]:
    return [
        "methods=all",
        f"labels=[{','.join(map(str, LABELS))}]",
        f"seeds=[{','.join(map(str, range(seeds)))}]",
        f"results={results}",
        "progress=false",
    ]


def write_record(job: tuple[str, str, str, int, int]) -> None:
    """One done run: the files the trainer writes, with plausible contents."""
    folder, method, labels, seed, salt = job
    rng = np.random.default_rng([seed, salt])
    record = RunRecord(Path(folder))
    record.write_config({"run": {"method": method, "labels": labels, "seed": seed}})
    arrays, metrics = {}, {}
    for part, n in (("train", int(labels)), ("val", VAL)):
        targets = np.random.default_rng([int(labels), n]).integers(0, CLASSES, n)
        arrays[f"{part}_targets"] = targets
        for dense in (False, True):
            scores = rng.random((n, CLASSES)) + 0.6 * np.eye(CLASSES)[targets]
            topk = np.argsort(-scores, axis=1)[:, :5].astype(np.int16)
            arrays[f"{part}_{'dense_' if dense else ''}topk"] = topk
            hits = topk == targets[:, None]
            prefix = "dense_" if dense else ""
            metrics[f"{prefix}top1_{part}"] = 100 * (1 - hits[:, 0].mean())
            metrics[f"{prefix}top5_{part}"] = 100 * (1 - hits.any(axis=1).mean())
    record.write_predictions(arrays)
    metrics |= {f"recon_rel_topdown_level{i}": float(rng.random()) for i in range(3)}
    metrics |= {"labeled": int(labels), "unlabeled": 59000, "seconds": 61.0, "epochs": 37}
    rows = []
    for stage, epochs in (("pretrain", 30), ("decoder_layerwise", 2), ("finetune", 5)):
        for epoch in range(1, epochs + 1):
            row = {"stage": stage, "epoch": epoch, "lr": 1e-3, "loss_cls": float(rng.random())}
            if stage != "decoder_layerwise":
                row |= {"top1_val": 30 * rng.random(), "top5_val": 5 * rng.random()}
            rows.append(row | {"seconds": 1.5})
    record.write_history(rows)
    record.write_metrics(metrics)


def generate(results: Path, seeds: int) -> int:
    plan = make_plan(load_config(suite_args(results, seeds)))
    jobs = [
        (str(results / s.suite / s.run_id), s.method, s.labels, s.train_seed, i)
        for i, s in enumerate(plan)
    ]
    with ProcessPoolExecutor() as pool:
        list(pool.map(write_record, jobs, chunksize=64))
    return len(plan)


CASE = """
import json, resource, sys, time
sys.path.insert(0, {repo!r})
t0 = time.perf_counter()
from harness.config import load_config
from harness.plan import make_plan
from harness.report.build import build_report
t1 = time.perf_counter()
cfg = load_config({args!r})
plan = make_plan(cfg)
t2, c2 = time.perf_counter(), time.process_time()
report = build_report(cfg, plan)
t3, c3 = time.perf_counter(), time.process_time()
print(json.dumps({{"import": t1 - t0, "plan": t2 - t1, "report": t3 - t2, "cpu": c3 - c2,
    "rows": len(report.comparisons),
    "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def measure(args: list[str]) -> dict:
    code = CASE.format(repo=str(REPO), args=args)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=143, help="7 methods x 10 budgets x seeds")
    parser.add_argument("--keep", type=Path, help="generate into (or reuse) this folder")
    options = parser.parse_args()
    root = options.keep or Path(tempfile.mkdtemp(prefix="bench_report_"))
    results = root / "results"
    tic = time.perf_counter()
    if not (results / "digits").is_dir():
        count = generate(results, options.seeds)
        print(f"generated {count} records in {time.perf_counter() - tic:.1f} s", file=sys.stderr)
    report_dir = results / "digits" / "report"
    sizes = sum(p.stat().st_size for p in (results / "digits").rglob("*") if p.is_file())
    base = suite_args(results, options.seeds)
    cases, load = [], os.getloadavg()[0]
    for parquet in report_dir.glob("*.parquet"):
        parquet.unlink()
    cases.append(("cold (no cache)", measure([*base, "report.plots=false"])))
    cases.append(("warm (cache current)", measure([*base, "report.plots=false"])))
    plan = make_plan(load_config(base))
    record = RunRecord(results / "digits" / plan[len(plan) // 2].run_id)
    record.write_metrics(record.read_metrics() | {"top1_train": 1.0})
    cases.append(("one record changed", measure([*base, "report.plots=false"])))
    cases.append(("warm + figures", measure(base)))
    correct = sum((results / "digits" / s.run_id / CORRECT_NAME).is_file() for s in plan)
    print(
        f"\n{len(plan)} run records ({correct} with {CORRECT_NAME}), {sizes / 2**20:.0f} MiB on "
        f"disk; load average {load:.1f} before, {os.getloadavg()[0]:.1f} after, on "
        f"{os.cpu_count()} cores\n"
    )
    print(
        "| case | report (s) | report CPU (s) | + plan (s) | + imports (s) | peak RSS (MiB) "
        "| s/goal | MiB/goal |"
    )
    print("|:--|--:|--:|--:|--:|--:|--:|--:|")
    for (name, m), goal in zip(cases, GOALS, strict=True):
        ratio = f"{m['report'] / goal:.2f}" if goal else "—"
        print(
            f"| {name} | {m['report']:.2f} | {m['cpu']:.2f} | {m['plan']:.2f} | {m['import']:.2f} "
            f"| {m['peak_mib']:.0f} | {ratio} "
            f"| {m['peak_mib'] / 1024:.2f} |"
        )
    peak = max(m["peak_mib"] for _, m in cases)
    print(f"\nstats.csv rows: {cases[0][1]['rows']}; max peak RSS {peak:.0f} MiB")


if __name__ == "__main__":
    main()
