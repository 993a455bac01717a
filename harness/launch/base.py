"""What every launcher shares: the registry, the one-line messages, the tally."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

from omegaconf import DictConfig
from tqdm import tqdm

from harness.engine.distributed import is_main_process
from harness.plan import RunSpec
from harness.store import run_record


@dataclass(frozen=True)
class Outcome:
    finished: bool  # the runs ended here (not only submitted): report now


Launcher = Callable[[list[RunSpec], DictConfig], Outcome]


LAUNCHERS: dict[str, Launcher] = {}


def register_launcher(name: str) -> Callable[[Launcher], Launcher]:
    def add(launcher: Launcher) -> Launcher:
        LAUNCHERS[name] = launcher
        return launcher

    return add


def say(message: str) -> None:
    """One line on stderr (rank 0 only), above any progress bar."""
    if is_main_process():
        tqdm.write(message, file=sys.stderr)


def say_skipped(spec: RunSpec, source: str, how: str) -> None:
    """The line for a run skipped because the run it starts from ended ``how``."""
    say(f"run {spec.run_id} ({spec.describe()}) skipped: it starts from run {source}, which {how}")


def tally(plan: list[RunSpec], cfg: DictConfig) -> dict[str, int]:
    """done / failed / skipped counts of the plan, from the store: skipped is every run
    neither done nor failed (another process holds it, or it starts from a run that
    did not finish)."""
    counts = dict.fromkeys(("done", "failed", "skipped"), 0)
    for spec in plan:
        record = run_record(cfg.results, spec.suite, spec.run_id)
        if record.is_done():
            counts["done"] += 1
        elif record.failure_file.is_file():
            counts["failed"] += 1
        else:
            counts["skipped"] += 1
    return counts
