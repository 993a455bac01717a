"""Suite x methods x label budgets x seeds -> a list of runs with stable ids.

A run's id is a short hash of the suite name, method, label budget, seeds and
the part of the config that decides its numbers (``config.run_relevant``: what
the method's training reads, the dataset's content fingerprint, a pretrained
file's content hash), so the same run always maps to the same folder, wherever
the data lies and whichever launcher runs it, and a changed setting maps to a
new one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache

from omegaconf import DictConfig

from harness.config import config_for, file_digest, run_relevant
from harness.data import Dataset, budget_key, load_dataset
from harness.data.splits import every_image_labeled, is_list_budget
from harness.errors import UsageError
from harness.method import available_methods, can_train, get_method
from harness.models import build_encoder


@dataclass(frozen=True)
class RunSpec:
    suite: str
    method: str
    labels: str  # canonical label budget text
    split_seed: int
    train_seed: int
    run_id: str
    # (stage name, run id): stages copied from another run's `stage-<name>.pt`
    reuses: tuple[tuple[str, str], ...] = ()

    @property
    def depends_on(self) -> tuple[str, ...]:
        """Run ids that must be done before this run starts."""
        return tuple(dict.fromkeys(run for _, run in self.reuses))

    def describe(self) -> str:
        return f"{self.method} labels={self.labels} seed={self.train_seed}"


def resolve_methods(cfg: DictConfig) -> list[str]:
    """``methods=[all]`` -> every registered method (baseline first) the suite is set up
    for: one that can train its model (the suite's, or its own under ``per_method``; a
    method with a ``models`` list of its own only where it names that model) and
    whose stages the suite schedules (a suite without a ``train`` stage leaves out the
    methods that train in one). Else check each name."""
    names = list(cfg.methods)
    if names == ["all"]:
        return [name for name in available_methods() if _suite_is_set_up_for(cfg, name)]
    for name in names:
        get_method(name)
    if len(set(names)) != len(names):
        raise UsageError(f"methods lists a name twice: {list(names)}")
    return list(names)


def _suite_is_set_up_for(cfg: DictConfig, name: str) -> bool:
    """Whether ``methods=all`` takes ``name``: the method can train its model, the model
    offers what it needs, and the suite schedules its stages."""
    own = config_for(cfg, name)
    method = get_method(name)
    if not can_train(method, own.model.name):
        return False
    if not method.needs <= _offers(own.model.name, own.data.crop):
        return False
    return all(stage.name in own.schedule for stage in method(own).stages())


@lru_cache(maxsize=8)
def _offers(model_name: str, crop: int) -> frozenset[str]:
    """What a registered model offers (``harness.models.CAPABILITIES``), from one built
    at the suite's crop size."""
    return build_encoder(model_name, 3, 10, crop).offers


def run_id(payload: dict) -> str:
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class _MethodInfo:
    """What the plan needs of a method; the same for all its runs in one config
    (the config also for all its budgets with an unlabeled pool, or all without)."""

    stages: tuple
    config: dict


def _method_info(
    cfg: DictConfig, name: str, all_labeled: bool, methods: dict, fingerprint: str
) -> _MethodInfo:
    # computed once per method and pool: run_relevant copies the whole config, which
    # at 10,000 runs would dominate planning
    key = (name, all_labeled)
    if key not in methods:
        cfg = config_for(cfg, name)
        method = get_method(name)(cfg)
        stages = tuple(method.stages())
        stage_names = [stage.name for stage in stages]
        missing = [s for s in stage_names if s not in cfg.schedule]
        if missing:
            raise UsageError(
                f"method {name!r} needs schedule.{missing[0]}.epochs/lr in suite "
                f"{cfg.suite!r}; the suite's schedule has: "
                f"{', '.join(cfg.schedule) or '(none)'}"
            )
        # with every image labeled no stage draws a second (pool) batch
        reads_pool = not all_labeled and any(stage.unlabeled for stage in stages)
        config = run_relevant(
            cfg,
            stage_names,
            method.config_sections,
            reads_pool=reads_pool,
            fingerprint=fingerprint,
            unlabeled_batch_size=method.unlabeled_batch_size(),
            precision=method.precision,
        )
        methods[key] = _MethodInfo(stages, config)
    return methods[key]


def _budget_identity(labels: str) -> str:
    """What a budget contributes to a run id: its text, or a list file's content hash
    (a moved list names the same images)."""
    return f"list:{file_digest(labels)}" if is_list_budget(labels) else labels


def _run_spec(
    cfg: DictConfig,
    name: str,
    labels: str,
    seed: int,
    known: dict[str, RunSpec],
    methods: dict,
    dataset: Dataset,
) -> RunSpec:
    """The run of method ``name``; the runs it starts from are added to ``known``."""
    all_labeled = every_image_labeled(labels, dataset.pool_only)
    info = _method_info(cfg, name, all_labeled, methods, dataset.fingerprint)
    reuses = []
    pretrained = config_for(cfg, name).model.pretrained
    for stage in info.stages:
        if stage.starts_from is None or (stage.initializes and pretrained):
            continue
        source = _run_spec(cfg, stage.starts_from, labels, seed, known, methods, dataset)
        source_stages = methods[(source.method, all_labeled)].stages
        if stage.name not in [s.name for s in source_stages]:
            raise ValueError(
                f"{name}: stage {stage.name!r} starts from {source.method!r}, "
                "which has no such stage"
            )
        reuses.append((stage.name, source.run_id))
    payload = {
        "suite": cfg.suite,
        "method": name,
        "labels": _budget_identity(labels),
        "split_seed": seed,
        "train_seed": seed,
        "reuses": reuses,
        "config": info.config,
    }
    spec = RunSpec(cfg.suite, name, labels, seed, seed, run_id(payload), tuple(reuses))
    known[spec.run_id] = spec
    return spec


def make_plan(cfg: DictConfig) -> list[RunSpec]:
    """Every run of the suite, each after the runs it depends on.

    A method whose stage starts from another method's run (``Stage.starts_from``,
    e.g. a method that starts from the baseline's ``pretrain``) pulls that run into
    the plan even when its method was not asked for.
    """
    budgets = [budget_key(b) for b in cfg.labels]
    if len(set(budgets)) != len(budgets):
        raise UsageError(f"labels lists a budget twice: {budgets}")
    known: dict[str, RunSpec] = {}
    methods: dict = {}
    dataset = load_dataset(cfg.data)
    asked = [
        _run_spec(cfg, name, labels, seed, known, methods, dataset)
        for name in resolve_methods(cfg)
        for labels in budgets
        for seed in cfg.seeds
    ]
    plan: dict[str, RunSpec] = {}

    def place(spec: RunSpec) -> None:
        for source in spec.depends_on:
            place(known[source])
        plan.setdefault(spec.run_id, spec)

    for spec in asked:
        place(spec)
    return list(plan.values())
