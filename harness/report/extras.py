"""What a method family adds to the report, without the report naming it.

The report knows only the columns every run has (errors, per-example
correctness, history). A family that measures more (its own numbers in
``metrics.json``, its own pictures in the run folder) shows them through
``methods/<family>/report.py``: each function registered there with
``@register_report_extra`` receives the report's inputs (``ExtraInputs``) and
returns an ``Extra``: Markdown sections, each printed after the error table and
written into ``summary.md``, and the figures it wrote. ``report_extras`` imports
those modules (``harness.plugins``, role ``report``) only when a report is
built, so ``import harness.report`` loads none of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from harness.plugins import import_plugins


@dataclass(frozen=True)
class Section:
    """One Markdown section: under ``summary_title`` in summary.md and under
    ``## <suite>: <screen_title>`` on the screen."""

    summary_title: str
    screen_title: str
    markdown: str


@dataclass(frozen=True)
class ExtraInputs:
    """What the report has read and where it writes: the runs (one row per planned
    run, with ``final_*`` errors and every number of its ``metrics.json``), the
    history (one row per epoch), the suite's run folders, the methods in plan
    order, the report folder, and whether figures are wanted (``report.plots``)."""

    runs: pd.DataFrame
    history: pd.DataFrame
    suite_dir: Path
    methods: list[str]
    out: Path
    plots: bool


@dataclass(frozen=True)
class Extra:
    sections: tuple[Section, ...] = ()
    figures: tuple[Path, ...] = ()  # written under ``out``; PNGs are listed in summary.md


ReportExtra = Callable[[ExtraInputs], Extra]
_EXTRAS: dict[str, ReportExtra] = {}


def register_report_extra(function: ReportExtra) -> ReportExtra:
    """Decorator: call ``function`` on every report. Keyed by its qualified name, so
    importing its module twice registers it once."""
    _EXTRAS[f"{function.__module__}.{function.__qualname__}"] = function
    return function


def report_extras(inputs: ExtraInputs) -> Extra:
    """Every registered extra's sections and figures, in registration order (the
    families' name order)."""
    import_plugins("report")
    sections: list[Section] = []
    figures: list[Path] = []
    for extra in _EXTRAS.values():
        result = extra(inputs)
        sections += result.sections
        figures += result.figures
    return Extra(tuple(sections), tuple(figures))
