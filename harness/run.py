"""``python -m harness.run [suite=NAME] [key=value ...]``: plan, launch, tabulate.

Everything that can be wrong with the input is checked first (config, method
names, dataset files, label budgets, stored splits, the model against the image
size); a problem is one line on stderr and exit status 2, with nothing written
under the results root. Then the launcher runs what is not done yet, and the
report (``harness.report``) of the plan's runs is written and its table printed.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from harness.config import load_config
from harness.data import load_dataset, load_or_store_split
from harness.distributed import is_main_process
from harness.errors import UsageError
from harness.launchers import LAUNCHERS, prepare
from harness.method import get_method
from harness.models import build_encoder
from harness.plan import RunSpec, make_plan


def validate(argv: list[str]) -> tuple[DictConfig, list[RunSpec]]:
    """The config and plan for ``argv``; raises UsageError, writes nothing."""
    cfg = load_config(argv)
    prepare(cfg)
    if cfg.device == "cuda" and cfg.launcher != "slurm" and not torch.cuda.is_available():
        raise UsageError("device=cuda but torch sees no CUDA device; valid here: cpu, auto")
    results = Path(cfg.results)
    if results.exists() and not results.is_dir():
        raise UsageError(f"results={cfg.results!r} exists and is not a folder")
    plan = make_plan(cfg)
    dataset = load_dataset(cfg.data)
    encoder = build_encoder(cfg.model.name, dataset.channels, dataset.num_classes, cfg.data.crop)
    if cfg.model.pretrained:
        check_pretrained(cfg.model.pretrained, encoder)
    for name in dict.fromkeys(spec.method for spec in plan):  # a method may reject the model
        get_method(name)(cfg).build_model(encoder, dataset)
    # every split drawn (and a stored one checked) now; with every image labeled, stages
    # that train on the pool read the labeled set (harness.train.Context.pool)
    for labels, seed in dict.fromkeys((spec.labels, spec.split_seed) for spec in plan):
        load_or_store_split(Path(cfg.results), dataset, labels, seed, store=False)
    return cfg, plan


def check_pretrained(path: str, encoder: torch.nn.Module) -> None:
    """The ``model.pretrained`` file must load strictly into the suite's classifier."""
    try:
        encoder.load_state_dict(torch.load(path, map_location="cpu"))
    except Exception as error:  # noqa: BLE001 - any failure means the same to the user
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UsageError(
            f"model.pretrained={path!r} does not load into model {encoder.__class__.__name__} "
            f"as built by this suite ({first})"
        ) from None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        cfg, plan = validate(argv)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    suite_dir = Path(cfg.results) / cfg.suite
    if not is_main_process():  # a DDP rank > 0 (torchrun): train, leave the talking to rank 0
        cfg = OmegaConf.merge(cfg, {"progress": False})
        return 1 if LAUNCHERS[cfg.launcher](plan, cfg).failed else 0
    done = sum((suite_dir / spec.run_id / "metrics.json").is_file() for spec in plan)
    print(f"suite {cfg.suite}: {len(plan)} runs planned, {done} already done", file=sys.stderr)
    outcome = LAUNCHERS[cfg.launcher](plan, cfg)
    if outcome.finished:
        from harness.report import build_report, print_report  # scipy, pandas: slow to import

        print_report(cfg, build_report(cfg, plan))
    print(f"run records: {suite_dir}/<run_id>/", file=sys.stderr)
    if outcome.failed:
        print(
            f"error: {outcome.failed} of {len(plan)} runs did not finish; their errors: "
            f"python -m harness.status {shlex.join(argv)}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
