"""The report on fabricated run records whose answer is known.

The records are written through ``RunRecord`` exactly as the trainer writes
them; the per-example predictions are built so that one method fixes a tenth of
the baseline's val errors (a clear winner) and another is the baseline with as
many errors swapped in as out (no difference).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.config import load_config
from harness.errors import UsageError
from harness.plan import make_plan
from harness.report import data as report_data
from harness.report import extras as report_extras
from harness.report.build import build_report, print_report
from harness.report.data import CORRECT_NAME, load_runs
from harness.report.extras import Extra, Section
from harness.store import RunRecord, correctness
from tests.conftest import FAST, REPO, run_cli

VAL, CLASSES = 3000, 10
METHODS = ["baseline", "sae_first", "swwae_all"]
ARGS = [f"methods=[{','.join(METHODS[1:])}]", "labels=[100,500]", "seeds=[0,1,2]"]


def predictions(hits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """A top-5 array whose first guess is right exactly where ``hits`` (top-5 = top-1)."""
    wrong = (targets + 1) % CLASSES
    first = np.where(hits, targets, wrong)
    rest = [(targets + i) % CLASSES for i in range(2, 6)]
    return np.stack([first, *rest], axis=1).astype(np.int16)


def correct(method: str, seed: int, n: int, salt: int) -> np.ndarray:
    rng = np.random.default_rng([seed, salt])
    base = rng.random(n) < 0.7  # the baseline: 30% error
    if method == "swwae_all":  # fixes a tenth of the baseline's errors: ~ -3 points
        return base | (rng.random(n) < 0.1)
    if method == "sae_first":  # as many errors swapped in as out (40 of 3000): same error
        out, swapped = base.copy(), n // 75
        out[rng.choice(np.flatnonzero(base), swapped, replace=False)] = False
        out[rng.choice(np.flatnonzero(~base), swapped, replace=False)] = True
        return out
    return base


def fabricate(spec, results) -> RunRecord:
    """One done run record: predictions, metrics and a history with known evaluations."""
    record = RunRecord(results / spec.suite / spec.run_id)
    record.write_config({"run": {"run_id": spec.run_id, "method": spec.method}})
    targets = {
        "val": np.random.default_rng(99).integers(0, CLASSES, VAL),
        "train": np.random.default_rng(int(spec.labels)).integers(0, CLASSES, int(spec.labels)),
    }
    arrays, metrics = {}, {}
    for part, salt in (("train", 1), ("val", 2)):
        for dense in (False, True):
            hits = correct(spec.method, spec.split_seed, len(targets[part]), salt + 10 * dense)
            prefix = "dense_" if dense else ""
            arrays[f"{part}_{prefix}topk"] = predictions(hits, targets[part])
            error = 100.0 * (1 - hits.mean())
            metrics[f"{prefix}top1_{part}"] = metrics[f"{prefix}top5_{part}"] = error
        arrays[f"{part}_targets"] = targets[part]
    metrics["labeled"] = int(spec.labels)
    record.write_predictions(arrays)
    final = metrics["top1_val"]
    # a "best" early evaluation far below the end: never the reported value
    record.write_history(
        [{"stage": "pretrain", "epoch": 1, "step": 10, "top1_val": 1.0, "top5_val": 1.0}]
        + [
            {"stage": "finetune", "epoch": e, "step": 10 + e, "top1_val": v, "top5_val": v}
            for e, v in enumerate([final + 9, final + 4, final + 2, final], start=1)
        ]
    )
    record.write_metrics(metrics)
    return record


@pytest.fixture
def suite(tmp_path):
    """(config, plan) of 18 fabricated done runs under tmp_path/results."""
    results = tmp_path / "results"
    cfg = load_config([*ARGS, f"results={results}", "report.plots=false"])
    plan = make_plan(cfg)
    for spec in plan:
        fabricate(spec, results)
    return cfg, plan


def pooled(report, method, labels="500", metric="top1_val"):
    stats = report.comparisons
    rows = stats[
        (stats["method"] == method)
        & (stats["labels"] == labels)
        & (stats["metric"] == metric)
        & (stats["seed"] == "all")
    ]
    assert len(rows) == 1
    return rows.iloc[0]


def table_row(markdown: str, labels: str, method: str) -> list[str]:
    block = markdown.split(f"### {labels} labels")[1].split("###")[0]
    (line,) = [row for row in block.splitlines() if row.startswith(f"| {method} |")]
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_a_known_winner_is_marked_and_a_non_difference_is_not(suite):
    cfg, plan = suite
    report = build_report(cfg, plan)
    winner, same = pooled(report, "swwae_all"), pooled(report, "sae_first")
    assert winner["difference"] < -2 and winner["ttest_ci_high"] < 0
    assert winner["ttest_p_holm"] < 0.05 and winner["seeds_better"] == 3
    assert winner["mcnemar_p_holm"] < 1e-6 and winner["cond_ci_high"] < 0
    assert winner["pairs"] == 3 * VAL  # the three seeds pooled
    assert winner["only_baseline_right"] == 0  # it only fixes errors
    assert (
        same["difference"] == 0 and same["only_baseline_right"] == same["only_method_right"] == 120
    )
    assert same["mcnemar_p"] == 1.0 and same["cond_ci_low"] < 0 < same["cond_ci_high"]
    # the same error in every seed: on the null exactly
    assert same["ttest_p"] == 1.0 and same["ttest_ci_low"] == same["ttest_ci_high"] == 0
    # Holm over two methods: the smaller p doubles
    assert winner["ttest_p_holm"] == pytest.approx(min(1.0, 2 * winner["ttest_p"]))
    assert winner["mcnemar_p_holm"] == pytest.approx(min(1.0, 2 * winner["mcnemar_p"]))
    per_seed = report.comparisons[
        (report.comparisons["seed"] != "all") & (report.comparisons["metric"] == "top1_val")
    ]
    assert len(per_seed) == 2 * 2 * 3  # methods x budgets x seeds
    row = table_row(report.table_md, "500", "swwae_all")
    # columns: method, seeds, top-1 train, top-1 val, top-5 train, top-5 val, dense x2
    assert row[1] == "3"
    assert all(cell.endswith("†") and cell.startswith("**") for cell in row[2:])
    assert not any("†" in cell for cell in table_row(report.table_md, "500", "sae_first"))
    assert "†" not in "".join(table_row(report.table_md, "500", "baseline"))
    summary = (report.folder / "summary.md").read_text()
    assert re.search(r"\*\*500 labels\*\*: Better than the baseline: swwae_all \(-\d", summary)
    assert "| 3/3 | better |" in summary
    assert "No significant difference: sae_first" in summary
    stats_csv = pd.read_csv(report.folder / "stats.csv")
    assert len(stats_csv) == len(report.comparisons)


def test_final_error_is_the_median_of_the_last_k_evaluations_never_the_best(suite):
    cfg, plan = suite
    runs = build_report(cfg, plan).runs
    # finetune evaluations: final + 4, final + 2, final; k = 3: the median is final + 2
    assert np.allclose(runs["final_top1_val"], runs["top1_val"] + 2)
    assert (runs["final_evals"] == 3).all()
    one = build_report(load_config([*ARGS, f"results={cfg.results}", "report.last_k=1"]), plan)
    assert np.allclose(one.runs["final_top1_val"], one.runs["top1_val"])
    five = build_report(load_config([*ARGS, f"results={cfg.results}", "report.last_k=5"]), plan)
    # only the final stage counts: four finetune evaluations, median (final + 3)
    assert np.allclose(five.runs["final_top1_val"], five.runs["top1_val"] + 3)
    assert (five.runs["final_top1_val"] > 1.0).all()  # the early "best" 1.0 never wins


def numbers(text: str) -> list[str]:
    return re.findall(r"\d+\.\d\d", text)


def test_markdown_and_latex_show_the_same_numbers_marks_and_bold(suite):
    cfg, plan = suite
    report = build_report(cfg, plan)
    tex = (report.folder / "table.tex").read_text()
    md_rows = [r for r in report.table_md.splitlines() if r.startswith("| ") and "---" not in r]
    md_rows = [r for r in md_rows if not r.startswith("| method")]
    tex_rows = [r for r in tex.splitlines() if r.endswith(r"\\") and "$\\pm$" in r]
    assert len(md_rows) == len(tex_rows) == 2 * 3
    for md, latex in zip(md_rows, tex_rows, strict=True):
        assert numbers(md) == numbers(latex) and numbers(md)
        assert md.count("†") == latex.count(r"\dag")
        assert md.count("**") == 2 * latex.count(r"\textbf")
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex
    assert "paired t-test" in tex and "Holm" in tex  # the test is named in the caption


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex not installed")
def test_latex_table_compiles_with_pdflatex(suite, tmp_path):
    cfg, plan = suite
    report = build_report(cfg, plan)
    document = tmp_path / "paper.tex"
    document.write_text(
        "\\documentclass{article}\n\\usepackage{booktabs,graphicx}\n\\begin{document}\n"
        f"\\input{{{report.folder / 'table.tex'}}}\n\\end{{document}}\n"
    )
    done = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", document.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-2000:]
    assert (tmp_path / "paper.pdf").stat().st_size > 1000


def test_missing_and_failed_runs_are_marked_not_averaged_over_fewer_seeds(suite):
    cfg, plan = suite
    results = cfg.results
    by_key = {(s.method, s.labels, s.train_seed): s for s in plan}
    shutil.rmtree(f"{results}/digits/{by_key['swwae_all', '100', 1].run_id}")
    failed = RunRecord(Path(results) / "digits" / by_key["sae_first", "500", 2].run_id)
    failed.metrics_file.unlink()
    failed.write_failure(RuntimeError("CUDA out of memory"), "Traceback ...")
    report = build_report(cfg, plan)
    swwae = table_row(report.table_md, "100", "swwae_all")
    assert swwae[1] == "2/3 (1 missing)" and set(swwae[2:]) == {"—"}
    sae = table_row(report.table_md, "500", "sae_first")
    assert sae[1] == "2/3 (1 failed)" and set(sae[2:]) == {"—"}
    stats = report.comparisons
    partial = stats[(stats["labels"] == "100") & (stats["method"] == "swwae_all")]
    assert set(partial["seed"]) == {"0", "2"}  # per-seed tests where both runs exist, no pooled
    assert pooled(report, "swwae_all", labels="500")["seeds"] == 3  # the complete ones still tested
    summary = (report.folder / "summary.md").read_text()
    assert "| swwae_all | 100 | 1 | missing |" in summary
    assert "| sae_first | 500 | 2 | failed |" in summary and "CUDA out of memory" in summary


def test_cache_rereads_only_changed_records(suite, monkeypatch):
    cfg, plan = suite
    build_report(cfg, plan)
    calls = []
    original = report_data.read_record
    monkeypatch.setattr(
        report_data,
        "read_record",
        lambda folder, **kw: calls.append(folder) or original(folder, **kw),
    )
    build_report(cfg, plan)
    assert calls == []  # all 18 from runs.parquet
    spec = plan[0]
    record = RunRecord(Path(cfg.results) / "digits" / spec.run_id)
    metrics = record.read_metrics() | {"top1_train": 77.0}
    time.sleep(0.01)
    record.write_metrics(metrics)
    report = build_report(cfg, plan)
    assert [folder.name for folder in calls] == [spec.run_id]
    assert report.runs.set_index("run_id").loc[spec.run_id, "top1_train"] == 77.0


WRITER = """
import sys, time
import numpy as np
from pathlib import Path
from harness.store import RunRecord
folder, stop = Path(sys.argv[1]), time.time() + float(sys.argv[2])
i = 0
while time.time() < stop:
    record = RunRecord(folder / f"run{i % 5}")
    if record.metrics_file.exists():
        record.metrics_file.unlink()
    record.write_config({"run": {}})
    rows = [{"stage": "s", "epoch": e, "top1_val": 50.0} for e in range(1, i % 7 + 2)]
    record.write_history(rows)
    topk, targets = np.zeros((3000, 5), np.int16), np.zeros(3000, np.int64)
    record.write_predictions({"val_topk": topk, "val_targets": targets})
    record.write_metrics({"top1_val": 50.0 + i, "top1_train": 50.0 + i})
    i += 1
