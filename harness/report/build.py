"""Write a suite's report folder: tables, tests and plots.

Reads the run records of the suite's plan (the same keys as ``harness.run``
give the same runs; ``methods=`` chooses the rows) and writes
``results/<suite>/report/``: ``table.md`` and ``table.tex`` (the paper's error
table with significance marks), ``stats.csv`` (every method against the
baseline), the figures (PNG + PDF) and ``summary.md``, with the sections and
figures the method families add (``harness.report.extras``), ``index.html`` (all of it
on one page, ``harness.report.page``), and where the suite
lists a paper's numbers (``published:``) ``published.md`` and ``published.csv``
(``harness.report.published``). ``harness.run``
calls it when its runs are done. Only the store is read (``harness.report.data``);
nothing here imports training code.
"""

from __future__ import annotations

import csv
import io
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from harness.claims import expand_claims
from harness.report.claims import CLAIMS_TITLE, claim_table, claims_markdown
from harness.report.compare import BASELINE, MARKS_TEST, compare
from harness.report.data import ERROR_COLUMNS, STATUSES, final_errors, load_runs
from harness.report.extras import ExtraInputs, Section, report_extras
from harness.report.page import render_page
from harness.report.published import PUBLISHED_TITLE, published_markdown, published_table
from harness.report.search import search_section
from harness.report.stats import seeds_needed, smallest_p
from harness.report.tables import (
    MISSING_MD,
    caption,
    fmt_p,
    mean_std,
    render_latex,
    render_markdown,
    seeds_text,
    table_blocks,
)
from harness.store import atomic_write_if_changed

if TYPE_CHECKING:
    from harness.plan import RunSpec

SUMMARY_METRIC = "top1_val"


@dataclass(frozen=True)
class Report:
    folder: Path
    table_md: str
    # published.md's (where the suite lists a paper's numbers), then the method
    # families' (``harness.report.extras``)
    sections: tuple[Section, ...]
    runs: pd.DataFrame
    comparisons: pd.DataFrame


def build_report(cfg: DictConfig, plan: list[RunSpec]) -> Report:
    """Read the plan's records and write every report file (only those that changed)."""
    suite_dir = Path(cfg.results) / cfg.suite
    out = suite_dir / "report"
    runs, history = load_runs(suite_dir, plan, cache_dir=out)
    runs = final_errors(runs, history, cfg.report.last_k)
    methods = list(dict.fromkeys(spec.method for spec in plan))
    comparisons = compare(runs, methods, resamples=cfg.report.resamples)
    tested = bool((comparisons["seed"] == "all").any())
    # data.holdout was checked by the config (harness.data.splits.holdout_key): 0 or more
    holdout = "0" if not cfg.data.holdout else str(cfg.data.holdout)
    text = caption(cfg.suite, cfg.report.last_k, cfg.report.alpha, tested, holdout)
    blocks = table_blocks(runs, comparisons, methods, cfg.report.alpha)
    validation = holdout != "0"
    table_md = render_markdown(blocks, text, validation)
    _write(out / "table.md", table_md)
    tex = render_latex(blocks, text, f"tab:{cfg.suite}-errors", validation)
    _write(out / "table.tex", tex)
    _write(out / "stats.csv", _csv_text(comparisons))
    figures: list[Path] = []
    if cfg.report.plots:
        from harness.report.plots import all_plots  # matplotlib is slow to import

        figures = all_plots(runs, history, comparisons, methods, out)
    extras = report_extras(ExtraInputs(runs, history, suite_dir, methods, out, cfg.report.plots))
    figures += extras.figures
    searched, search_figures = search_section(cfg, suite_dir, out, cfg.report.plots)
    figures += search_figures
    sections = _test_set(runs, methods) + searched
    sections += _published(cfg, runs, out) + _claims(cfg, runs, out) + extras.sections
    summary_md = summary(cfg, runs, comparisons, methods, sections, figures)
    _write(out / "summary.md", summary_md)
    _write(out / "index.html", render_page(cfg.suite, table_md, summary_md, figures))
    return Report(out, table_md, sections, runs, comparisons)


TEST_COLUMNS = (
    ("top1_test", "top-1 test"),
    ("top5_test", "top-5 test"),
    ("dense_top1_test", "dense top-1 test"),
    ("dense_top5_test", "dense top-5 test"),
)


