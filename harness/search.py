"""Hyperparameter search as ordinary runs, selected on the validation split.

    python -m harness.run suite=fashion_mnist_ssl data.holdout=1000 methods=[baseline,mixmatch] \\
        'search.space.mixmatch.weight=[10,30,75]' \\
        'search.space.baseline.schedule.pretrain.lr={low: 0.0003, high: 0.003, log: true}' \\
        search.trials=6 search.sampler=tpe

Why this shape (Oliver et al. 2018): every method is tuned the same way (the same
number of trials of the suite's equal steps), on a validation split carved from the
training images (``data.holdout``), and the test set is read once, by the final models.

A trial is a run of ``<method>@<tag>`` whose ``per_method`` entry is the method's own
plus the trial's values: its own id (the tag hashes the values, so the same values are
the same run), resumable, under any launcher (a batch of trials is one plan: one SLURM
array). Optuna samples by ask-and-tell; its study is a journal file under the results
root, ``<results>/<suite>/search/<method>.journal``, and a study that is deleted is
rebuilt from the trials' run records. Killing a search loses at most the runs in
flight: on restart, trials asked but never told run again under the same ids (resuming
from their checkpoints) and finished ones are read from their records.

A trial's value is the table's validation column: the median of the last
``report.last_k`` validation evaluations of its final stage. The lowest wins (ties:
the earlier trial); its values are merged into the method's ``per_method`` entry and
the suite's labels and seeds then train them. Trials run at the suite's first label
budget and first seed.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from harness.config import check_per_method, config_for
from harness.errors import UsageError, unknown
from harness.method import TRIAL_MARK, get_method
from harness.plan import make_plan
from harness.report.search import chosen_file, select, trial_records, trial_value
from harness.store import atomic_write_text

SAMPLERS = ("grid", "random", "tpe")


@dataclass(frozen=True)
class Param:
    """One searched setting: a config path of the method's runs and its values."""

    path: str  # e.g. mixmatch.weight, schedule.pretrain.lr
    choices: tuple[Any, ...] = ()  # a list of values, or else the range below
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    integer: bool = False

    def describe(self) -> str:
        if self.choices:
            return f"{self.path} in {list(self.choices)}"
        scale = " (log)" if self.log else ""
        return f"{self.path} in [{self.low:g}, {self.high:g}]{scale}"


def _leaves(node: Any, prefix: str) -> list[tuple[str, Any]]:
    """The space's settings: lists and ``{low, high, ...}`` ranges, by dotted key."""
    if isinstance(node, dict) and not ({"low", "high"} & set(node)):
        found = []
        for key, value in node.items():
            found += _leaves(value, f"{prefix}.{key}" if prefix else str(key))
        return found
    return [(prefix, node)]


def _param(method: str, path: str, spec: Any) -> Param:
    where = f"search.space.{method}.{path}"
    if isinstance(spec, list):
        if not spec:
            raise UsageError(f"{where}=[]: an empty list of values; give at least one")
        return Param(path, choices=tuple(spec))
    if not isinstance(spec, dict):
        raise UsageError(f"{where}={spec!r}: give a list of values or {{low, high, log, int}}")
    extra = set(spec) - {"low", "high", "log", "int"}
    if extra:
        raise unknown(f"key of {where}", sorted(extra)[0], ("low", "high", "log", "int"))
    try:
        low, high = float(spec["low"]), float(spec["high"])
    except (KeyError, TypeError, ValueError):
        raise UsageError(f"{where}: a range needs numbers low and high, got {spec}") from None
    log, integer = bool(spec.get("log", False)), bool(spec.get("int", False))
    if not (math.isfinite(low) and math.isfinite(high)) or not low < high:
        raise UsageError(f"{where}: an empty range [{low:g}, {high:g}]; low must be below high")
    if log and low <= 0:
        raise UsageError(f"{where}: a log range needs low > 0, got {low:g}")
    return Param(path, low=low, high=high, log=log, integer=integer)


def _setting_path(cfg: DictConfig, method: str, key: str) -> str:
    """``key`` as a config path of ``method``'s runs: a key of one of its settings
    sections (``weight`` -> ``mixmatch.weight``), or a path of the whole config
    (``schedule.pretrain.lr``); UsageError naming the valid keys otherwise."""
    own = config_for(cfg, method)
    sections = get_method(method).config_sections
    for section in sections:
        if OmegaConf.select(own, f"{section}.{key}", default=None) is not None:
            return f"{section}.{key}"
    value = OmegaConf.select(own, key, default=None)
    if value is not None and not isinstance(value, DictConfig | list):
        return key
    valid = [f"{s}.{k}" for s in sections for k in own[s]] + ["optim.*", "schedule.*", "model.*"]
    raise unknown(f"search key of method {method}", key, valid)


