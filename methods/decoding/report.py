"""The decoding pathways' part of the report: the reconstruction table and grids.

A decoder's run records ``recon_rel_<pathway>_<level>`` in ``metrics.json``
(squared error / squared target on val; 1.0 = predicting zeros) and draws val
images over their reconstructions into ``samples.png``. The report names no
method, so they reach it through ``@register_report_extra``: a section in
``summary.md`` and on the screen, and ``recon_grids.png`` / ``.pdf``.
Pandas and matplotlib only (matplotlib loaded when a grid is drawn): the report
imports this module without torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
from PIL import Image

from harness.report.extras import Extra, ExtraInputs, Section, register_report_extra
from harness.report.tables import MISSING_MD, mean_std, seeds_text

if TYPE_CHECKING:
    from matplotlib.figure import Figure

SUMMARY_TITLE = "Reconstruction (val; squared error / squared target, lower is better)"
# tests/test_decoding.py splits the printed report on "relative reconstruction error"
SCREEN_TITLE = "relative reconstruction error on val, mean ± std over seeds"
COLUMN_PREFIX = "recon_rel_"


@register_report_extra
def reconstruction(inputs: ExtraInputs) -> Extra:
    """The table where some run measured reconstructions; the grids if plots are on."""
    table = recon_table(inputs.runs, inputs.methods)
    sections = () if table is None else (Section(SUMMARY_TITLE, SCREEN_TITLE, table),)
    figures = ()
    if inputs.plots:
        figures = tuple(recon_grids(inputs.runs, inputs.suite_dir, inputs.methods, inputs.out))
    return Extra(sections, figures)


def recon_table(runs: pd.DataFrame, methods: list[str]) -> str | None:
    """Markdown: the decoders' relative reconstruction error on val per level (lower
    is better; 1.0 = predicting zeros), mean ± std over seeds; None if no run has one.
    Like the error table, a group with a seed not done shows — and why."""
    columns = sorted(c for c in runs.columns if c.startswith(COLUMN_PREFIX))
    if not columns or runs[columns].isna().all().all():
        return None
    header = ["labels", "method", "seeds"] + [c.removeprefix(COLUMN_PREFIX) for c in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "--|" * len(header)]
    decoders = set(runs.loc[runs[columns].notna().any(axis=1), "method"])
    groups = runs.groupby(["labels", "method"], sort=False).indices
    for labels in runs["labels"].unique():
        for method in [m for m in methods if m in decoders]:
            if (labels, method) not in groups:
                continue
            group = runs.iloc[groups[labels, method]]
            cells = [labels, method, seeds_text(group["status"])]
            for column in columns:
                if not group["status"].eq("done").all():
                    cells.append(MISSING_MD)
                    continue
                mean, std = mean_std(group[column])
                cells.append(f"{mean:.4f} ± {std:.4f}")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def recon_grids(runs: pd.DataFrame, suite_dir: Path, methods: list[str], out: Path) -> list[Path]:
    """One ``samples.png`` per method: the last listed budget's lowest done seed."""
    # matplotlib (set to render to files there) only when drawing
    from harness.report.plots import budget_order, save_figure

    chosen = []
    budgets = {b: i for i, b in enumerate(budget_order(runs))}
    for method in methods:
        group = runs[(runs["method"] == method) & (runs["status"] == "done")]
        group = group.assign(budget=group["labels"].map(budgets))
        for _, row in group.sort_values(["budget", "seed"], ascending=[False, True]).iterrows():
            path = suite_dir / row["run_id"] / "samples.png"
            if path.is_file():
                chosen.append((f"{method} ({row['labels']} labels, seed {row['seed']})", path))
                break
    if not chosen:
        return []
    return save_figure(_draw_grids(chosen), out, "recon_grids")


def _draw_grids(chosen: list[tuple[str, Path]]) -> Figure:
    """One row per (title, samples.png); after ``harness.report.plots`` is imported."""
    import matplotlib.pyplot as plt  # slow to import: only where figures are drawn

    images = []
    for title, path in chosen:
        with Image.open(path) as image:
            images.append((title, image.convert("RGB")))
    aspect = max(image.height / image.width for _, image in images)
    fig, axes = plt.subplots(
        len(images), 1, figsize=(8, (8 * aspect + 0.35) * len(images)), squeeze=False
    )
    for ax, (title, image) in zip(axes[:, 0], images, strict=True):
        ax.imshow(image, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.suptitle("val images (top) over their reconstructions (bottom)")
    fig.tight_layout()
    return fig