"""


def test_reading_records_while_they_are_written_never_fails(tmp_path):
    """A real second process rewrites five records as fast as it can while the
    report reads them: every read sees whole files (done with its metrics, or not
    done), never a crash or a half-read row."""
    from harness.plan import RunSpec

    suite_dir = tmp_path / "suite"
    plan = [RunSpec("suite", "baseline", "100", 0, 0, f"run{i}") for i in range(5)]
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(suite_dir), "3"], cwd=REPO)
    reads = 0
    try:
        while writer.poll() is None:
            runs, history = load_runs(suite_dir, plan, cache_dir=tmp_path / "cache")
            done = runs[runs["status"] == "done"]
            assert set(runs["status"]) <= {"done", "incomplete", "missing"}
            assert (done["top1_val"] >= 50).all() and done["top1_val"].notna().all()
            assert (done["top1_val"] == done["top1_train"]).all()
            assert set(history["top1_val"].dropna()) <= {50.0}
            reads += 1
    finally:
        writer.wait(timeout=30)
    assert writer.returncode == 0 and reads > 3


def test_report_cli_errors_and_end_to_end(suite):
    cfg, _ = suite
    missing = run_cli(f"results={cfg.results}", "labels=[200]", module="harness.report")
    assert missing.returncode == 2 and "no run records" in missing.stderr
    bad = run_cli(f"results={cfg.results}", "report.bogus=1", module="harness.report")
    assert bad.returncode == 2 and "report.last_k" in bad.stderr
    ok = run_cli(*ARGS, f"results={cfg.results}", module="harness.report")
    assert ok.returncode == 0, ok.stderr
    assert "| swwae_all | 3 |" in ok.stdout
    folder = Path(cfg.results) / "digits" / "report"
    for name in ("error_vs_labels", "seeds", "learning_curves", "learning_curves_steps"):
        for kind in ("png", "pdf"):
            assert (folder / f"{name}.{kind}").stat().st_size > 1000, name


def test_a_suite_with_nothing_done_or_only_the_baseline_reports_without_crashing(tmp_path):
    results = tmp_path / "results"
    cfg = load_config([*ARGS, f"results={results}", "report.plots=false"])
    plan = make_plan(cfg)
    for spec in plan:  # started, nothing finished
        RunRecord(results / "digits" / spec.run_id).write_config({"run": {}})
    report = build_report(cfg, plan)
    assert report.comparisons.empty
    assert "| swwae_all | 0/3 (3 incomplete) |" in report.table_md
    assert "No comparison yet" in (report.folder / "summary.md").read_text()
    assert "t-test" not in report.table_md  # no marks, so no test named
    only = load_config(["labels=[100,500]", "seeds=[0,1,2]", f"results={results}"])
    baseline_plan = make_plan(only)
    for spec in baseline_plan:
        fabricate(spec, results)
    summary = (build_report(only, baseline_plan).folder / "summary.md").read_text()
    assert "the baseline is the only method" in summary


def test_stats_use_the_final_models_errors_like_the_tests_they_sit_beside(suite):
    cfg, plan = suite
    report = build_report(cfg, plan)
    winner = pooled(report, "swwae_all")
    runs = report.runs[(report.runs["labels"] == "500")]
    by_method = runs.groupby("method")["top1_val"].mean()  # metrics.json: the final model
    assert winner["method_error"] == pytest.approx(by_method["swwae_all"])
    assert winner["baseline_error"] == pytest.approx(by_method["baseline"])
    # (b - c) / n of the pooled pairs is the difference of the mean final errors
    assert winner["difference"] == pytest.approx(by_method["swwae_all"] - by_method["baseline"])


def test_a_cache_whose_two_files_disagree_is_rebuilt(suite):
    cfg, plan = suite
    build_report(cfg, plan)
    folder = Path(cfg.results) / "digits" / "report"
    old_history = (folder / "history.parquet").read_bytes()
    record = RunRecord(Path(cfg.results) / "digits" / plan[0].run_id)
    rows = [{"stage": "finetune", "epoch": 1, "top1_val": 90.0, "top5_val": 90.0}]
    record.write_history(rows)
    assert build_report(cfg, plan).runs.iloc[0]["final_top1_val"] == 90.0
    (folder / "history.parquet").write_bytes(old_history)  # as if a write was lost
    assert build_report(cfg, plan).runs.iloc[0]["final_top1_val"] == 90.0


def seed_noise(method: str, seed: int, n: int, salt: int, original=correct) -> np.ndarray:
    """sae_first fixes 10% of the baseline's errors with seed 0, 5% with seed 2,
    and breaks 4% of its right answers with seed 1: every seed differs from the
    baseline by thousands of images, the mean barely (training variance)."""
    base = original("baseline", seed, n, salt)
    if method != "sae_first":
        return original(method, seed, n, salt)
    rng = np.random.default_rng([seed, salt, 7])
    if seed == 1:
        return base & ~(rng.random(n) < 0.04)
    return base | (rng.random(n) < (0.1 if seed == 0 else 0.05))


def test_marks_and_verdicts_follow_the_seeds_not_pooled_mcnemar(tmp_path, monkeypatch):
    """Seeds that disagree in sign: pooled McNemar counts every image of every
    seed as independent and calls it significant; the marks test, which counts
    seeds, does not, and the summary follows it."""
    monkeypatch.setattr(sys.modules[__name__], "correct", seed_noise)
    results = tmp_path / "results"
    cfg = load_config([*ARGS, f"results={results}", "report.plots=false"])
    plan = make_plan(cfg)
    for spec in plan:
        fabricate(spec, results)
    report = build_report(cfg, plan)
    noisy = pooled(report, "sae_first")
    assert noisy["mcnemar_p_holm"] < 0.01  # conditional on these models: "different"
    assert noisy["ttest_p_holm"] > 0.5  # across seeds: nothing
    assert noisy["ttest_ci_low"] < 0 < noisy["ttest_ci_high"]
    assert not any("†" in cell for cell in table_row(report.table_md, "500", "sae_first"))
    summary = (report.folder / "summary.md").read_text()
    assert re.search(r"\| 500 \| sae_first \|.*\| 2/3 \| no significant difference \|", summary)
    assert "No significant difference: sae_first" in summary
    assert "conditional on the trained models" in summary


def test_seed_counts_that_cannot_reach_alpha_are_said_in_words_not_p_1(tmp_path):
    results = tmp_path / "results"
    args = [*ARGS[:2], "seeds=[0]", f"results={results}", "report.plots=false"]
    cfg = load_config(args)
    plan = make_plan(cfg)
    for spec in plan:
        fabricate(spec, results)
    report = build_report(cfg, plan)
    winner = pooled(report, "swwae_all")
    assert winner["seeds"] == 1 and np.isnan(winner["ttest_p"])  # no made-up p
    assert winner["mcnemar_p"] < 1e-6  # the conditional test still runs on one seed
    for labels in ("100", "500"):  # one seed: nothing can be marked
        assert not any("†" in cell for cell in table_row(report.table_md, labels, "swwae_all"))
    summary = (report.folder / "summary.md").read_text()
    assert "| needs ≥ 2 seeds | 1/1 | not testable with 1 seed |" in summary
    assert "Not testable with 1 seed (the paired t-test across seeds needs at least 2)" in summary
    assert "would need 7 seeds" in summary  # Wilcoxon, Holm over two methods
    assert not re.search(r"\| 1 \| [^|]* \|$", summary, re.MULTILINE)
    assert "p = 1" not in summary


def test_three_seeds_say_wilcoxon_cannot_reach_alpha(suite):
    cfg, plan = suite
    report = build_report(cfg, plan)
    summary = (report.folder / "summary.md").read_text()
    assert (
        "With 3 seeds and 2 methods compared, Wilcoxon's signed-rank test in `stats.csv` "
        "cannot reach p < 0.05: its smallest p is 2 / 2^3, 0.5 after Holm; it would need "
        "7 seeds." in summary
    )
    assert pooled(report, "swwae_all")["wilcoxon_p_holm"] == pytest.approx(0.5)


def test_the_difference_figure_is_written_and_listed(suite):
    cfg, plan = suite
    with_plots = load_config([*ARGS, f"results={cfg.results}", "report.plots=true"])
    report = build_report(with_plots, plan)
    for kind in ("png", "pdf"):
        assert (report.folder / f"difference_vs_baseline.{kind}").stat().st_size > 1000
    summary = (report.folder / "summary.md").read_text()
    figures = summary.split("## Figures")[1]
    assert "- `error_vs_labels.png`\n- `difference_vs_baseline.png`" in figures


def test_a_method_familys_extra_reaches_the_summary_and_the_screen(suite, monkeypatch, capsys):
    """The report names no method: a registered extra's section is printed and
    written as given, after the runs' sections; its figures are listed."""
    cfg, plan = suite
    seen = []

    def extra(inputs):
        seen.append(inputs)
        figure = inputs.out / "extra.png"
        figure.write_bytes(b"png")
        return Extra((Section("Summary title", "screen title", "| a |\n|--|"),), (figure,))

    monkeypatch.setitem(report_extras._EXTRAS, "test.extra", extra)
    report = build_report(cfg, plan)
    (inputs,) = seen
    assert inputs.methods == METHODS and len(inputs.runs) == len(plan) and not inputs.plots
    assert inputs.suite_dir == Path(cfg.results) / "digits" and inputs.out == report.folder
    assert report.sections[-1].markdown == "| a |\n|--|"
    summary = (report.folder / "summary.md").read_text()
    assert "## Summary title\n\n| a |\n|--|\n" in summary and "- `extra.png`" in summary
    print_report(cfg, report)
    assert "## digits: screen title\n\n| a |\n|--|" in capsys.readouterr().out