def parse_space(cfg: DictConfig, methods: list[str]) -> dict[str, list[Param]]:
    """``search.space`` checked: each method is one the suite runs, each key one of its
    settings, each range non-empty; UsageError (one line) otherwise."""
    search = cfg.search
    if search.trials < 0 or (search.space and search.trials < 1):
        raise UsageError(
            f"search.trials={search.trials} must be at least 1 with a search.space "
            "(0 and no space: no search)"
        )
    if search.sampler not in SAMPLERS:
        raise unknown("search.sampler", search.sampler, SAMPLERS)
    if search.batch < 1:
        raise UsageError(f"search.batch={search.batch} must be at least 1")
    space = OmegaConf.to_container(search.space, resolve=True)
    assert isinstance(space, dict)
    if not space:
        raise UsageError(
            f"search.trials={search.trials} but search.space is empty: give e.g. "
            "search.space.fixmatch.threshold=[0.8,0.95]"
        )
    if not cfg.data.holdout:
        raise UsageError(
            "a search selects on the validation split, never on the test set: set "
            "data.holdout (e.g. data.holdout=1000)"
        )
    parsed: dict[str, list[Param]] = {}
    for method, keys in space.items():
        if method not in methods:
            raise unknown("method in search.space (one the suite runs)", method, methods)
        if not isinstance(keys, dict) or not keys:
            raise UsageError(f"search.space.{method} must map settings to values or ranges")
        parsed[method] = []
        for key, spec in _leaves(keys, ""):
            param = _param(method, _setting_path(cfg, method, key), spec)
            _check_values(cfg, method, key, param)
            parsed[method].append(param)
        if search.sampler == "grid" and any(not p.choices for p in parsed[method]):
            raise UsageError(
                f"search.sampler=grid needs lists of values; search.space.{method} has a range"
            )
    return parsed


def _check_values(cfg: DictConfig, method: str, key: str, param: Param) -> None:
    """Every listed value (a range's ends) passes the checks the method's settings do,
    before any trial runs: a wrong type or a value out of range is one line now."""
    extremes = param.choices or (param.low, param.high)
    for value in extremes:
        if param.integer:
            value = int(value)
        try:
            check_per_method(with_values(cfg, trial_name(method, {}), method, {param.path: value}))
        except OmegaConfBaseException as error:
            message = str(error).splitlines()[0]
            raise UsageError(f"search.space.{method}.{key}: {value!r}: {message}") from None
        except UsageError as error:
            raise UsageError(f"search.space.{method}.{key}: {value!r}: {error}") from None


def trial_name(method: str, values: dict[str, Any]) -> str:
    """``<method>@<tag>``, the tag a hash of the values: the same values, the same run."""
    text = json.dumps(values, sort_keys=True, default=str)
    return f"{method}{TRIAL_MARK}{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def _nested(values: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path, value in values.items():
        node = out
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def with_values(cfg: DictConfig, name: str, method: str, values: dict[str, Any]) -> DictConfig:
    """``cfg`` with ``per_method[name]`` = ``method``'s own entry plus ``values``."""
    own = cfg.per_method.get(method) or {}
    entry = OmegaConf.merge(own, _nested(values))
    merged = OmegaConf.merge(cfg, {"per_method": {name: entry}})
    return merged


def trial_config(cfg: DictConfig, trials: list[tuple[str, str, dict[str, Any]]]) -> DictConfig:
    """The plan of one batch of trials, (name, method, values) each: the suite's first
    budget and seed, no search inside, waiting for SLURM (the sampler needs the values)."""
    names = [name for name, _, _ in trials]
    batch = OmegaConf.merge(
        cfg,
        {
            "methods": names,
            "labels": [cfg.labels[0]],
            "seeds": [cfg.seeds[0]],
            "wait": True,
            "search": {"trials": 0, "space": {}},
        },
    )
    for name, method, values in trials:
        batch = with_values(batch, name, method, values)
    return batch