def _test_set(runs: pd.DataFrame, methods: list[str]) -> tuple[Section, ...]:
    """With a validation split, the official test set's errors of the final models
    (read once per run, never used to choose anything), mean ± std over seeds; a
    method whose seeds are not all done shows dashes, as in the table."""
    columns = [(key, title) for key, title in TEST_COLUMNS if key in runs.columns]
    if not columns:
        return ()
    lines = [
        "The official test set, evaluated once by each run's final model (the table's "
        "validation columns are what training and any search saw); mean ± std over seeds.",
        "",
        "| labels | method | seeds | " + " | ".join(title for _, title in columns) + " |",
        "|--:|:--|--:|" + "--:|" * len(columns),
    ]
    for (labels, method), group in runs.groupby(["labels", "method"], sort=False):
        if method not in methods:
            continue
        complete = bool((group["status"] == "done").all())
        cells = []
        for key, _ in columns:
            values = group[key].to_numpy(dtype=float, na_value=np.nan)
            if not complete or np.isnan(values).any():
                cells.append(MISSING_MD)
                continue
            mean, std = mean_std(values)
            cells.append(f"{mean:.2f} ± {std:.2f}")
        seeds = seeds_text(group["status"])
        lines.append(f"| {labels} | {method} | {seeds} | " + " | ".join(cells) + " |")
    return (Section("Test set (final models, read once)", "test set", "\n".join(lines)),)


def _published(cfg: DictConfig, runs: pd.DataFrame, out: Path) -> tuple[Section, ...]:
    """published.md and published.csv, where the suite lists a paper's numbers; their
    section for summary.md and the screen."""
    if not cfg.published:
        for name in ("published.md", "published.csv"):  # an earlier report's
            (out / name).unlink(missing_ok=True)
        return ()
    table = published_table(cfg.published, runs)
    markdown = published_markdown(table, cfg.report.last_k, cfg.published, runs)
    _write(out / "published.md", f"# {cfg.suite}: {PUBLISHED_TITLE.lower()}\n\n{markdown}")
    _write(out / "published.csv", _csv_text(table))
    return (Section(PUBLISHED_TITLE, PUBLISHED_TITLE.lower(), markdown),)


def _claims(cfg: DictConfig, runs: pd.DataFrame, out: Path) -> tuple[Section, ...]:
    """claims.csv, where the suite lists a paper's claims; the checklist for summary.md
    and the screen."""
    if not cfg.claims:
        (out / "claims.csv").unlink(missing_ok=True)  # an earlier report's
        return ()
    pairs = expand_claims(cfg.claims, cfg.groups)  # checked when the config loaded
    labels_of = {i: list(claim.labels) for i, claim in enumerate(cfg.claims)}
    table = claim_table(pairs, labels_of, runs, cfg.report.alpha)
    _write(out / "claims.csv", _csv_text(table))
    return (Section(CLAIMS_TITLE, CLAIMS_TITLE.lower(), claims_markdown(table, cfg.report.alpha)),)


def _write(path: Path, text: str) -> None:
    atomic_write_if_changed(path, text.encode())


def _csv_text(frame: pd.DataFrame, float_format: str = "%.6g") -> str:
    """``frame.to_csv(index=False, float_format=...)``, the same text: the floats are
    formatted first in one pass per column (pandas checks each value for nan
    through four calls: a fifth of a warm report's time at 50,000 rows), and
    the rows go straight to a ``csv.writer`` set up as pandas sets up its own;
    pandas writes any other frame (a column of other objects, labels that are
    not strings)."""
    columns = [_csv_column(column, float_format) for _, column in frame.items()]
    if any(c is None for c in columns) or not all(isinstance(n, str) for n in frame.columns):
        return _pandas_csv_text(frame, float_format)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator=os.linesep, quoting=csv.QUOTE_MINIMAL)
    writer.writerow(frame.columns)
    writer.writerows(zip(*columns, strict=True))
    return buffer.getvalue()


def _csv_column(column: pd.Series, float_format: str) -> list | None:
    """One column's cells as pandas' ``to_csv`` writes them (nan: empty), or None
    for a column it writes another way."""
    if column.dtype == np.float64:
        return [float_format % v if v == v else "" for v in column.tolist()]
    if column.dtype.kind in "iu" or column.dtype == np.bool_:
        return column.tolist()  # the writer's str(): what pandas writes
    if not pd.api.types.is_string_dtype(column.dtype):
        return None
    values = column.tolist()
    if all(type(v) is str for v in values):
        return values
    if all(type(v) is str or _missing(v) for v in values):
        return [v if type(v) is str else "" for v in values]
    return None


def _missing(value: object) -> bool:
    """What pandas writes as an empty cell among strings."""
    if value is None or value is pd.NA:
        return True
    return isinstance(value, float) and math.isnan(value)


def _pandas_csv_text(frame: pd.DataFrame, float_format: str) -> str:
    columns = {
        name: [float_format % v if v == v else "" for v in column.tolist()]
        if column.dtype == np.float64
        else column
        for name, column in frame.items()
    }
    return pd.DataFrame(columns, index=frame.index).to_csv(index=False)


