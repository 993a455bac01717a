"""Suite files + command-line overrides -> one validated, typed config.

A suite is a YAML file in ``suites/``; the command line adds ``key=value``
overrides (dotted keys for nesting, lists in brackets). The schema below is an
OmegaConf structured config, so merging and type checks are OmegaConf's; this
module only turns its exceptions into one-line ``UsageError``s that name the
bad key or value and what would have been valid.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from harness.errors import UsageError, unknown

# CPU threads of a run unless `threads=` says otherwise: a constant, so one run id means
# one result whichever launcher (and machine) runs it
DEFAULT_THREADS = 1
# the `suites` package's folder: the repo's suites/, or the installed package data
SUITES_DIR = Path(str(resources.files("suites")))
DEFAULT_SUITE = "digits"


@dataclass
class DataConfig:
    name: str = "digits"  # a registered dataset (harness.data.DATASETS)
    path: str | None = None  # where the files are, for datasets read from disk
    resize: int = 16  # images are stored at resize x resize (shorter side, then center square)
    crop: int = 14  # network input: random crops for training, the center crop for single-crop eval
    hflip: bool = False  # random horizontal flips in training (not for digits or letters)
    num_workers: int = 0  # loader processes (FFCV: threads) for datasets read from disk
    # how imagenet is read: ffcv (data.beton) | torchvision (ImageFolder + PIL, data.path) |
    # auto = ffcv where it is installed and data.beton is set; resolved before run ids
    loader: str = "auto"
    beton: str | None = None  # folder of train.beton/val.beton (python -m harness.data.prepare)


@dataclass
class ModelConfig:
    name: str = "vgg_small_2"  # a registered architecture (harness.models.ARCHITECTURES)
    dropout: float = 0.5  # in the fc layers, as in VGG
    # step 1 of the paper's procedure from a checkpoint: a torchvision-format state_dict
    # file loaded into the classifier instead of training stage `pretrain` ("" or none =
    # train it)
    pretrained: str = ""


@dataclass
class StageSchedule:
    epochs: int = 1
    lr: float = 0.01
    # steps per epoch; 0 = one pass over the stage's data (the pool, for stages that use it)
    steps: int = 0
    # evaluate val every N epochs of this stage (and after its last); 0 = eval.every.
    # On a small CPU suite an evaluation can cost as much as 10 epochs of training
    eval_every: int = 0


# Reference weights (VGG-16, ImageNet) of the reconstruction losses, by level:
# [image, pool1, pool2, pool3, pool4]; pool5 is the decoder's input.
VGG16_RECON_WEIGHTS = [1e-4, 1e-12, 1e-12, 1e-12, 1e-10]


@dataclass
class DecodingConfig:
    """Settings of the decoding-pathway methods (methods/decoding.py).

    A reconstruction term is ``weight * sum((x_hat - x)^2) / (2 * batch)`` (Caffe's
    EuclideanLoss). The image target is the input in the reference's units,
    (pixel - mean) / 255, i.e. the normalized input times the dataset's std;
    a pool target is the encoder's own pooled activation. One weight per level,
    image first, so the list is as long as the encoder has macro-layers.

    The defaults are the reference's VGG-16 values in the reference's convention;
    the image term matches it exactly. Pool terms carry the scale of the encoder's
    activations: a torchvision VGG-16 reads (pixel/255 - mean)/std where Caffe's
    read pixel - mean, so its activations are roughly 1/(255 std) ~ 1/58 of
    Caffe's and the pool terms ~1/3400 as large at the same weight. At 1e-10 and
    1e-12 those terms are small in both; multiply the pool weights by ~3400 to
    match Caffe's pool terms.
    """

    weights: list[float] = field(default_factory=lambda: list(VGG16_RECON_WEIGHTS))
    samples: int = 8  # val images (with reconstructions) drawn into samples.png


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd | adam
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 64  # labeled images per step
    unlabeled_batch_size: int = 64  # unlabeled images per step, for stages that use the pool
    lr_schedule: str = "cosine"  # cosine | constant, applied within each stage
    grad_clip: float = 0.0  # max gradient norm; 0 turns clipping off


@dataclass
class EvalConfig:
    batch_size: int = 256
    every: int = 1  # evaluate val (single crop) every N epochs, for history.csv


@dataclass
class ReportConfig:
    """How ``python -m harness.report`` turns run records into tables (never a run's id)."""

    # "final" val single-crop error = median of the last k evaluations in history.csv
    # (never the best over training: that would select on the val set)
    last_k: int = 3
    alpha: float = 0.05  # significance level of the table's marks, after Holm's correction
    resamples: int = 2000  # paired bootstrap resamples for the CIs in stats.csv
    plots: bool = True  # seaborn figures (PNG + PDF) beside the tables


@dataclass
class SlurmConfig:
    """What ``launcher=slurm`` asks SLURM for, per job (one job = one run); never a run's id.

    A job that reaches ``time_min`` (or is preempted) gets SIGUSR2 ``signal_delay_s``
    before the end, is requeued by submitit and resumes from its last epoch
    checkpoint; ``max_num_timeout`` bounds how often a run may run out of time.
    """

    partition: str = ""  # "" = the cluster's default partition
    nodes: int = 1  # one node per run (DDP spans the GPUs of one node)
    gpus_per_node: int = 0
    # processes per job, one DDP rank each; 0 = one per GPU (gpus_per_node), or 1
    tasks_per_node: int = 0
    cpus_per_task: int = 2  # CPU cores per DDP process (the run uses `threads` of them)
    mem_gb: float = 8.0
    time_min: int = 60  # wall-time limit of one job
    array_parallelism: int = 256  # at most this many tasks of one array run at once
    max_array_size: int = 0  # tasks per array; 0 = the cluster's MaxArraySize
    max_num_timeout: int = 3  # requeues after a time-out before a run counts as failed
    signal_delay_s: int = 90  # SIGUSR2 this long before the time limit
    account: str = ""
    qos: str = ""
    constraint: str = ""
    setup: list[str] = field(default_factory=list)  # shell lines run before the job
    additional: dict[str, Any] = field(default_factory=dict)  # more `#SBATCH --key=value`
    report_mem_gb: float = 4.0  # the aggregation (report) job
    poll_s: float = 5.0  # how often `wait=true` asks SLURM


@dataclass
class SuiteConfig:
    """Every key a suite file or a ``key=value`` override may set."""

    suite: str = DEFAULT_SUITE
    description: str = ""
    methods: list[str] = field(default_factory=lambda: ["baseline"])  # or ["all"]
    labels: list[Any] = field(default_factory=lambda: [100])  # total count (int) or fraction
    seeds: list[int] = field(default_factory=lambda: [0])  # split seed = train seed
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    # stage name -> length and learning rate; which stages exist is the method's choice
    schedule: dict[str, StageSchedule] = field(default_factory=dict)
    eval: EvalConfig = field(default_factory=EvalConfig)
    decoding: DecodingConfig = field(default_factory=DecodingConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    device: str = "cpu"  # cpu | cuda | auto; cuda turns on AMP and channels_last
    # torch intra-op threads. CPU results depend on the thread count, so it is the same
    # under every launcher (not the machine's core count) and part of a CPU run's id
    threads: int = DEFAULT_THREADS
    launcher: str = "inprocess"  # inprocess | local_parallel | slurm
    parallel: int = 2  # launcher=local_parallel: runs at once
    wait: bool = False  # launcher=slurm: wait for the jobs (progress bar), then print the table
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    results: str = "results"  # the results root
    progress: bool = True  # tqdm bars on stderr
    dry_run: bool = False  # print the plan (ids, what each waits for, done or not); write nothing


# Keys that change how runs are planned, launched or reported but not what a run
# computes: never in a run id (DESIGN, "Run").
EXECUTION_KEYS = (
    "suite",
    "description",
    "methods",
    "labels",
    "seeds",
    "device",
    "threads",  # added back for CPU runs, where it changes the numbers
    "launcher",
    "parallel",
    "wait",
    "slurm",
    "results",
    "progress",
    "report",
    "dry_run",
)
# where the data is and how fast it is read: the dataset enters by its fingerprint
EXECUTION_DATA_KEYS = ("path", "beton", "num_workers")
EXECUTION_EVAL_KEYS = ("batch_size",)
# Datasets whose pixels depend on data.loader (FFCV re-encodes and resizes with OpenCV)
LOADER_DATASETS = ("imagenet",)
# Sections that only some methods read: in a run id only if its method declares them,
# less the keys that only draw pictures
METHOD_SECTIONS = {"decoding": ("samples",)}

_LIST_KEYS = ("methods", "labels", "seeds")


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
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or not key:
            raise UsageError(f"argument {arg!r} is not of the form key=value")
        if key in _LIST_KEYS and not value.strip().startswith("["):
            value = f"[{value}]"
        dotlist.append(f"{key}={value}")
    return dotlist


def _valid_keys(dotted: str) -> list[str]:
    """The keys valid beside ``dotted``, a dotted path into the schema."""
    cls: Any = SuiteConfig
    for part in dotted.split(".")[:-1]:
        if cls is None:
            break
        if cls is SuiteConfig and part == "schedule":
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
    cfg = OmegaConf.structured(SuiteConfig)
    try:
        cfg = OmegaConf.merge(cfg, OmegaConf.create(suite_yaml))
    except OmegaConfBaseException as error:
        raise _explain(error, f"suite file {path.name}") from None
    try:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(rest))
        OmegaConf.to_container(cfg, resolve=True)  # surfaces bad ${...} interpolations now
    except OmegaConfBaseException as error:
        raise _explain(error, "the command line") from None
    except yaml.YAMLError as error:
        first = str(error).splitlines()[0]
        raise UsageError(f"an override is not valid YAML ({first}): {' '.join(rest)}") from None
    _resolve(cfg)
    _check_values(cfg)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def ffcv_installed() -> bool:
    import importlib.util

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


def _check_values(cfg: DictConfig) -> None:
    """Range and choice checks OmegaConf's types cannot express."""
    _choice("device", cfg.device, ("cpu", "cuda", "auto"))
    _choice("optim.name", cfg.optim.name, ("sgd", "adam"))
    _choice("optim.lr_schedule", cfg.optim.lr_schedule, ("cosine", "constant"))
    _choice("data.loader", cfg.data.loader, ("auto", "ffcv", "torchvision"))
    from harness.launchers import LAUNCHERS  # late: launchers import the trainer

    _choice("launcher", cfg.launcher, tuple(LAUNCHERS))
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
    if not 0 <= cfg.model.dropout < 1:
        raise UsageError(f"model.dropout must lie in [0, 1), got {cfg.model.dropout}")
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
    if any(not w >= 0 for w in cfg.decoding.weights):  # `not >=` also catches nan
        raise UsageError(f"decoding.weights must all be >= 0, got {list(cfg.decoding.weights)}")
    if not 0 < cfg.report.alpha < 1:
        raise UsageError(f"report.alpha must lie in (0, 1), got {cfg.report.alpha}")
    if cfg.decoding.samples < 0:
        raise UsageError(f"decoding.samples must be >= 0, got {cfg.decoding.samples}")


def run_relevant(
    cfg: DictConfig,
    stage_names: list[str],
    sections: tuple[str, ...] = (),
    *,
    reads_pool: bool = True,
    fingerprint: str = "",
) -> dict[str, Any]:
    """The part of the config that decides one run's numbers (what its id hashes).

    Only what the method's training reads counts: the schedule of its own stages,
    the method sections it declares (``sections``), the unlabeled batch size only
    where a stage draws from the pool (``reads_pool``). The dataset enters by its
    content ``fingerprint``, not its path, so a moved dataset keeps every result;
    a ``model.pretrained`` file by the hash of its bytes. The thread count enters
    CPU runs, whose results depend on it; on CUDA bf16 autocast does.
    """
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
    if cfg.model.pretrained:
        plain["model"]["pretrained"] = file_digest(cfg.model.pretrained)
    plain["schedule"] = {name: plain["schedule"][name] for name in stage_names}
    for key, pictures_only in METHOD_SECTIONS.items():
        if key not in sections:
            plain.pop(key)
        else:
            for name in pictures_only:
                plain[key].pop(name, None)
    cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    plain["amp"] = cuda
    if not cuda:
        plain["threads"] = cfg.threads
    return plain


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
