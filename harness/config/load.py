"""Suite files + command-line overrides -> one validated, typed config.

A suite is a YAML file in ``suites/``; the command line adds ``key=value``
overrides (dotted keys for nesting, lists in brackets). The schema below is an
OmegaConf structured config, so merging and type checks are OmegaConf's; this
module only turns its exceptions into one-line ``UsageError``s that name the
bad key or value and what would have been valid.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from harness.claims import expand_claims
from harness.cli import Command, key_values
from harness.columns import ERROR_METRICS
from harness.config.identity import EXECUTION_KEYS
from harness.config.schema import (
    DECAY_SCOPES,
    DEFAULT_SUITE,
    LAUNCHER_NAMES,
    LOGGERS,
    LR_SCHEDULES,
    SUITES_DIR,
    Claim,
    PublishedResult,
    StageSchedule,
    SuiteConfig,
)
from harness.config.settings import method_sections
from harness.data import budget_key
from harness.data.splits import holdout_key
from harness.errors import UsageError, unknown
from harness.method import TRIAL_MARK, available_methods
from harness.plugins import use_plugins

_LIST_KEYS = ("methods", "labels", "seeds", "logger", "plugins")
# keys a `per_method` entry may not set: they plan, launch, log or report the whole suite
# (every key a run id leaves out, and the evaluation's batch size)
PER_METHOD_REFUSED = (*EXECUTION_KEYS, "eval")


def suite_schema() -> type:
    """``SuiteConfig`` with every method family's settings section added (a plugin
    imported later adds its own)."""
    return _schema_with(tuple(method_sections()))


@cache
def _schema_with(names: tuple[str, ...]) -> type:
    sections = method_sections()
    extra = [
        (name, sections[name].schema, dataclasses.field(default_factory=sections[name].schema))
        for name in names
    ]
    return dataclasses.make_dataclass("Suite", extra, bases=(SuiteConfig,))


def suite_command(module: str, summary: str) -> Command:
    """The ``--help`` of an entry point that reads a suite: its keys from the schema."""
    return Command(
        usage=f"python -m {module} [suite=NAME] [key=value ...]",
        summary=summary,
        keys=[
            (f"suite={DEFAULT_SUITE}", "a suite in suites/ or a path to a YAML file of your own")
        ],
        schema=suite_schema,
    )


def available_suites() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.yaml"))


def suite_path(name: str) -> Path:
    """A suite name from ``suites/``, or a path to a YAML file of one's own."""
    if name.endswith((".yaml", ".yml")):
        path = Path(name)
        if not path.is_file():
            raise UsageError(f"suite file {name!r} does not exist")
        return path
    path = SUITES_DIR / f"{name}.yaml"
    if not path.is_file():
        raise unknown("suite", name, available_suites())
    return path


def parse_overrides(argv: list[str]) -> list[str]:
    """Check that every argument is ``key=value``; wrap scalars given to list keys."""
    dotlist = []
    for key, value in key_values(argv):
        if key in _LIST_KEYS and not value.strip().startswith("["):
            value = f"[{value}]"
        dotlist.append(f"{key}={value}")
    return dotlist


def _valid_keys(dotted: str) -> list[str]:
    """The keys valid beside ``dotted``, a dotted path into the schema."""
    schema = suite_schema()
    cls: Any = schema
    for part in dotted.split(".")[:-1]:
        if cls is None:
            break
        if cls is schema and part == "schedule":
            return [f.name for f in dataclasses.fields(StageSchedule)]
        found = {f.name: f for f in dataclasses.fields(cls)}.get(part)
        default = found.default_factory() if found and callable(found.default_factory) else None
        cls = type(default) if dataclasses.is_dataclass(default) else None
    if cls is StageSchedule or cls is None and dotted.startswith("schedule."):
        return [f.name for f in dataclasses.fields(StageSchedule)]
    return [f.name for f in dataclasses.fields(cls)] if cls else []


