"""The report's search section: what each method's search tried and chose.

Reads the store only: each trial's run record (``<method>@<tag>`` runs: their configs
and validation curves) and ``search/<method>.chosen.json``, which ``harness.search``
writes when a method's search ends. Shows the budget every method got, the chosen
settings, every trial's validation error, and a sensitivity figure (validation error
against each searched setting), so a reader can see whether a choice was clear or a
coin toss. Nothing here imports optuna or torch.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from harness.report.extras import Section

TRIAL_MARK = "@"  # harness.method.TRIAL_MARK (not imported: it loads torch)


def trial_records(suite_dir: Path, method: str) -> list[tuple[float, dict[str, Any], str]]:
    """Every trial of ``method`` stored under ``suite_dir``, as (finish time, its config,
    run id), oldest first: what a lost study is rebuilt from, and what this section shows."""
    found = []
    for config_file in suite_dir.glob("*/config.yaml"):
        stored = yaml.safe_load(config_file.read_text())
        name = str(stored.get("run", {}).get("method", ""))
        if TRIAL_MARK in name and name.split(TRIAL_MARK, 1)[0] == method:
            metrics = config_file.parent / "metrics.json"
            when = metrics.stat().st_mtime if metrics.is_file() else math.inf
            found.append((when, stored["config"], config_file.parent.name))
    return sorted(found, key=lambda item: (item[0], item[2]))


def trial_value(run_dir: Path, last_k: int) -> float | None:
    """The median of the last ``last_k`` validation evaluations of a finished trial's
    final stage (the table's column); None if it is not done."""
    if not (run_dir / "metrics.json").is_file():
        return None
    lines = (run_dir / "history.csv").read_text().splitlines()
    header = lines[0].split(",")
    rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:]]
    last = rows[-1]["stage"]
    values = [float(r["top1_val"]) for r in rows if r["stage"] == last and r.get("top1_val")]
    return statistics.median(values[-last_k:]) if values else None


def select(config: dict[str, Any], path: str) -> Any:
    node: Any = config
    for part in path.split("."):
        node = node[part]
    return node


def chosen_file(suite_dir: Path, method: str) -> Path:
    return suite_dir / "search" / f"{method}.chosen.json"


def _text(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def search_section(
    cfg: DictConfig, suite_dir: Path, out: Path, plots: bool
) -> tuple[tuple[Section, ...], list[Path]]:
    """The section (and the sensitivity figure) for a suite that searched."""
    chosen = {
        method: json.loads(chosen_file(suite_dir, method).read_text())
        for method in cfg.search.space
        if chosen_file(suite_dir, method).is_file()
    }
    if not chosen:
        return (), []
    lines = [
        f"Every method searched got the same budget: {cfg.search.trials} trials "
        f"({cfg.search.sampler} sampler, seed {cfg.search.seed}, {cfg.search.batch} at a "
        f"time), each an ordinary run of the suite's schedule at {cfg.labels[0]} labels and "
        f"seed {cfg.seeds[0]}. A trial's value is its validation error (top-1, the median of "
        f"the last {cfg.report.last_k} evaluations): selection never reads the test set. The "
        "chosen settings then trained the table's seeds.",
        "",
    ]
    points: list[tuple[str, str, Any, float]] = []
    for method, choice in chosen.items():
        paths = list(choice["values"])
        shown = ", ".join(f"`{p}` = {_text(v)}" for p, v in choice["values"].items())
        lines += [f"**{method}**: chose {shown} ({choice['value']:.2f}% validation).", ""]
        lines += ["| trial | " + " | ".join(f"`{p}`" for p in paths) + " | validation | run |"]
        lines += ["|--:|" + "--:|" * len(paths) + "--:|:--|"]
        trials = trial_records(suite_dir, method)
        for number, (_, config, run_id) in enumerate(trials, 1):
            value = trial_value(suite_dir / run_id, cfg.report.last_k)
            values = [select(config, p) for p in paths]
            cells = " | ".join(_text(v) for v in values)
            error = "—" if value is None else f"{value:.2f}"
            if value is not None and values == list(choice["values"].values()):
                error = f"**{error}**"
            lines.append(f"| {number} | {cells} | {error} | {run_id} |")
            if value is not None:
                points += [(method, p, v, value) for p, v in zip(paths, values, strict=True)]
        lines.append("")
    figures = _sensitivity(points, cfg, out) if plots and points else []
    if figures:
        lines.append(
            "Sensitivity: `search_sensitivity.png` (validation error against each setting)."
        )
    return (Section("Search (validation split)", "search", "\n".join(lines)),), figures


def _sensitivity(
    points: list[tuple[str, str, Any, float]], cfg: DictConfig, out: Path
) -> list[Path]:
    from harness.report.plots import plt, save_figure  # matplotlib, where a figure is drawn

    panels = list(dict.fromkeys((m, p) for m, p, _, _ in points))
    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False)
    space = OmegaConf.to_container(cfg.search.space, resolve=True)
    for ax, (method, path) in zip(axes.flat, panels, strict=False):
        xs = [v for m, p, v, _ in points if (m, p) == (method, path)]
        ys = [e for m, p, _, e in points if (m, p) == (method, path)]
        numeric = all(isinstance(x, int | float) and not isinstance(x, bool) for x in xs)
        ax.scatter(xs if numeric else [str(x) for x in xs], ys, color="tab:blue")
        spec = _spec(space, method, path)
        if numeric and isinstance(spec, dict) and spec.get("log"):
            ax.set_xscale("log")
        ax.set_title(f"{method}: {path}", fontsize=9)
        ax.set_ylabel("validation top-1 error (%)")
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    fig.tight_layout()
    paths = save_figure(fig, out, "search_sensitivity")
    plt.close(fig)
    return paths


def _spec(space: Any, method: str, path: str) -> Any:
    """The space entry of a searched path (its tail below the method's section)."""
    node = space.get(method, {})
    parts = path.split(".")
    for start in range(len(parts)):
        candidate = node
        for part in parts[start:]:
            candidate = candidate.get(part) if isinstance(candidate, dict) else None
        if candidate is not None:
            return candidate
    return None
