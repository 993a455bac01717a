"""The report: tables, tests and figures from stored run records, never from logs.

``data`` (records -> one DataFrame), ``stats`` (the tests), ``compare`` (every
method against the baseline), ``tables`` (Markdown and LaTeX), ``plots``
(seaborn figures), ``extras`` (the sections and figures method families add,
through ``methods/<family>/report.py``), ``published`` (a paper's numbers beside
ours), ``build`` (writes the report folder).
Importing it loads no torch, no model and no method: it reads only the store.
``python -m harness.report`` is ``harness/report/__main__.py``.
"""

from harness.report.build import Report, build_report, print_report

__all__ = ["Report", "build_report", "print_report"]