def _explain(error: OmegaConfBaseException, source: str) -> UsageError:
    key = getattr(error, "full_key", None) or "?"
    first_line = str(error).splitlines()[0]
    for entry_type, section in ((PublishedResult, "published"), (Claim, "claims")):
        if isinstance(error, ConfigKeyError) and error.object_type is entry_type:
            valid = [f.name for f in dataclasses.fields(entry_type)]
            return unknown(f"key of a `{section}` entry in {source}", key, valid)
    if isinstance(error, ConfigKeyError):
        valid = _valid_keys(key)
        return unknown(f"key in {source}", key, [_join(key, v) for v in valid])
    return UsageError(f"bad value for key {key!r} in {source}: {first_line}")


def _join(key: str, leaf: str) -> str:
    head = key.rpartition(".")[0]
    return f"{head}.{leaf}" if head else leaf


def load_config(argv: list[str]) -> DictConfig:
    """The validated config for ``argv`` (a list of ``key=value``), or a UsageError."""
    dotlist = parse_overrides(argv)
    suite_name = DEFAULT_SUITE
    rest = []
    for item in dotlist:
        key, _, value = item.partition("=")
        if key == "suite":
            suite_name = value
        else:
            rest.append(item)
    path = suite_path(suite_name)
    try:
        suite_yaml = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise UsageError(f"suite file {str(path)!r} is not valid YAML: {error}") from None
    if not isinstance(suite_yaml, dict):
        raise UsageError(f"suite file {str(path)!r} must hold a mapping of keys")
    suite_yaml["suite"] = path.stem
    _entries_are_lists(suite_yaml, f"suite file {path.name}")
    _import_plugins_named(suite_yaml.get("plugins"), rest)
    cfg = OmegaConf.structured(suite_schema())
    try:
        cfg = OmegaConf.merge(cfg, OmegaConf.create(suite_yaml))
    except OmegaConfBaseException as error:
        raise _explain(error, f"suite file {path.name}") from None
    try:
        overrides = OmegaConf.from_dotlist(rest)
        _entries_are_lists(overrides, "the command line")
        cfg = OmegaConf.merge(cfg, overrides)
        OmegaConf.to_container(cfg, resolve=True)  # surfaces bad ${...} interpolations now
    except OmegaConfBaseException as error:
        raise _explain(error, "the command line") from None
    except yaml.YAMLError as error:
        first = str(error).splitlines()[0]
        raise UsageError(f"an override is not valid YAML ({first}): {' '.join(rest)}") from None
    _resolve(cfg)
    _check_values(cfg)
    _check_published(cfg)
    _check_claims(cfg)
    OmegaConf.set_readonly(cfg, True)
    _check_per_method(cfg)
    return cfg


def _import_plugins_named(in_suite: object, overrides: list[str]) -> None:
    """Import the user's modules of the ``plugins`` key (the command line's over the
    suite's) before the schema is built: they may add settings sections and methods."""
    modules = in_suite if in_suite is not None else []
    for item in overrides:
        key, _, value = item.partition("=")
        if key == "plugins":
            try:
                modules = yaml.safe_load(value)
            except yaml.YAMLError:
                modules = value
    if isinstance(modules, str):
        modules = [modules]
    if not isinstance(modules, list):
        raise UsageError(f"plugins must be a list of module names, got {modules!r}")
    use_plugins(modules)


def config_for(cfg: DictConfig, method: str) -> DictConfig:
    """The config ``method``'s runs train with: the suite's, with its ``per_method``
    entry merged over it (the suite's itself where it has none). Read-only."""
    overrides = cfg.per_method.get(method)
    if not overrides:
        return cfg
    merged = OmegaConf.merge(cfg, overrides)
    OmegaConf.set_readonly(merged, True)
    return merged


def check_per_method(cfg: DictConfig) -> None:
    """``_check_per_method`` for a config changed after loading (a search's trials)."""
    _check_per_method(cfg)