def _distributions(params: list[Param]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in params:
        if p.choices:
            out[p.path] = optuna.distributions.CategoricalDistribution(list(p.choices))
        elif p.integer:
            out[p.path] = optuna.distributions.IntDistribution(int(p.low), int(p.high), log=p.log)
        else:
            out[p.path] = optuna.distributions.FloatDistribution(p.low, p.high, log=p.log)
    return out


def _sampler(kind: str, seed: int, params: list[Param]) -> Any:
    if kind == "grid":
        return optuna.samplers.GridSampler({p.path: list(p.choices) for p in params}, seed=seed)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def _open_study(cfg: DictConfig, method: str, params: list[Param]) -> Any:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    suite_dir = Path(cfg.results) / cfg.suite
    folder = suite_dir / "search"
    folder.mkdir(parents=True, exist_ok=True)
    journal = folder / f"{method}.journal"
    rebuild = not journal.exists()
    storage = JournalStorage(JournalFileBackend(str(journal)))
    study = optuna.create_study(
        study_name=method,
        storage=storage,
        sampler=_sampler(cfg.search.sampler, cfg.search.seed, params),
        direction="minimize",
        load_if_exists=True,
    )
    if rebuild:  # a study lost or deleted: its finished trials from their records
        distributions = _distributions(params)
        for _, config, run_id in trial_records(suite_dir, method):
            value = trial_value(suite_dir / run_id, cfg.report.last_k)
            if value is None:
                continue
            values = {p.path: select(config, p.path) for p in params}
            study.add_trial(
                optuna.trial.create_trial(params=values, distributions=distributions, value=value)
            )
    return study


def _text(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _grid_size(params: list[Param]) -> int:
    return math.prod(len(p.choices) for p in params)


def run_search(
    cfg: DictConfig,
    space: dict[str, list[Param]],
    launch: Callable[[DictConfig], None],
) -> dict[str, dict[str, Any]]:
    """Each method's search to ``search.trials`` finished trials, batch by batch through
    ``launch`` (the launcher, given a batch's config); its chosen values by method."""
    suite_dir = Path(cfg.results) / cfg.suite
    chosen: dict[str, dict[str, Any]] = {}
    for method, params in space.items():
        study = _open_study(cfg, method, params)
        distributions = _distributions(params)
        target = cfg.search.trials
        if cfg.search.sampler == "grid":
            target = min(target, _grid_size(params))
        while True:
            trials = study.get_trials(deepcopy=False)
            finished = [t for t in trials if t.state.is_finished()]
            if len(finished) >= target:
                break
            # trials asked before a kill run again first, under the same ids
            batch = [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
            while len(batch) < cfg.search.batch and len(finished) + len(batch) < target:
                # seeded by the trials so far: a restarted search goes on with the draws
                # it would have made (a sampler seeded once would repeat its first ones)
                seed = cfg.search.seed * 100_003 + len(study.get_trials(deepcopy=False))
                study.sampler = _sampler(cfg.search.sampler, seed, params)
                batch.append(study.ask(distributions))
            names = [(trial_name(method, t.params), method, dict(t.params)) for t in batch]
            for (name, _, values), trial in zip(names, batch, strict=True):
                shown = ", ".join(f"{k}={_text(v)}" for k, v in values.items())
                print(
                    f"search {method}: trial {trial.number + 1} of {target}: {shown} ({name})",
                    file=sys.stderr,
                )
            batch_cfg = trial_config(cfg, names)
            launch(batch_cfg)
            by_name = {spec.method: spec.run_id for spec in make_plan(batch_cfg)}
            for (name, _, _), trial in zip(names, batch, strict=True):
                value = trial_value(suite_dir / by_name[name], cfg.report.last_k)
                if value is None:
                    study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
                else:
                    study.tell(trial.number, value)
        done = [t for t in study.get_trials(deepcopy=False) if t.value is not None]
        if not done:
            raise UsageError(f"search {method}: no trial finished; see python -m harness.status")
        best = min(done, key=lambda t: (t.value, t.number))
        chosen[method] = {p.path: best.params[p.path] for p in params}
        record = {"values": chosen[method], "value": best.value, "trials": len(done)}
        atomic_write_text(chosen_file(suite_dir, method), json.dumps(record, indent=1))
        shown = ", ".join(f"{k}={_text(v)}" for k, v in chosen[method].items())
        print(f"search {method}: chosen {shown} ({best.value:.2f}% validation)", file=sys.stderr)
    return chosen


def with_chosen(cfg: DictConfig, chosen: dict[str, dict[str, Any]]) -> DictConfig:
    """The suite's config with each searched method's chosen values in its per_method."""
    for method, values in chosen.items():
        cfg = with_values(cfg, method, method, values)
    return cfg
