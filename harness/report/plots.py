"""The report's figures (seaborn), each written as PNG and PDF.

- ``error_vs_labels``: final top-1 val error against the number of labeled
  images, one line per method, 95% CI over seeds (budgets with every seed done).
- ``difference_vs_baseline``: each method's top-1 val error minus the baseline's,
  the mean of the per-seed differences with its 95% t-based CI (the test behind
  the table's marks), one x position per label budget, a line at 0.
- ``seeds``: every seed's final top-1 val error as a point, per method, one
  panel per label budget, with the mean and its 95% CI.
- ``learning_curves``: top-1 val error over training epochs from history.csv,
  mean ± 1.96 standard errors over seeds, one panel per label budget and stage.
- ``learning_curves_steps``: the same errors on one axis per label budget, the
  classifier's training steps (``classifier_steps``), so a method trained in one
  stage is seen beside the baseline's step 1 and fine-tune at equal steps.

Method families add their own figures (``harness.report.extras``), written with
``save_figure``. Files are written only when their bytes change (PDFs carry no
creation date), so rerunning a finished suite leaves them untouched.
"""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no screen: render to files only
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from harness.report.compare import MARKS_TEST  # noqa: E402
from harness.report.data import ERROR_COLUMNS  # noqa: E402
from harness.store import atomic_write_if_changed  # noqa: E402

_METADATA = {"pdf": {"CreationDate": None}, "png": {}}


def save_figure(fig: plt.Figure, out: Path, name: str) -> list[Path]:
    """``out/<name>.png`` and ``.pdf`` (only where their bytes changed); closes
    ``fig``. Returns both paths."""
    written = []
    for kind in ("png", "pdf"):
        buffer = io.BytesIO()
        fig.savefig(buffer, format=kind, dpi=150, bbox_inches="tight", metadata=_METADATA[kind])
        path = out / f"{name}.{kind}"
        atomic_write_if_changed(path, buffer.getvalue())
        written.append(path)
    plt.close(fig)
    return written


def budget_order(runs: pd.DataFrame) -> list[str]:
    """The label budgets in plan order (as the tables list them)."""
    return list(dict.fromkeys(runs["labels"]))


def error_vs_labels(runs: pd.DataFrame, methods: list[str], out: Path) -> list[Path]:
    # a (budget, method) with a seed not done is left out, not averaged over fewer seeds
    complete = runs.groupby(["labels", "method"])["status"].transform(lambda s: s.eq("done").all())
    done = runs[complete]
    if done.empty or "labeled" not in done:
        return []
    fig, ax = plt.subplots(figsize=(6, 4))
    sns.lineplot(
        data=done,
        x="labeled",
        y="final_top1_val",
        hue="method",
        hue_order=[m for m in methods if m in set(done["method"])],
        errorbar=("ci", 95),
        marker="o",
        seed=0,
        ax=ax,
    )
    if done["labeled"].nunique() > 1 and done["labeled"].max() / done["labeled"].min() >= 10:
        ax.set_xscale("log")
    ax.set(xlabel="labeled images", ylabel="top-1 val error (%)")
    ax.set_title("Final error vs labels (mean, 95% CI over seeds)")
    return save_figure(fig, out, "error_vs_labels")


def seeds(runs: pd.DataFrame, methods: list[str], out: Path) -> list[Path]:
    done = runs[runs["status"] == "done"]
    if done.empty:
        return []
    budgets = [b for b in budget_order(runs) if b in set(done["labels"])]
    order = [m for m in methods if m in set(done["method"])]
    fig, axes = plt.subplots(
        1, len(budgets), figsize=(1.2 + 0.9 * len(order) * len(budgets), 4), squeeze=False
    )
    saved = np.random.get_state()
    np.random.seed(0)  # stripplot's jitter draws from numpy's global RNG: same figure each time
    for ax, budget in zip(axes[0], budgets, strict=True):
        data = done[done["labels"] == budget]
        sns.stripplot(data=data, x="method", y="final_top1_val", order=order, ax=ax, alpha=0.6)
        sns.pointplot(
            data=data,
            x="method",
            y="final_top1_val",
            order=order,
            errorbar=("ci", 95),
            seed=0,
            color="black",
            markers="_",
            linestyles="none",
            ax=ax,
        )
        ax.set(title=f"{budget} labels", xlabel="", ylabel="top-1 val error (%)")
        ax.tick_params(axis="x", rotation=60)
    np.random.set_state(saved)
    return save_figure(fig, out, "seeds")