def write_correct(record: RunRecord) -> None:
    """correct.json from the record's predictions, as the store writes it."""
    with np.load(record.predictions_file) as arrays:
        loaded = {name: arrays[name] for name in arrays.files}
    record.correct_file.write_text(json.dumps(correctness(loaded), sort_keys=True) + "\n")


def test_correct_json_and_predictions_give_the_same_rows(suite, tmp_path):
    """The cheap form of the per-example correctness and the predictions it is made
    from are read to identical rows; a damaged one fails that run, not the report."""
    cfg, plan = suite
    suite_dir = Path(cfg.results) / "digits"
    for spec in plan:
        write_correct(RunRecord(suite_dir / spec.run_id))
    fast, _ = load_runs(suite_dir, plan)
    for spec in plan:
        (suite_dir / spec.run_id / CORRECT_NAME).unlink()
    slow, _ = load_runs(suite_dir, plan)
    same = [c for c in slow.columns if c != "stamp"]
    assert any(c.startswith("hits_") for c in same)
    pd.testing.assert_frame_equal(fast[same], slow[same])
    damaged = suite_dir / plan[0].run_id / CORRECT_NAME
    damaged.write_text(json.dumps({"top1_val": {"examples": 3000, "bits": "AAAA"}}))
    runs, _ = load_runs(suite_dir, plan)
    assert runs.iloc[0]["status"] == "failed" and "bytes for 3000 images" in runs.iloc[0]["error"]
    assert (runs.iloc[1:]["status"] == "done").all()


