"""What a run's id hashes: exactly what changes the run's result.

Only what the method's training reads counts: the schedule of its own stages,
the method sections it declares, the unlabeled batch size only where a stage
draws from the pool. The dataset enters by its content fingerprint, not its
path, so a moved dataset keeps every result; a ``model.pretrained`` file by the
hash of its bytes. The thread count enters CPU runs, whose results depend on
it, and so does ``flush_denormal`` where it is on; on CUDA bf16 autocast does.
Launcher, resources, report, logger and evaluation batch size never do (DESIGN,
"Run").
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from harness.config.settings import method_sections

# Keys that change how runs are planned, launched, logged or reported but not what
# a run computes: never in a run id
EXECUTION_KEYS = (
    "suite",
    "plugins",  # which code registers a method; its name is in the id
    "description",
    "methods",
    "labels",
    "seeds",
    "device",
    "threads",  # added back for CPU runs, where it changes the numbers
    "flush_denormal",  # added back for CPU runs where it is on
    "launcher",
    "parallel",
    "wait",
    "slurm",
    "results",
    "progress",
    "report",
    "published",  # a paper's numbers, for the report only
    "groups",  # named lists of methods, for claims
    "claims",  # a paper's claims, checked by the report
    "dry_run",
    "search",  # a trial's settings reach its id through per_method (harness.search)
    "logger",
    "per_method",  # merged into the method's config before its id is taken (config_for)
)
# where the data is and how fast it is read: the dataset enters by its fingerprint
EXECUTION_DATA_KEYS = ("path", "beton", "num_workers")
EXECUTION_EVAL_KEYS = ("batch_size",)
# Datasets whose pixels depend on data.loader (FFCV re-encodes and resizes with OpenCV)
LOADER_DATASETS = ("imagenet",)
# Keys the schema gained after run ids were first taken, with the default every earlier
# id was taken with: at that default a key is left out of the id, so adding a key to the
# schema orphans no stored result; set to anything else, it is in the id like any key.
# A new key that changes what a run computes goes here with its default.
ADDED_KEYS: dict[tuple[str, ...], Any] = {
    ("optim", "lr_decay"): 1.0,  # lr_schedule=exponential's factor (issue 33)
    ("eval", "bn_recompute"): False,  # batch-norm statistics recomputed at the end (issue 33)
    ("compile",): False,  # torch.compile of the training step (issue 32)
    ("data", "svhn_extra"): False,  # SVHN's extra images in the pool (issue 34)
    ("optim", "nesterov"): False,  # the FixMatch recipe (issue 34)
    ("data", "pad"): 0,
    ("optim", "decay_on"): "all",
    ("optim", "ema_warmup"): False,
    ("data", "holdout"): 0,  # the validation split (issue 36)
    # the passes that make targets keep the model's dropout (issue 34)
    **{
        (section, "teacher_dropout"): True
        for section in (
            *("fixmatch", "flexmatch", "freematch", "softmatch", "dash", "adamatch"),
            *("uda", "defixmatch", "pseudo_label", "mean_teacher", "mixmatch"),
            *("simmatch", "comatch"),  # new with the key, out of their ids alike
        )
    },
}


def run_relevant(
    cfg: DictConfig,
    stage_names: list[str],
    sections: tuple[str, ...] = (),
    *,
    reads_pool: bool = True,
    fingerprint: str = "",
    unlabeled_batch_size: int | None = None,
    precision: str = "bf16",
) -> dict[str, Any]:
    """The part of ``cfg`` that decides one run's numbers (what its id hashes), for a
    method with stages ``stage_names`` that reads the settings ``sections``, draws
    ``unlabeled_batch_size`` pool images a step (default: optim's) and trains at
    ``precision`` on CUDA."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(plain, dict)
    for key in EXECUTION_KEYS:
        plain.pop(key, None)
    for key in EXECUTION_DATA_KEYS:
        plain["data"].pop(key, None)
    for key in EXECUTION_EVAL_KEYS:
        plain["eval"].pop(key, None)
    plain["data"]["fingerprint"] = fingerprint
    if cfg.data.name not in LOADER_DATASETS:
        plain["data"].pop("loader")
    if not reads_pool:
        plain["optim"].pop("unlabeled_batch_size")
    elif unlabeled_batch_size is not None:
        plain["optim"]["unlabeled_batch_size"] = unlabeled_batch_size
    if cfg.model.pretrained:
        plain["model"]["pretrained"] = file_digest(cfg.model.pretrained)
    plain["schedule"] = {name: plain["schedule"][name] for name in stage_names}
    for name, section in method_sections().items():
        if name not in sections:
            plain.pop(name, None)
        else:
            for key in section.id_exclude:
                plain[name].pop(key, None)
    for path, default in ADDED_KEYS.items():
        _drop_at_default(plain, path, default)
    cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    plain["amp"] = cuda and precision == "bf16"
    if not cuda:
        plain["threads"] = cfg.threads
        if cfg.flush_denormal:  # off is the default every earlier id was taken with
            plain["flush_denormal"] = True
    return plain


def _drop_at_default(plain: dict, path: tuple[str, ...], default: Any) -> None:
    """Remove ``plain[path[0]]...[path[-1]]`` where it holds ``default``."""
    *parents, leaf = path
    for key in parents:
        plain = plain.get(key)
        if not isinstance(plain, dict):
            return
    if leaf in plain and plain[leaf] == default:
        del plain[leaf]


@lru_cache(maxsize=16)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def file_digest(path: str) -> str:
    """SHA-256 of a file's bytes (hashed once per process while it is unchanged)."""
    info = Path(path).stat()
    return _digest(str(Path(path).resolve()), info.st_size, info.st_mtime_ns)
