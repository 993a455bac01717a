"""Where the engine finds its plugins: the modules of the ``methods`` package.

A method family is one module (``methods/baseline.py``) or one package under
``methods/``. A package splits what it registers by weight, so that each part of
the harness imports only what it needs:

- ``methods/<family>/settings.py``: its typed suite section (``@register_settings``;
  dataclasses only), imported by the config loader.
- ``methods/<family>/method.py``: its methods (``@register_method``; torch).
- ``methods/<family>/report.py``: its additions to the report
  (``@register_report_extra``; pandas and matplotlib, no torch).

The package's ``__init__.py`` holds only its docstring. A single-module family
(``methods/fixmatch.py``) holds its methods and its settings section together: it
is imported for both roles (it loads torch), never for the report. Families are
imported in name order; ``methods=all`` lists the baseline first, then the others
in registration order.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from functools import cache

import methods as methods_package

ROLES = ("settings", "method", "report")


def _families() -> list[tuple[str, bool]]:
    """(name, is a package) of every module under ``methods/``, in name order."""
    found = pkgutil.iter_modules(methods_package.__path__)
    return sorted((info.name, info.ispkg) for info in found if not info.name.startswith("_"))


@cache
def import_plugins(role: str) -> None:
    """Import every family's module of ``role`` (settings | method | report); each
    registers itself on import. A single-module family counts as ``method`` and
    ``settings``."""
    if role not in ROLES:
        raise ValueError(f"unknown plugin role {role!r}; valid: {', '.join(ROLES)}")
    for name, is_package in _families():
        if not is_package:
            if role in ("method", "settings"):
                importlib.import_module(f"methods.{name}")
            continue
        module = f"methods.{name}.{role}"
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module)