def _check_per_method(cfg: DictConfig) -> None:
    """Each ``per_method`` entry names a registered method, sets no suite-wide key, and
    gives a config that passes every check the suite's does."""
    known = available_methods()
    for name, overrides in cfg.per_method.items():
        if name.split(TRIAL_MARK, 1)[0] not in known:
            raise unknown("method in per_method", name, known)
        if not isinstance(overrides, DictConfig):
            raise UsageError(f"per_method.{name} must be a mapping of keys, got {overrides!r}")
        for key in overrides.get("data") or {}:
            if key in ("name", "path", "beton", "loader", "svhn_extra", "holdout"):
                raise UsageError(
                    f"per_method.{name}.data.{key}: every method of a suite reads the same "
                    "dataset; per_method may set data.resize, data.crop and data.hflip"
                )
        for key in overrides:
            if key in PER_METHOD_REFUSED:
                raise UsageError(
                    f"per_method.{name}.{key}: {key} is set for the whole suite, not per method; "
                    f"per_method may set: data, model, optim, schedule and method sections"
                )
        try:
            merged = OmegaConf.merge(cfg, overrides)
        except OmegaConfBaseException as error:
            raise _explain(error, f"per_method.{name}") from None
        _resolve(merged)
        _check_values(merged)


def ffcv_installed() -> bool:
    return importlib.util.find_spec("ffcv") is not None


def _resolve(cfg: DictConfig) -> None:
    """Settings that name a default in words get their value now, before any run id:
    ``data.loader=auto`` and ``model.pretrained=none``."""
    if cfg.data.loader == "auto":
        cfg.data.loader = "ffcv" if cfg.data.beton and ffcv_installed() else "torchvision"
    elif cfg.data.loader == "ffcv" and not ffcv_installed():
        raise UsageError(
            "data.loader=ffcv but ffcv is not installed: pip install -e '.[ffcv]' "
            "(Debian: pkg-config libturbojpeg0-dev libopencv-dev first), "
            "or use data.loader=torchvision"
        )
    if cfg.model.pretrained.lower() == "none":
        cfg.model.pretrained = ""


def _choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise unknown(f"value for {key}", value, choices)