PUBLISHED = (
    "published=[{method: swwae_all, labels: 500, mean: 20.5, std: 0.25, seeds: 10, "
    "source: 'Zhao et al. 2015, Table 2'}, {method: sae_first, labels: 100, mean: 30.0}, "
    "{method: ladder, labels: 500, mean: 1.5, source: 'Rasmus et al. 2015'}]"
)


def published_rows(text: str) -> dict[tuple[str, str], list[str]]:
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in rows[1:]]
    return {(row[0], row[1]): row for row in cells}


def test_published_numbers_sit_beside_the_main_tables_own(suite, capsys):
    """Ours is the main table's cell (the median of the last k evaluations, over the
    seeds); difference = ours − published; a method without runs shows dashes."""
    cfg, plan = suite
    with_paper = load_config([*ARGS, f"results={cfg.results}", "report.plots=false", PUBLISHED])
    assert make_plan(with_paper) == plan  # a paper's numbers change no run id
    report = build_report(with_paper, plan)
    text = (report.folder / "published.md").read_text()
    rows = published_rows(text)
    # columns: method, labels, metric, published, source, ours, difference
    swwae = rows["swwae_all", "500"]
    main = table_row(report.table_md, "500", "swwae_all")[3].strip("*†")  # top-1 val
    assert swwae[2] == "top-1 val" and swwae[4] == "Zhao et al. 2015, Table 2"
    assert swwae[3] == "20.50 ± 0.25 (10 seeds)"
    assert swwae[5] == f"{main} (3 seeds)"
    done = report.runs[(report.runs["method"] == "swwae_all") & (report.runs["labels"] == "500")]
    ours = done["final_top1_val"].mean()
    assert float(swwae[6]) == pytest.approx(round(ours - 20.5, 2), abs=0.006)
    sae = rows["sae_first", "100"]
    assert sae[3] == "30.00" and sae[5].startswith(
        table_row(report.table_md, "100", "sae_first")[3]
    )
    assert rows["ladder", "500"][5:] == ["—", "—"]  # not run in this suite
    table = pd.read_csv(report.folder / "published.csv")
    assert list(table["method"]) == ["swwae_all", "sae_first", "ladder"]
    assert table["difference"][0] == pytest.approx(ours - 20.5, rel=1e-5)
    assert np.isnan(table["ours_mean"][2]) and table["ours_seeds"][2] == 0
    section = text.split("\n\n", 1)[1]
    assert (
        f"## Published results beside ours\n\n{section}"
        in (report.folder / "summary.md").read_text()
    )
    print_report(with_paper, report)
    assert f"## digits: published results beside ours\n\n{section}" in capsys.readouterr().out
    without = build_report(cfg, plan).folder
    assert "Published" not in (without / "summary.md").read_text()
    assert not (without / "published.md").exists() and not (without / "published.csv").exists()


