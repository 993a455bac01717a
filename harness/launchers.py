"""Launchers: how a plan's runs get executed.

A launcher takes the plan and the config and returns when its runs are done (or
submitted). ``inprocess`` runs them one after another in this process, in plan
order (dependencies first). Other launchers (submitit's local executor, SLURM
arrays) register here and reuse ``harness.train.train_run`` as the job body.
"""

from __future__ import annotations

from collections.abc import Callable

from omegaconf import DictConfig
from tqdm import tqdm

from harness.plan import RunSpec

Launcher = Callable[[list[RunSpec], DictConfig], None]
LAUNCHERS: dict[str, Launcher] = {}


def register_launcher(name: str) -> Callable[[Launcher], Launcher]:
    def add(launcher: Launcher) -> Launcher:
        LAUNCHERS[name] = launcher
        return launcher

    return add


@register_launcher("inprocess")
def launch_inprocess(plan: list[RunSpec], cfg: DictConfig) -> None:
    from harness.train import train_run  # the trainer is heavy; load it only to run

    for spec in tqdm(
        plan, desc=f"suite {cfg.suite}", unit="run", disable=not cfg.progress, dynamic_ncols=True
    ):
        train_run(spec, cfg)
