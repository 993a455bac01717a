"""Suite files + command-line overrides -> one validated, typed config.

``schema`` (every engine key), ``settings`` (method families' own sections),
``load`` (merge, validate, one-line errors), ``identity`` (what a run id hashes).
"""

from harness.config.identity import file_digest, run_relevant
from harness.config.load import (
    available_suites,
    check_per_method,
    config_for,
    ffcv_installed,
    load_config,
    parse_overrides,
    suite_command,
    suite_path,
    suite_schema,
)
from harness.config.schema import (
    AUGMENTATIONS,
    DEFAULT_SUITE,
    DEFAULT_THREADS,
    LAUNCHER_NAMES,
    SUITES_DIR,
    StageSchedule,
    SuiteConfig,
)
from harness.config.settings import (
    SETTINGS,
    check_augmentation,
    check_fraction,
    check_positive,
    check_weight,
    method_sections,
    register_settings,
)

__all__ = [
    "check_per_method",
    "AUGMENTATIONS",
    "DEFAULT_SUITE",
    "DEFAULT_THREADS",
    "LAUNCHER_NAMES",
    "SETTINGS",
    "SUITES_DIR",
    "StageSchedule",
    "SuiteConfig",
    "available_suites",
    "check_augmentation",
    "check_fraction",
    "check_positive",
    "check_weight",
    "config_for",
    "ffcv_installed",
    "file_digest",
    "load_config",
    "method_sections",
    "parse_overrides",
    "register_settings",
    "run_relevant",
    "suite_command",
    "suite_path",
    "suite_schema",
]