def test_published_over_the_done_seeds_only(suite):
    cfg, plan = suite
    gone = next(s for s in plan if (s.method, s.labels, s.train_seed) == ("swwae_all", "500", 1))
    shutil.rmtree(Path(cfg.results) / "digits" / gone.run_id)
    with_paper = load_config([*ARGS, f"results={cfg.results}", "report.plots=false", PUBLISHED])
    report = build_report(with_paper, plan)
    assert set(table_row(report.table_md, "500", "swwae_all")[2:]) == {"—"}
    runs = report.runs
    kept = runs[(runs["method"] == "swwae_all") & (runs["labels"] == "500")]
    kept = kept[kept["status"] == "done"]["final_top1_val"]
    swwae = published_rows((report.folder / "published.md").read_text())["swwae_all", "500"]
    assert swwae[5] == f"{kept.mean():.2f} ± {kept.std():.2f} (2 of 3 seeds done)"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            "[{method: ladr, labels: 100, mean: 20}]",
            "published[0].method='ladr' is not a registered method; valid choices: adamatch, "
            "baseline,",
        ),
        ("[{labels: 100, mean: 20}]", "published[0].method='' is empty"),
        (
            "[{method: ladder, labels: 100}, {method: ladder, labels: 100, mean: -1}]",
            "published[1].mean must be an error in [0, 100] %, got -1.0",
        ),
        (
            "[{method: ladder, labels: 100, mean: 101}]",
            "published[0].mean must be an error in [0, 100] %, got 101.0",
        ),
        (
            "[{method: ladder, labels: 100, std: -0.5}]",
            "published[0].std must be a finite number >= 0, got -0.5",
        ),
        (
            "[{method: ladder, labels: 100, mean: 2, metric: top1_test}]",
            "unknown published[0].metric (a column of the report) 'top1_test'; valid choices: "
            "dense_top1_val, dense_top5_val, top1_train, top1_val, top5_train, top5_val",
        ),
        ("[{method: ladder, mean: 2}]", "published[0].labels is not set"),
        ("[{method: ladder, labels: lots}]", "published[0].labels='lots': label budget"),
        ("[{method: ladder, labels: 100, sd: 1}]", "'sd'; valid choices: labels, mean, method,"),
        ("{method: ladder, labels: 100}", "must be a list of entries"),
    ],
)
def test_a_bad_published_entry_is_a_one_line_usage_error(entry, message):
    with pytest.raises(UsageError) as error:
        load_config([f"published={entry}"])
    assert message in str(error.value) and "\n" not in str(error.value)


