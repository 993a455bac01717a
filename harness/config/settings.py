"""Method settings: a method family's own typed section of a suite.

A family declares its section in ``methods/<family>/settings.py``::

    @register_settings("teacher", id_exclude=("plot_every",))
    @dataclass
    class TeacherSettings:
        ema_decay: float = 0.999
        plot_every: int = 10            # pictures only: never in a run id
        def __post_init__(self): ...   # range checks: raise UsageError

The engine merges the section into the suite schema (defaults and OmegaConf's
type checks), validates it by building the dataclass (``__post_init__``), and
puts it into the run id of the methods that declare it in ``config_sections``,
less ``id_exclude`` (keys that only draw pictures). It never reads the keys.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from harness.config.schema import SuiteConfig
from harness.plugins import import_plugins

ENGINE_KEYS = frozenset(spec.name for spec in dataclasses.fields(SuiteConfig))


@dataclass(frozen=True)
class SettingsSection:
    name: str  # the suite's top-level key
    schema: type  # a dataclass: defaults and types
    id_exclude: tuple[str, ...] = ()  # keys that never enter a run id


SETTINGS: dict[str, SettingsSection] = {}


def register_settings(name: str, *, id_exclude: tuple[str, ...] = ()) -> Callable[[type], type]:
    def add(schema: type) -> type:
        if name in ENGINE_KEYS:
            raise ValueError(f"settings section {name!r} would replace the engine's own key")
        known = SETTINGS.get(name)
        if known is not None and known.schema is not schema:
            raise ValueError(f"settings section {name!r} registered twice")
        SETTINGS[name] = SettingsSection(name, schema, tuple(id_exclude))
        return schema

    return add


def method_sections() -> dict[str, SettingsSection]:
    """Every family's section, its settings modules imported."""
    import_plugins("settings")
    return dict(SETTINGS)