def _non_finite(value: Any, key: str = "") -> str | None:
    """The dotted key of the first float in ``value`` (a plain container) that is nan or
    infinite, or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return key
    if isinstance(value, dict):
        children = [(f"{key}.{name}" if key else str(name), v) for name, v in value.items()]
    elif isinstance(value, list):
        children = [(f"{key}[{i}]", v) for i, v in enumerate(value)]
    else:
        return None
    for name, child in children:
        found = _non_finite(child, name)
        if found is not None:
            return found
    return None


def _check_values(cfg: DictConfig) -> None:
    """Range and choice checks OmegaConf's types cannot express."""
    bad = _non_finite(OmegaConf.to_container(cfg, resolve=True))
    if bad is not None:
        value = OmegaConf.select(cfg, bad)
        raise UsageError(f"{bad}={value}: every number setting must be finite (not nan or inf)")
    if cfg.flush_denormal and cfg.threads != 1:
        # the flush is a per-thread CPU flag: torch's worker threads, some made before a
        # run sets it, would not all flush, and the numbers would depend on the launcher
        raise UsageError(
            f"flush_denormal=true needs threads=1, got threads={cfg.threads} "
            "(the flush is per thread); valid: threads=1, or flush_denormal=false"
        )
    if cfg.eval.bn_recompute and cfg.report.last_k != 1:
        # the statistics are recomputed for the final model only: the median of the last
        # k evaluations would mix it with models evaluated on the running statistics
        raise UsageError(
            f"eval.bn_recompute=true needs report.last_k=1 (the final model's error), got "
            f"report.last_k={cfg.report.last_k}"
        )
    _choice("device", cfg.device, ("cpu", "cuda", "auto"))
    _choice("optim.name", cfg.optim.name, ("sgd", "adam"))
    _choice("optim.lr_schedule", cfg.optim.lr_schedule, LR_SCHEDULES)
    _choice("optim.decay_on", cfg.optim.decay_on, DECAY_SCOPES)
    if cfg.optim.nesterov and (cfg.optim.name != "sgd" or cfg.optim.momentum <= 0):
        raise UsageError(
            f"optim.nesterov=true needs optim.name=sgd with optim.momentum > 0, got "
            f"optim.name={cfg.optim.name} optim.momentum={cfg.optim.momentum}"
        )
    _choice("data.loader", cfg.data.loader, ("auto", "ffcv", "torchvision"))
    holdout_key(cfg.data.holdout)  # a count or a fraction; the split checks the sizes
    _choice("launcher", cfg.launcher, LAUNCHER_NAMES)
    for name in cfg.logger:
        _choice("logger", name, LOGGERS)
    positive = {
        "data.resize": cfg.data.resize,
        "data.crop": cfg.data.crop,
        "optim.batch_size": cfg.optim.batch_size,
        "optim.unlabeled_batch_size": cfg.optim.unlabeled_batch_size,
        "eval.batch_size": cfg.eval.batch_size,
        "eval.every": cfg.eval.every,
        "report.last_k": cfg.report.last_k,
        "report.resamples": cfg.report.resamples,
        "parallel": cfg.parallel,
        "threads": cfg.threads,
        "slurm.cpus_per_task": cfg.slurm.cpus_per_task,
        "slurm.time_min": cfg.slurm.time_min,
        "slurm.array_parallelism": cfg.slurm.array_parallelism,
    }
    for key, value in positive.items():
        if value < 1:
            raise UsageError(f"{key} must be a positive integer, got {value}")
    at_least_zero = {
        "data.pad": cfg.data.pad,
        "optim.momentum": cfg.optim.momentum,
        "optim.weight_decay": cfg.optim.weight_decay,
        "optim.grad_clip": cfg.optim.grad_clip,
        "data.num_workers": cfg.data.num_workers,
        "slurm.gpus_per_node": cfg.slurm.gpus_per_node,
        "slurm.tasks_per_node": cfg.slurm.tasks_per_node,
        "slurm.max_array_size": cfg.slurm.max_array_size,
        "slurm.max_num_timeout": cfg.slurm.max_num_timeout,
        "slurm.signal_delay_s": cfg.slurm.signal_delay_s,
    }
    for key, value in at_least_zero.items():
        if value < 0:
            raise UsageError(f"{key} must be >= 0, got {value}")
    if cfg.slurm.nodes != 1:
        raise UsageError(
            f"slurm.nodes={cfg.slurm.nodes}: a run uses one node (its DDP processes share "
            "that node's GPUs; multi-node runs are not supported); valid: 1"
        )
    if cfg.slurm.signal_delay_s >= 60 * cfg.slurm.time_min:
        raise UsageError(
            f"slurm.signal_delay_s={cfg.slurm.signal_delay_s} would signal the end of a "
            f"{cfg.slurm.time_min}-minute job at its start; valid: below {60 * cfg.slurm.time_min}"
        )
    for key in ("mem_gb", "report_mem_gb", "poll_s"):
        if not cfg.slurm[key] > 0:
            raise UsageError(f"slurm.{key} must be > 0, got {cfg.slurm[key]}")
    if not 0 < cfg.optim.lr_decay <= 1:
        raise UsageError(f"optim.lr_decay must lie in (0, 1], got {cfg.optim.lr_decay}")
    if not 0 <= cfg.model.dropout < 1:
        raise UsageError(f"model.dropout must lie in [0, 1), got {cfg.model.dropout}")
    if cfg.data.svhn_extra and cfg.data.name != "svhn":
        raise UsageError(
            f"data.svhn_extra=true adds SVHN's extra_32x32.mat to the pool, but data.name is "
            f"{cfg.data.name!r}; valid: data.svhn_extra=true with data.name=svhn only"
        )
    if cfg.data.crop > cfg.data.resize:
        raise UsageError(
            f"data.crop ({cfg.data.crop}) must not exceed data.resize ({cfg.data.resize})"
        )
    if not cfg.seeds:
        raise UsageError("seeds must list at least one seed")
    if len(set(cfg.seeds)) != len(cfg.seeds):
        raise UsageError(f"seeds has a repeated value: {list(cfg.seeds)}")
    if not cfg.labels:
        raise UsageError("labels must list at least one label budget")
    if not cfg.methods:
        raise UsageError("methods must list at least one method (or `all`)")
    for name, stage in cfg.schedule.items():
        if stage.epochs < 0:
            raise UsageError(f"schedule.{name}.epochs must be >= 0, got {stage.epochs}")
        if stage.lr <= 0:
            raise UsageError(f"schedule.{name}.lr must be > 0, got {stage.lr}")
        if stage.steps < 0:
            raise UsageError(f"schedule.{name}.steps must be >= 0, got {stage.steps}")
        if stage.eval_every < 0:
            raise UsageError(
                f"schedule.{name}.eval_every must be >= 0 (0: eval.every), got {stage.eval_every}"
            )
    if cfg.model.pretrained and not Path(cfg.model.pretrained).is_file():
        raise UsageError(f"model.pretrained={cfg.model.pretrained!r} is not a file")
    if not 0 < cfg.report.alpha < 1:
        raise UsageError(f"report.alpha must lie in (0, 1), got {cfg.report.alpha}")
    for name in method_sections():
        OmegaConf.to_object(cfg[name])  # the family's own checks (its __post_init__)