def summary(
    cfg: DictConfig,
    runs: pd.DataFrame,
    comparisons: pd.DataFrame,
    methods: list[str],
    sections: tuple[Section, ...],
    figures: list[Path],
) -> str:
    """summary.md: which methods beat the baseline where, by how much, how sure."""
    counts = runs["status"].value_counts()
    state = ", ".join(f"{counts.get(s, 0)} {s}" for s in STATUSES)
    title = dict(ERROR_COLUMNS)[SUMMARY_METRIC]
    lines = [
        f"# {cfg.suite}: report",
        "",
        f"{len(runs)} runs planned: {state}.",
        "",
        f"Final errors: {title} is the median of the last {cfg.report.last_k} evaluations of "
        "each run's final stage (never the best over training); the other columns are the "
        "final model's. Tests pair each method with the baseline run of the same split and "
        "seed, and the seed is the unit of replication: the verdicts and the table's marks "
        "come from a paired t-test on the per-seed error differences, Holm-corrected across "
        f"the methods compared (alpha = {cfg.report.alpha:g}). Full table: `table.md` / "
        "`table.tex`; every test of every column: `stats.csv`, whose McNemar test (and "
        "`cond_ci_*`) pools the seeds' per-example predictions: it is conditional on the "
        "trained models (it ignores training variance), so no verdict rests on it.",
        "",
        f"## Against the baseline ({title} error)",
        "",
    ]
    pooled = (
        comparisons[(comparisons["seed"] == "all") & (comparisons["metric"] == SUMMARY_METRIC)]
        if len(comparisons)
        else pd.DataFrame()
    )
    if pooled.empty:
        lines += [_why_no_comparison(runs, methods), ""]
    else:
        lines += [
            "All numbers here are the final models' (the inputs of the tests; the table's val "
            "single-crop cells are medians of the last evaluations instead): baseline and "
            "method = mean error over seeds; difference = method − baseline in points "
            "(negative: fewer errors), the mean of the per-seed differences, with its 95% "
            "t-based CI over seeds; relative = difference / baseline error; p = paired t-test "
            "on the per-seed differences, Holm-corrected; seeds better = seeds whose error "
            "is below the baseline's.",
            "",
            "| labels | method | baseline | method | difference [95% CI] | relative | p (Holm) "
            "| seeds better | verdict |",
            "|--:|:--|--:|--:|:--|--:|--:|--:|:--|",
        ]
        for _, row in pooled.iterrows():
            lines.append(
                f"| {row['labels']} | {row['method']} | {row['baseline_error']:.2f} "
                f"| {row['method_error']:.2f} | {_difference_text(row)} "
                f"| {_relative(row):+.1f}% | {_p_cell(row, cfg.report.alpha)} "
                f"| {int(row['seeds_better'])}/{int(row['seeds'])} "
                f"| {_verdict(row, cfg.report.alpha)} |"
            )
        lines += ["", "In words:", ""]
        for labels in pooled["labels"].unique():
            lines.append(f"- **{labels} labels**: " + _in_words(pooled, labels, cfg.report.alpha))
        lines += ["", *_unreachable(pooled, cfg.report.alpha)]
    missing = runs[runs["status"] != "done"]
    if len(missing):
        lines += [
            "## Runs not done (their cells are marked, not averaged over fewer seeds)",
            "",
            "| method | labels | seed | status | run id | error |",
            "|:--|--:|--:|:--|:--|:--|",
        ]
        for _, row in missing.iterrows():
            error = str(row.get("error") or "").replace("|", "/").splitlines()
            lines.append(
                f"| {row['method']} | {row['labels']} | {row['seed']} | {row['status']} "
                f"| {row['run_id']} | {error[0] if error else ''} |"
            )
        lines.append("")
    for section in sections:
        lines += [f"## {section.summary_title}", "", section.markdown, ""]
    if figures:
        lines += ["## Figures", ""]
        lines += [f"- `{p.name}`" for p in figures if p.suffix == ".png"]
        lines.append("")
    return "\n".join(lines)


def _why_no_comparison(runs: pd.DataFrame, methods: list[str]) -> str:
    if methods == [BASELINE]:
        return "No comparison: the baseline is the only method (add some with `methods=`)."
    if BASELINE not in methods:
        return "No comparison: the baseline is not among the methods."
    done = runs[runs["status"] == "done"]
    if len(done) and not any(c.startswith("hits_") for c in done.columns):
        return "No comparison: the done runs have no per-example predictions to pair."
    return "No comparison yet: no method has every planned seed done beside the baseline's."


