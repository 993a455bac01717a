"""The paper's error table as Markdown and LaTeX, built once as cells.

Both renderings come from the same ``Block`` objects, so they show the same
numbers by construction (and a test checks it). Layout as in the paper: method
rows; top-1 and top-5 error on train and val with a single crop, then top-1 and
top-5 val dense; one block per label budget; mean ± std over seeds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from harness.report.compare import MARKS_TEST
from harness.report.data import ERROR_COLUMNS

MARK_MD = "†"
MARK_TEX = r"\textsuperscript{\dag}"
MISSING_MD = "—"
MISSING_TEX = "---"


@dataclass(frozen=True)
class Cell:
    mean: float | None  # None: not every planned seed is done, or the model has no such column
    std: float | None
    bold: bool = False
    mark: bool = False  # differs significantly from the baseline


@dataclass(frozen=True)
class Row:
    method: str
    seeds: str  # "3", or "2/3 (1 failed)" when some are not done
    cells: tuple[Cell, ...]


@dataclass(frozen=True)
class Block:
    labels: str
    rows: tuple[Row, ...]


def seeds_text(statuses: pd.Series) -> str:
    done = int((statuses == "done").sum())
    if done == len(statuses):
        return str(done)
    counts = statuses[statuses != "done"].value_counts()
    why = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    return f"{done}/{len(statuses)} ({why})"


def table_blocks(
    runs: pd.DataFrame, comparisons: pd.DataFrame, methods: list[str], alpha: float
) -> list[Block]:
    """The cells of the table: values, bold (lowest mean shown per column and block),
    marks (``MARKS_TEST`` across seeds, Holm-corrected p < alpha; never the pooled
    McNemar test, which ignores training variance)."""
    significant = set()
    if len(comparisons):
        pooled = comparisons[comparisons["seed"] == "all"]
        hit = pooled[pooled[f"{MARKS_TEST}_p_holm"] < alpha]
        significant = set(zip(hit["labels"], hit["method"], hit["metric"], strict=True))
    blocks = []
    groups = runs.groupby(["labels", "method"], sort=False).indices
    # the columns as arrays, each group's rows taken from them: a group as a frame
    # (``runs.iloc``) copies every column of the runs, their packed correctness too
    status = runs["status"]
    done = (status == "done").to_numpy()
    finals = [
        runs[f"final_{key}"].to_numpy(dtype=float, na_value=np.nan) for key, _ in ERROR_COLUMNS
    ]
    for labels in runs["labels"].unique():
        values: dict[str, list[tuple[float, float] | None]] = {}
        seeds: dict[str, str] = {}
        for method in methods:
            if (labels, method) not in groups:
                continue
            rows = groups[labels, method]
            seeds[method] = seeds_text(status.iloc[rows])
            complete = bool(done[rows].all())
            # a column the model does not offer (an MLP's dense error) is missing, as
            # an unfinished seed is: never a number made of NaNs
            values[method] = [
                mean_std(final[rows]) if complete and not np.isnan(final[rows]).any() else None
                for final in finals
            ]
        best = []
        for i in range(len(ERROR_COLUMNS)):
            shown = [round(v[i][0], 2) for v in values.values() if v[i] is not None]
            best.append(min(shown) if shown else None)
        rows = []
        for method, cells in values.items():
            row_cells = []
            for i, (key, _) in enumerate(ERROR_COLUMNS):
                if cells[i] is None:
                    row_cells.append(Cell(None, None))
                    continue
                mean, std = cells[i]
                row_cells.append(
                    Cell(
                        mean,
                        std,
                        bold=len(values) > 1 and round(mean, 2) == best[i],
                        mark=(labels, method, key) in significant,
                    )
                )
            rows.append(Row(method, seeds[method], tuple(row_cells)))
        blocks.append(Block(labels, tuple(rows)))
    return blocks


def mean_std(values: pd.Series | np.ndarray) -> tuple[float, float]:
    """Mean and sample std over seeds (std 0 for one value), nan skipped as pandas
    skips it. On the numpy values: the same bits as pandas' reductions at a fifth
    of the cost, which counts at one call per cell of thousands of groups."""
    if isinstance(values, np.ndarray):
        kept = values.astype(float)
    else:
        kept = values.to_numpy(dtype=float, na_value=np.nan)
    kept = kept[~np.isnan(kept)]
    mean = float(kept.mean()) if len(kept) else math.nan
    if len(values) <= 1:
        return mean, 0.0
    return mean, float(kept.std(ddof=1)) if len(kept) > 1 else math.nan


def caption(suite: str, last_k: int, alpha: float, tested: bool, holdout: str = "0") -> str:
    """The table's caption; names the test behind the marks when there are any, and
    with a validation split (``holdout``) what its columns read."""
    text = (
        f"Error (%) of suite {suite}: top-1 and top-5 on the labeled training images and on "
        "val, mean ± std over seeds, one block per label budget. Val single-crop errors are "
        f"the median of the last {last_k} evaluations of the final stage; the other columns "
        "are the final model's. Bold: the lowest mean per column and budget. "
    )
    if holdout != "0":
        text = text.replace(" val", " validation").replace("Val ", "Validation ")
        text += (
            f"Validation: the split of labeled training images held out per seed "
            f"(data.holdout={holdout}), disjoint from the labels and the pool; the official "
            "test set is read once, by the final model (the summary's test-set section). "
        )
    if tested:
        text += (
            f"{MARK_MD}: differs from the baseline at p < {alpha:g} by a paired t-test on the "
            "per-seed differences of the final models' errors (the seed is the unit of "
            "replication; it needs at least 2 seeds), Holm-corrected across the methods "
            "compared per column and budget. "
        )
    return text + (
        f"{MISSING_MD}: not every planned seed is done (the seeds column says why), or the "
        "model does not offer the column (dense evaluation)."
    )


def _cell_text(cell: Cell, pm: str, bold: str, mark: str, missing: str) -> str:
    """One cell in either syntax: ``bold`` is a format with one ``{}``."""
    if cell.mean is None or cell.std is None:
        return missing
    text = f"{cell.mean:.2f}{pm}{cell.std:.2f}"
    return (bold.format(text) if cell.bold else text) + (mark if cell.mark else "")


def column_titles(validation: bool) -> list[str]:
    """The error columns' titles; with a validation split its columns say so."""
    titles = [title for _, title in ERROR_COLUMNS]
    return [t.replace(" val", " validation") for t in titles] if validation else titles