def _entries_are_lists(given: Any, source: str) -> None:
    """``published`` and ``claims`` hold lists of entries (OmegaConf cannot say so of a
    mapping)."""
    for key in ("published", "claims"):
        if isinstance(given.get(key, []), dict | DictConfig):
            raise UsageError(
                f"{key} in {source} must be a list of entries (`- {{...}}` lines in YAML, "
                f"[{{...}}, {{...}}] on the command line), got a mapping"
            )


def _check_published(cfg: DictConfig) -> None:
    """Each published entry names a registered method, a label budget (given its
    canonical text now, as the plan's runs carry it) and errors >= 0."""
    methods = available_methods() if cfg.published else []
    for i, entry in enumerate(cfg.published):
        key = f"published[{i}]"
        if entry.method not in methods:
            why = "is empty: name" if not entry.method else "is not"
            raise UsageError(
                f"{key}.method={entry.method!r} {why} a registered method; valid choices: "
                + ", ".join(sorted(methods))
            )
        if entry.labels is None:
            raise UsageError(f"{key}.labels is not set: the label budget, as in `labels:`")
        try:
            entry.labels = budget_key(entry.labels)
        except UsageError as error:
            raise UsageError(f"{key}.labels={entry.labels!r}: {error}") from None
        if not 0 <= entry.mean <= 100:
            raise UsageError(f"{key}.mean must be an error in [0, 100] %, got {entry.mean}")
        for name in ("std", "seeds"):
            if not (entry[name] >= 0 and math.isfinite(entry[name])):
                raise UsageError(f"{key}.{name} must be a finite number >= 0, got {entry[name]}")
        if entry.metric not in ERROR_METRICS:
            raise unknown(f"{key}.metric (a column of the report)", entry.metric, ERROR_METRICS)


def _check_claims(cfg: DictConfig) -> None:
    """Each claim names registered methods or groups, a column of the report, a
    direction and budgets (given their canonical text now, as the plan's runs carry
    them); ``harness.claims`` says what pairs they make."""
    if not cfg.claims and not cfg.groups:
        return
    expand_claims(cfg.claims, cfg.groups, available_methods())
    for i, claim in enumerate(cfg.claims):
        try:
            claim.labels = [budget_key(b) for b in claim.labels]
        except UsageError as error:
            raise UsageError(f"claims[{i}].labels={list(claim.labels)}: {error}") from None