def _difference(row: pd.Series) -> float:
    """The difference the marks test tests: the mean of the per-seed differences."""
    return row["seed_mean_difference"]


def _difference_text(row: pd.Series) -> str:
    low, high = row[f"{MARKS_TEST}_ci_low"], row[f"{MARKS_TEST}_ci_high"]
    ci = "no CI" if pd.isna(low) else f"[{low:+.2f}, {high:+.2f}]"
    return f"{_difference(row):+.2f} {ci}"


def _relative(row: pd.Series) -> float:
    base = row["baseline_error"]
    return 100.0 * _difference(row) / base if base else float("nan")


def _testable(row: pd.Series) -> bool:
    """Whether the marks test can say anything with this row's seed count."""
    return not pd.isna(smallest_p(MARKS_TEST, int(row["seeds"])))


def _p_cell(row: pd.Series, alpha: float) -> str:
    """The p column: words, never a made-up p, where the test could not run."""
    if not _testable(row):
        return f"needs ≥ {seeds_needed(MARKS_TEST, alpha)} seeds"
    return fmt_p(row[f"{MARKS_TEST}_p_holm"])


def _verdict(row: pd.Series, alpha: float) -> str:
    if not _testable(row):
        return f"not testable with {_count(int(row['seeds']), 'seed')}"
    if not row[f"{MARKS_TEST}_p_holm"] < alpha:
        return "no significant difference"
    return "better" if _difference(row) < 0 else "worse"


def _in_words(pooled: pd.DataFrame, labels: str, alpha: float) -> str:
    rows = pooled[pooled["labels"] == labels]
    parts = []
    for verdict in ("better", "worse"):
        chosen = [r for _, r in rows.iterrows() if _verdict(r, alpha) == verdict]
        if chosen:
            named = "; ".join(
                f"{r['method']} ({_difference(r):+.2f} points, 95% CI "
                f"[{r[f'{MARKS_TEST}_ci_low']:+.2f}, {r[f'{MARKS_TEST}_ci_high']:+.2f}], "
                f"{_relative(r):+.1f}% relative, p {_p_clause(r[f'{MARKS_TEST}_p_holm'])})"
                for r in chosen
            )
            parts.append(f"{verdict.capitalize()} than the baseline: {named}")
    rest = [r["method"] for _, r in rows.iterrows() if _verdict(r, alpha).startswith("no ")]
    if rest:
        parts.append("No significant difference: " + ", ".join(rest))
    untested = [r for _, r in rows.iterrows() if not _testable(r)]
    if untested:
        seeds = sorted({int(r["seeds"]) for r in untested})
        parts.append(
            f"Not testable with {' or '.join(map(str, seeds))} seed"
            f"{'' if seeds == [1] else 's'} (the paired t-test across seeds needs at least "
            f"{seeds_needed(MARKS_TEST, alpha)}): " + ", ".join(r["method"] for r in untested)
        )
    return ". ".join(parts) + "."


def _unreachable(pooled: pd.DataFrame, alpha: float) -> list[str]:
    """Lines on the tests in stats.csv that these seed counts cannot take below alpha
    after Holm (Wilcoxon's smallest p is 2 / 2^seeds), with the seeds they need."""
    lines = []
    family = pooled.groupby("labels")["method"].transform("size")
    for seeds in sorted(int(k) for k in pooled["seeds"].unique()):
        methods = int(family[pooled["seeds"] == seeds].max())
        floor = methods * smallest_p("wilcoxon", seeds)
        if floor < alpha:
            continue
        why = (
            "cannot test a single seed"
            if seeds < 2
            else f"cannot reach p < {alpha:g}: its smallest p is 2 / 2^{seeds}, "
            f"{min(1.0, floor):.3g} after Holm"
        )
        needed = seeds_needed("wilcoxon", alpha, methods)
        lines += [
            f"With {_count(seeds, 'seed')} and {_count(methods, 'method')} compared, "
            f"Wilcoxon's signed-rank test in `stats.csv` {why}; it would need {needed} seeds.",
            "",
        ]
    return lines


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _p_clause(p: float) -> str:
    text = fmt_p(p)
    return text.replace("<", "< ") if text.startswith("<") else f"= {text}"


def print_report(cfg: DictConfig, report: Report) -> None:
    print(f"## {cfg.suite}: error (%)\n")
    print(report.table_md)
    for section in report.sections:
        print(f"## {cfg.suite}: {section.screen_title}\n")
        print(section.markdown)
    files = (
        "index.html, table.md, table.tex, stats.csv, summary.md"
        + (", published.md, published.csv" if cfg.published else "")
        + (", claims.csv" if cfg.claims else "")
    )
    print(f"\nreport: {report.folder}/ ({files})", file=sys.stderr)
