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

A user's own package adds methods, models and datasets without touching this
repository, in one of two ways; each is one module that registers what it holds on
import (``@register_method``, ``@register_settings``, ``@register_model``,
``@register_dataset``):

- an installed package declares it as a Python entry point of the group
  ``ssl_harness.plugins`` (``[project.entry-points."ssl_harness.plugins"]
  my_methods = "my_pkg.methods"``): imported at start-up, in name order, before ours
  are listed;
- code not installed as a package is named by the ``plugins`` key
  (``plugins=[my_pkg.methods]``, or ``plugins:`` in a suite), importable from the
  working directory or ``PYTHONPATH``; every process of a run (local workers, SLURM
  jobs) imports it again from the run's config.

A plugin that fails to import stops the command with one line naming it (exit 2).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import pkgutil
import re
from collections.abc import Iterable
from functools import cache

import methods as methods_package
from harness.errors import UsageError

ENTRY_POINT_GROUP = "ssl_harness.plugins"
_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")

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
    installed_plugins()  # after ours: a user's method may build on one of them


def _failed(what: str, error: BaseException) -> UsageError:
    first = (str(error).strip().splitlines() or [""])[0]
    return UsageError(f"{what} failed to import: {type(error).__name__}: {first}")


@cache
def installed_plugins() -> tuple[str, ...]:
    """Import every module an installed package declares in the entry-point group
    ``ssl_harness.plugins`` (once per process); their names, in order."""
    found = sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)
    for entry in found:
        try:
            entry.load()
        except Exception as error:  # noqa: BLE001 - any failure of a user's code: one line
            raise _failed(
                f"plugin {entry.name!r} ({entry.value}, entry point group {ENTRY_POINT_GROUP})",
                error,
            ) from None
    return tuple(entry.name for entry in found)


def use_plugins(modules: Iterable[str]) -> None:
    """Import the modules the ``plugins`` key names (each once per process)."""
    for name in modules:
        if not isinstance(name, str) or not _MODULE_NAME.fullmatch(name):
            raise UsageError(
                f"plugins entry {name!r} is not a module name; valid: dotted Python names, "
                "e.g. plugins=[my_pkg.methods]"
            )
        try:
            importlib.import_module(name)
        except Exception as error:  # noqa: BLE001 - any failure of a user's code: one line
            raise _failed(f"plugin module {name!r} (plugins=)", error) from None