def test_published_entries_load_from_a_suite_file(tmp_path):
    suite_file = tmp_path / "paper.yaml"
    suite_file.write_text(
        "published:\n"
        "  - {method: ladder, labels: 100, mean: 1.06, std: 0.37, seeds: 10,"
        " source: 'Rasmus et al. 2015, Table 1'}\n"
        "  - method: baseline\n    labels: 0.1\n    mean: 25\n"
    )
    cfg = load_config([f"suite={suite_file}"])
    first, second = cfg.published
    assert (first.method, first.labels, first.mean, first.std, first.seeds) == (
        "ladder",
        "100",
        1.06,
        0.37,
        10,
    )
    assert first.metric == "top1_val" and first.source == "Rasmus et al. 2015, Table 1"
    assert (second.method, second.labels, second.std, second.seeds) == ("baseline", "0.1", 0, 0)
    suite_file.write_text("published:\n  - {method: ladder, labels: 100, mean: -2}\n")
    with pytest.raises(
        UsageError, match=r"^published\[0\]\.mean must be an error in \[0, 100\] %, got -2.0$"
    ):
        load_config([f"suite={suite_file}"])


def test_a_bad_published_entry_exits_2_before_any_run(results):
    bad = run_cli(
        f"results={results}", "published=[{method: ladr, labels: 100, mean: 20}]", "dry_run=true"
    )
    assert bad.returncode == 2 and not results.exists()
    assert "published[0].method='ladr' is not a registered method" in bad.stderr