def last_third_limits(x: pd.Series, y: pd.Series) -> tuple[float, float] | None:
    """y-axis limits that show the values of the last third of the x range, padded: the
    early epochs (errors of 80-90%) would otherwise squeeze the end of training, where
    the methods differ, into one line. None where there is nothing to show."""
    known = y.notna() & x.notna()
    x, y = x[known], y[known]
    if x.empty:
        return None
    cut = x.min() + 2 / 3 * (x.max() - x.min())
    tail = y[x >= cut]
    low, high = float(tail.min()), float(tail.max())
    pad = max(0.15 * (high - low), 0.5)
    return max(0.0, low - pad), min(100.0, high + pad)


def _focus(ax: plt.Axes, data: pd.DataFrame, x: str) -> None:
    limits = last_third_limits(data[x], data["top1_val"])
    if limits is not None:
        ax.set_ylim(*limits)


def learning_curves(history: pd.DataFrame, methods: list[str], out: Path) -> list[Path]:
    """One panel per (budget, stage that evaluates val), x = epoch within the stage:
    a stage copied from another run (a method whose first step is the baseline's
    pretrain) has no rows of its own, so stages line up only stage by stage."""
    evaluated = history.dropna(subset=["top1_val"])
    if evaluated.empty:
        return []
    budgets = budget_order(evaluated)
    stages = list(dict.fromkeys(evaluated["stage"]))
    order = [m for m in methods if m in set(evaluated["method"])]
    fig, axes = plt.subplots(
        len(budgets),
        len(stages),
        figsize=(4.2 * len(stages), 3.3 * len(budgets)),
        squeeze=False,
    )
    for row, budget in zip(axes, budgets, strict=True):
        for ax, stage in zip(row, stages, strict=True):
            data = evaluated[(evaluated["labels"] == budget) & (evaluated["stage"] == stage)]
            sns.lineplot(
                data=data,
                x="epoch",
                y="top1_val",
                hue="method",
                hue_order=order,
                # normal-theory band: a bootstrap per epoch and method is most of the
                # report's time at 10,000 runs, for a band nobody reads to the decimal
                errorbar=("se", 1.96),
                marker="o",
                legend=ax is axes[0][-1],
                ax=ax,
            )
            ax.set(title=f"{budget} labels, {stage}", xlabel="epoch", ylabel="top-1 val error (%)")
            _focus(ax, data, "epoch")
    fig.tight_layout()
    return save_figure(fig, out, "learning_curves")


def classifier_steps(history: pd.DataFrame) -> pd.DataFrame:
    """The rows with a val error, with ``classifier_step``: the classifier's training
    steps when it was evaluated, counted across stages.

    A run's ``step`` counts every step of its own stages. Here a stage's own steps
    start at 0 where the run's previous stage ended; stages without val evaluations
    (training of parts other than the classifier, which leave it as it was) add
    nothing; and an evaluated stage starts after every evaluated stage that precedes
    it in any run, each as long as its longest run. So the fine-tune of a method that
    copies the baseline's step 1 (and has no rows of it) starts where that step 1
    ends, and a method whose one stage trains the classifier throughout starts at 0."""
    rows = history[history["step"] >= 0]
    if rows.empty:
        return rows.assign(classifier_step=pd.Series(dtype=float))
    run_ids = rows["run_id"].to_numpy()
    stages = rows["stage"].to_numpy()
    steps = rows["step"].to_numpy(float)
    new_run = np.r_[True, run_ids[1:] != run_ids[:-1]]
    new_stage = new_run | np.r_[True, stages[1:] != stages[:-1]]
    # the step the row's stage started at: the run's last step before it, 0 first
    before = np.where(new_run, 0.0, np.r_[0.0, steps[:-1]])
    start = pd.Series(np.where(new_stage, before, np.nan)).ffill().to_numpy()
    own = steps - start
    evaluated = set(rows.loc[rows["top1_val"].notna(), "stage"])
    length = pd.Series(own).groupby(stages).max()
    preceding: dict[str, set[str]] = {stage: set() for stage in evaluated}
    for _, order in rows[rows["stage"].isin(evaluated)].groupby("run_id", sort=False)["stage"]:
        seen: list[str] = []
        for stage in dict.fromkeys(order):
            preceding[stage].update(seen)
            seen.append(stage)
    offset = {stage: sum(length[s] for s in preceding[stage]) for stage in evaluated}
    offsets = pd.Series(stages).map(offset).to_numpy(float)
    placed = rows.assign(classifier_step=offsets + own)
    return placed[placed["top1_val"].notna()]


