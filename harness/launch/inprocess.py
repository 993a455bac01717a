"""``launcher=inprocess``: one run after another in this process."""

from __future__ import annotations

from omegaconf import DictConfig
from tqdm import tqdm

from harness.engine.lifecycle import train_run
from harness.launch.base import Outcome, register_launcher, say, say_skipped
from harness.plan import RunSpec


@register_launcher("inprocess")
def launch_inprocess(plan: list[RunSpec], cfg: DictConfig) -> Outcome:
    """One run after another in this process. A failed run, or one another process
    holds, is reported in one line and the plan goes on; the runs that start from it
    are skipped (they would fail for want of its weights)."""
    ended: dict[str, str] = {}
    bar = tqdm(
        plan, desc=f"suite {cfg.suite}", unit="run", disable=not cfg.progress, dynamic_ncols=True
    )
    for spec in bar:
        waits_on = [run for run in spec.depends_on if ended.get(run, "done") != "done"]
        if waits_on:
            ended[spec.run_id] = "skipped"
            say_skipped(spec, waits_on[0], ended[waits_on[0]])
            continue
        result = train_run(spec, cfg)
        ended[spec.run_id] = result.status
        if result.status != "done":
            say(result.message)
    return Outcome(finished=True)