def test_learning_curves_share_one_axis_of_classifier_steps_across_stages():
    """The baseline's step 1 (4 steps) then fine-tune (2); a decoding run that copies
    that step 1, trains its decoder 3 steps, then fine-tunes 2; a one-stage method
    (6 steps). Each evaluation lands at the classifier's steps so far."""
    nan = np.nan
    history = pd.DataFrame(
        [
            ("base", "pretrain", 1, 2, 50.0),
            ("base", "pretrain", 2, 4, 40.0),
            ("base", "finetune", 1, 5, nan),
            ("base", "finetune", 2, 6, 30.0),
            ("dec", "decoder_layerwise", 1, 3, nan),
            ("dec", "finetune", 1, 4, nan),
            ("dec", "finetune", 2, 5, 29.0),
            ("one", "train", 1, 3, 45.0),
            ("one", "train", 2, 6, 20.0),
        ],
        columns=["run_id", "stage", "epoch", "step", "top1_val"],
    )
    from harness.report.plots import classifier_steps

    placed = classifier_steps(history)
    keys = zip(placed["run_id"], placed["epoch"], placed["stage"], strict=True)
    got = dict(zip(keys, placed["classifier_step"], strict=True))
    assert got == {
        ("base", 1, "pretrain"): 2.0,
        ("base", 2, "pretrain"): 4.0,
        ("base", 2, "finetune"): 6.0,
        ("dec", 2, "finetune"): 6.0,  # 4 copied + 2 of its own; the decoder's 3 not counted
        ("one", 1, "train"): 3.0,
        ("one", 2, "train"): 6.0,
    }
    older = history.assign(step=-1)  # records written before history.csv had steps
    assert classifier_steps(older).empty