def learning_curves_steps(history: pd.DataFrame, methods: list[str], out: Path) -> list[Path]:
    """One panel per budget, x = the classifier's training steps across stages."""
    placed = classifier_steps(history)
    if placed.empty:
        return []
    budgets = budget_order(placed)
    order = [m for m in methods if m in set(placed["method"])]
    fig, axes = plt.subplots(1, len(budgets), figsize=(5.5 * len(budgets), 3.8), squeeze=False)
    for ax, budget in zip(axes[0], budgets, strict=True):
        data = placed[placed["labels"] == budget]
        sns.lineplot(
            data=data,
            x="classifier_step",
            y="top1_val",
            hue="method",
            hue_order=order,
            errorbar=("se", 1.96),  # as learning_curves
            legend=ax is axes[0][-1],
            ax=ax,
        )
        ax.set(
            title=f"{budget} labels",
            xlabel="classifier training steps (all stages)",
            ylabel="top-1 val error (%)",
        )
        _focus(ax, data, "classifier_step")
    fig.tight_layout()
    return save_figure(fig, out, "learning_curves_steps")


def difference_vs_baseline(
    comparisons: pd.DataFrame, methods: list[str], out: Path, metric: str = "top1_val"
) -> list[Path]:
    """Per budget, each method's error minus the baseline's with its 95% CI, as the
    summary's table gives them (the pooled rows of ``stats.csv``). A method whose
    seeds are too few for a CI is a point without bars."""
    pooled = comparisons[(comparisons["seed"] == "all") & (comparisons["metric"] == metric)]
    if pooled.empty:
        return []
    budgets = budget_order(pooled)
    order = [m for m in methods if m in set(pooled["method"])]
    colors = dict(zip(methods, sns.color_palette(n_colors=len(methods)), strict=True))
    width = min(0.6 / len(order), 0.15)  # the methods side by side at each budget
    fig, ax = plt.subplots(figsize=(max(5.0, 2.0 + 0.25 * len(order) * len(budgets)), 4))
    for i, method in enumerate(order):
        rows = pooled[pooled["method"] == method].set_index("labels").reindex(budgets)
        x = np.arange(len(budgets)) + (i - (len(order) - 1) / 2) * width
        mean = rows["seed_mean_difference"].to_numpy(float)
        low = rows[f"{MARKS_TEST}_ci_low"].to_numpy(float)
        high = rows[f"{MARKS_TEST}_ci_high"].to_numpy(float)
        bars = np.nan_to_num(np.stack([mean - low, high - mean]))  # no CI: no bar
        ax.errorbar(x, mean, yerr=bars, fmt="o", capsize=3, color=colors[method], label=method)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(np.arange(len(budgets)), budgets)
    ax.set_xlim(-0.5, len(budgets) - 0.5)
    title = dict(ERROR_COLUMNS)[metric]
    ax.set(xlabel="labels", ylabel=f"{title} error − baseline's (points)")
    ax.set_title("Difference to the baseline (mean over seeds, 95% CI)")
    # beside the axes: inside, a legend of many methods hides some of their bars
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return save_figure(fig, out, "difference_vs_baseline")


def all_plots(
    runs: pd.DataFrame,
    history: pd.DataFrame,
    comparisons: pd.DataFrame,
    methods: list[str],
    out: Path,
) -> list[Path]:
    sns.set_theme(style="whitegrid", context="paper")
    return (
        error_vs_labels(runs, methods, out)
        + difference_vs_baseline(comparisons, methods, out)
        + seeds(runs, methods, out)
        + learning_curves(history, methods, out)
        + learning_curves_steps(history, methods, out)
    )
