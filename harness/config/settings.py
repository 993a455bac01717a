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
import math
from collections.abc import Callable
from dataclasses import dataclass

from harness.config.schema import AUGMENTATIONS, SuiteConfig
from harness.errors import UsageError, unknown
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


def check_augmentation(key: str, value: str) -> None:
    """Refuse (UsageError) a view's augmentation outside ``AUGMENTATIONS``."""
    if value not in AUGMENTATIONS:
        raise unknown(f"augmentation for {key}", value, AUGMENTATIONS)


def check_fraction(
    key: str, value: float, *, closed_low: bool = False, closed_high: bool = False
) -> None:
    """Refuse a value outside (0, 1), with either end included on request: one line
    naming the key, the value and the valid range."""
    low_ok = value >= 0.0 if closed_low else value > 0.0
    high_ok = value <= 1.0 if closed_high else value < 1.0
    if not (low_ok and high_ok):  # also catches nan
        interval = f"{'[' if closed_low else '('}0, 1{']' if closed_high else ')'}"
        raise UsageError(f"{key} must be in {interval}, got {value}")


def check_positive(key: str, value: float, *, integer: bool = False) -> None:
    """Refuse a value that is not > 0 (or not a positive integer)."""
    if integer and (isinstance(value, bool) or not float(value).is_integer()):
        raise UsageError(f"{key} must be a positive integer, got {value}")
    if not value > 0 or value != value or value == float("inf"):
        kind = "a positive integer" if integer else "a finite number > 0"
        raise UsageError(f"{key} must be {kind}, got {value}")


def check_weight(key: str, value: float) -> None:
    """Refuse a loss weight that is not a finite number >= 0."""
    if not (value >= 0 and math.isfinite(value)):  # `not >=` also catches nan
        raise UsageError(f"{key} must be a finite number >= 0, got {value}")