def test_the_learning_curves_y_axis_shows_the_last_third_of_training(tmp_path):
    """Errors from 90% down to 10-12%: the axis spans the last third's values (padded),
    not 0-90%, so the methods' ends are told apart; the figure is drawn with it."""
    from harness.report.plots import last_third_limits, learning_curves_steps

    steps = np.arange(1, 31, dtype=float)
    rows = []
    for run, method, end in (("a", "baseline", 12.0), ("b", "fixmatch", 10.0)):
        errors = end + 78.0 * np.exp(-steps / 4)  # 90% at the start, `end` at the end
        rows += [(run, method, "100", "train", s, s, e) for s, e in zip(steps, errors, strict=True)]
    history = pd.DataFrame(
        rows, columns=["run_id", "method", "labels", "stage", "epoch", "step", "top1_val"]
    )
    low, high = last_third_limits(history["step"], history["top1_val"])
    tail = history.loc[history["step"] >= 1 + 2 / 3 * 29, "top1_val"]
    assert low < tail.min() < tail.max() < high and high - low < 5
    assert 9 < low and high < 14
    (figure, *_) = learning_curves_steps(history, ["baseline", "fixmatch"], tmp_path)
    assert figure.is_file()
    assert last_third_limits(history["step"].iloc[:0], history["top1_val"].iloc[:0]) is None


def test_status_and_the_report_name_the_published_cells_with_no_run_yet(results):
    published = (
        "published=[{method: baseline, labels: 500, mean: 20},"
        " {method: swwae_all, labels: 500, metric: top1_train, mean: 19}]"
    )
    args = [*FAST, "methods=[baseline]", published, f"results={results}"]
    before = run_cli(*args, module="harness.status")
    assert before.returncode == 0, before.stderr
    assert "published cells with no done run yet:" in before.stdout
    assert "  baseline at 500 labels (top1_val): 1 seed planned, none done" in before.stdout
    assert "  swwae_all at 500 labels (top1_train): no run in this plan" in before.stdout
    assert run_cli(*args).returncode == 0
    after = run_cli(*args, module="harness.status").stdout
    assert "baseline at 500 labels" not in after and "swwae_all at 500 labels" in after
    text = (results / "digits" / "report" / "published.md").read_text()
    assert "Published cells with no done run of ours yet:" in text
    assert "- swwae_all at 500 labels (top1_train): no run in this plan" in text
    assert "- baseline at" not in text
    # the paper's grid, its columns in the table's order: published / ours
    ours = pd.read_csv(results / "digits" / "report" / "published.csv")["ours_mean"][0]
    assert f"| baseline | 500 |  | 20.00 / {ours:.2f} |" in text


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if not CHROMIUM and os.environ.get("CI"):
    pytest.fail("CI must open the report page in Chromium, but it is not installed", pytrace=False)


@pytest.mark.skipif(not CHROMIUM, reason="Debian's chromium is not installed")
def test_the_report_page_holds_everything_and_a_headless_browser_renders_it(suite, tmp_path):
    """index.html: one self-contained page (no script, no link off the page) with the
    table, the verdicts, the published numbers and every figure embedded; headless
    Chromium loads it with no console message and its screenshot shows the table (dark
    text on the first screen) and the figures (colour further down)."""
    from PIL import Image

    cfg, plan = suite
    paper = load_config([*ARGS, f"results={cfg.results}", "report.plots=true", PUBLISHED])
    report = build_report(paper, plan)
    page = (report.folder / "index.html").read_text()
    for method in METHODS:
        assert f">{method}</td>" in page
    assert "Against the baseline" in page and "Published results beside ours" in page
    pngs = sorted(p.name for p in report.folder.glob("*.png"))
    assert pngs and page.count("data:image/png;base64,") == len(pngs)
    assert all(f"<figcaption>{name}</figcaption>" in page for name in pngs)
    assert "<script" not in page and not re.search(r"(src|href)=\"(https?:|//)", page)
    shot = tmp_path / "page.png"
    browser = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    browser += ["--enable-logging=stderr", "--v=0", "--window-size=1366,2400"]
    done = subprocess.run(
        [*browser, f"--screenshot={shot}", (report.folder / "index.html").as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "CONSOLE" not in done.stderr, done.stderr
    image = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert image.shape[:2] == (2400, 1366)
    top, rest = image[:700], image[700:]
    assert (top.sum(axis=2) < 200).mean() > 0.005  # text: the title and the table
    colour = np.abs(rest - rest.mean(axis=2, keepdims=True)).sum(axis=2) > 60
    assert colour.mean() > 0.001  # the figures' coloured marks
