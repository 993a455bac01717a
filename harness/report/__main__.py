"""``python -m harness.report [suite=NAME] [key=value ...]``: tables, tests and plots.

Reads the run records of the suite's plan (the same keys as ``harness.run``
give the same runs; ``methods=`` chooses the rows) and writes
``results/<suite>/report/`` (``harness.report.build``).
"""

from __future__ import annotations

import sys
from pathlib import Path

from harness.cli import run_command
from harness.config import load_config, suite_command
from harness.errors import UsageError
from harness.plan import make_plan
from harness.report.build import build_report, print_report

COMMAND = suite_command(
    "harness.report",
    "Write results/<suite>/report/ (table.md, table.tex, stats.csv, summary.md, "
    "figures) from the stored run records of the suite's plan, and print its tables; the "
    "same keys as harness.run give the same runs, methods= chooses the rows. Reads only the "
    "store.",
)


def main(argv: list[str] | None = None) -> int:
    return run_command(COMMAND, _main, argv)


def _main(argv: list[str]) -> int:
    cfg = load_config(argv)
    plan = make_plan(cfg)
    suite_dir = Path(cfg.results) / cfg.suite
    if not any((suite_dir / spec.run_id).is_dir() for spec in plan):
        raise UsageError(
            f"no run records of suite {cfg.suite!r} under {suite_dir} for these settings "
            f"({len(plan)} runs planned); run `python -m harness.run` with the same "
            "arguments first"
        )
    report = build_report(cfg, plan)
    print_report(cfg, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