def render_markdown(blocks: list[Block], caption_text: str, validation: bool = False) -> str:
    header = ["method", "seeds", *column_titles(validation)]
    lines = [caption_text, ""]
    for block in blocks:
        lines += [f"### {block.labels} labels", ""]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|:--|--:|" + "--:|" * len(ERROR_COLUMNS))
        for row in block.rows:
            cells = [_cell_text(c, " ± ", "**{}**", MARK_MD, MISSING_MD) for c in row.cells]
            lines.append("| " + " | ".join([row.method, row.seeds, *cells]) + " |")
        lines.append("")
    return "\n".join(lines)


def _tex_escape(text: str) -> str:
    for char, escaped in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&")):
        text = text.replace(char, escaped)
    for char in "#$":
        text = text.replace(char, "\\" + char)
    for char in "<>":  # text-mode < and > print as other glyphs in LaTeX's default font
        text = text.replace(char, f"${char}$")
    return text.replace("±", r"$\pm$").replace("†", r"\dag{}")


def render_latex(
    blocks: list[Block], caption_text: str, label: str, validation: bool = False
) -> str:
    """A ``table`` environment scaled to the text width; needs ``\\usepackage{booktabs}``
    and ``\\usepackage{graphicx}`` in the preamble."""
    width = 2 + len(ERROR_COLUMNS)
    val = "validation" if validation else "val"
    lines = [
        "% generated by python -m harness.report; needs \\usepackage{booktabs,graphicx}",
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        r"\setlength{\tabcolsep}{4pt}",
        rf"\caption{{{_tex_escape(caption_text)}}}",
        rf"\label{{{label}}}",
        r"\resizebox{\linewidth}{!}{%",
        r"\begin{tabular}{l r " + "c" * len(ERROR_COLUMNS) + "}",
        r"\toprule",
        r" & & \multicolumn{4}{c}{single crop} & \multicolumn{2}{c}{dense} \\",
        r"\cmidrule(lr){3-6} \cmidrule(lr){7-8}",
        rf"method & seeds & top-1 train & top-1 {val} & top-5 train & top-5 {val} "
        rf"& top-1 {val} & top-5 {val} \\",
    ]
    for block in blocks:
        lines.append(r"\midrule")
        lines.append(
            rf"\multicolumn{{{width}}}{{l}}{{\textit{{{_tex_escape(block.labels)} labels}}}} \\"
        )
        for row in block.rows:
            cells = [
                _cell_text(c, r" $\pm$ ", r"\textbf{{{}}}", MARK_TEX, MISSING_TEX)
                for c in row.cells
            ]
            lines.append(
                " & ".join([_tex_escape(row.method), _tex_escape(row.seeds), *cells]) + r" \\"
            )
    lines += [r"\bottomrule", r"\end{tabular}}", r"\end{table}", ""]
    return "\n".join(lines)


def fmt_p(p: float) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "n/a"
    return f"{p:.2g}" if p >= 1e-4 else "<1e-4"
