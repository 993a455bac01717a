"""Suite x methods x label budgets x seeds -> a list of runs with stable ids.

A run's id is a short hash of the suite name, method, label budget, seeds and
the part of the config that decides its numbers, so the same run always maps to
the same folder and a changed setting maps to a new one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from omegaconf import DictConfig

from harness.config import run_relevant
from harness.data import budget_key
from harness.errors import UsageError
from harness.method import METHODS, available_methods, get_method


@dataclass(frozen=True)
class RunSpec:
    suite: str
    method: str
    labels: str  # canonical label budget text
    split_seed: int
    train_seed: int
    run_id: str
    depends_on: tuple[str, ...] = ()  # run ids that must finish first

    def describe(self) -> str:
        return f"{self.method} labels={self.labels} seed={self.train_seed}"


def resolve_methods(names: list[str]) -> list[str]:
    """``["all"]`` -> every registered method (baseline first); else check each name."""
    available_methods()  # imports the methods package
    if list(names) == ["all"]:
        return list(METHODS)
    for name in names:
        get_method(name)
    if len(set(names)) != len(names):
        raise UsageError(f"methods lists a name twice: {list(names)}")
    return list(names)


def run_id(payload: dict) -> str:
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def make_plan(cfg: DictConfig) -> list[RunSpec]:
    """Every run of the suite, in an order where dependencies come first."""
    budgets = [budget_key(b) for b in cfg.labels]
    if len(set(budgets)) != len(budgets):
        raise UsageError(f"labels lists a budget twice: {budgets}")
    runs = []
    for name in resolve_methods(cfg.methods):
        stage_names = [stage.name for stage in get_method(name)(cfg).stages()]
        missing = [s for s in stage_names if s not in cfg.schedule]
        if missing:
            raise UsageError(
                f"method {name!r} needs schedule.{missing[0]}.epochs/lr in suite "
                f"{cfg.suite!r}; the suite's schedule has: "
                f"{', '.join(cfg.schedule) or '(none)'}"
            )
        relevant = run_relevant(cfg, stage_names)
        for labels in budgets:
            for seed in cfg.seeds:
                payload = {
                    "suite": cfg.suite,
                    "method": name,
                    "labels": labels,
                    "split_seed": seed,
                    "train_seed": seed,
                    "config": relevant,
                }
                runs.append(RunSpec(cfg.suite, name, labels, seed, seed, run_id(payload)))
    return runs
