"""The suite schema: every key a suite file or a ``key=value`` override may set.

OmegaConf structured configs, so merging and type checks are OmegaConf's. A
method family adds its own section (``harness.config.settings``); the engine's
schema names no method.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

# CPU threads of a run unless `threads=` says otherwise: a constant, so one run id means
# one result whichever launcher (and machine) runs it
DEFAULT_THREADS = 1
# the `suites` package's folder: the repo's suites/, or the installed package data
SUITES_DIR = Path(str(resources.files("suites")))
DEFAULT_SUITE = "digits"
LAUNCHER_NAMES = ("inprocess", "local_parallel", "slurm")  # harness.launch registers these
LOGGERS = ("csv", "tensorboard")
# the augmentation of one view (harness.engine.context.Context.prepare): the center crop,
# the suite's random crop + flip, or that then RandAugment + Cutout (harness.data.randaugment)
AUGMENTATIONS = ("none", "weak", "strong")
# harness.engine.loop.make_scheduler
LR_SCHEDULES = ("cosine", "constant", "linear_last_third", "exponential", "cosine_7_16")
DECAY_SCOPES = ("all", "weights")


@dataclass
class DataConfig:
    name: str = "digits"  # a registered dataset (harness.data.DATASETS)
    path: str | None = None  # where the files are, for datasets read from disk
    resize: int = 16  # images are stored at resize x resize (shorter side, then center square)
    crop: int = 14  # network input: random crops for training, the center crop for single-crop eval
    hflip: bool = False  # random horizontal flips in training (not for digits or letters)
    # training crops are drawn from the image padded by this many pixels on each side
    # with its mirror image (FixMatch's weak view: 4 px at 32, translations of 12.5%)
    pad: int = 0
    num_workers: int = 0  # loader processes (FFCV: threads) for datasets read from disk
    # how imagenet (and cifar10/cifar100/svhn/stl10) is read: ffcv (data.beton) |
    # torchvision (ImageFolder + PIL, or the archive in memory, data.path) | auto = ffcv
    # where it is installed and data.beton is set; resolved before run ids
    loader: str = "auto"
    beton: str | None = None  # folder of train.beton/val.beton (python -m harness.data.prepare)
    # svhn only: extra_32x32.mat's 531k images join the unlabeled pool (never labeled), as
    # the classic SSL protocols use it; in a run's id where on (ADDED_KEYS)
    svhn_extra: bool = False
    # the validation split: labeled training images held out per seed, before the labeled
    # subset is drawn (a class-balanced count, or a fraction in (0, 1) of each class);
    # evaluations during training read it, the official test set is read once at the
    # end. 0: none (val is the test set, as in every earlier run id)
    holdout: Any = 0


@dataclass
class ModelConfig:
    name: str = "vgg_small_2"  # a registered model (harness.models, @register_model)
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


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd | adam
    momentum: float = 0.9  # SGD's momentum (optim.name=sgd)
    # Nesterov momentum (sgd only): google-research/fixmatch's and USB's optimizer
    nesterov: bool = False
    weight_decay: float = 5e-4  # L2 weight decay, on the parameters optim.decay_on names
    # what weight_decay applies to: all (every trained parameter) | weights (conv and
    # linear weights, the parameters of two or more dimensions; biases and batch-norm
    # scales and shifts undecayed, as google-research/fixmatch decays only 'kernel'
    # variables and USB skips bias and batch norm)
    decay_on: str = "all"
    batch_size: int = 64  # labeled images per step
    unlabeled_batch_size: int = 64  # unlabeled images per step, for stages that use the pool
    # applied within each stage: cosine (1 -> 0) | constant | linear_last_third (constant,
    # then linear to 0 over the stage's last third) | exponential (x lr_decay per epoch)
    lr_schedule: str = "cosine"
    # cosine_7_16: the rate times cos(7 pi k / 16 K) at step k of K (FixMatch's decay: it
    # ends at cos(7 pi / 16) = 0.195 of the rate, not 0)
    # lr_schedule=exponential: the rate is multiplied by this after every epoch of the stage
    # (e.g. 0.9, suites/mnist_vat.yaml); in (0, 1]. Read by no other schedule
    lr_decay: float = 1.0
    grad_clip: float = 0.0  # max gradient norm; 0 turns clipping off
    # an EMA-evaluated method's decay at step k becomes min(decay, (1 + k) / (10 + k)),
    # so the evaluated average of a short run is not mostly its random start
    # (0.999^3000 = 5%); TensorFlow's ExponentialMovingAverage with num_updates
    ema_warmup: bool = False


@dataclass
class EvalConfig:
    batch_size: int = 256  # images per evaluation batch (speed only; not in a run id)
    every: int = 1  # evaluate val (single crop) every N epochs, for history.csv
    # before the last evaluation of the run's last trained stage, set every batch norm's
    # running statistics to their exact average over one training-mode pass of the images
    # the run trained on (harness.engine.batchnorm), as some papers' code tests
    bn_recompute: bool = False


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
class PublishedResult:
    """One published error (a paper's table), shown beside ours in the report."""

    method: str = ""  # a method name of this harness (e.g. baseline)
    labels: Any = None  # the label budget, as in `labels:` (e.g. 100)
    mean: float = 0.0  # published error, percent, in [0, 100]
    std: float = 0.0  # published std over its seeds (0 if none given)
    seeds: int = 0  # how many seeds the paper averaged (0 = not stated)
    metric: str = "top1_val"  # which of the report's error columns (ERROR_METRICS)
    source: str = ""  # citation, e.g. "Zhang, Lee & Lee 2016, Table 2"


@dataclass
class Claim:
    """A paper's claim as data: ``methods`` against ``against`` (method or group names of
    ``groups``; one side of one name is set against each of the other, else the two
    lists pair in order) on ``metric``, per label budget. The report tests each pair
    with the seed-level paired t-test, Holm-corrected across all the suite's claims
    (``harness.report.claims``)."""

    name: str = ""  # what the paper says, in a few words
    methods: list[str] = field(default_factory=list)
    against: list[str] = field(default_factory=lambda: ["baseline"])
    metric: str = "top1_val"  # one of ERROR_METRICS
    # lower | higher: the methods' error is below / above the other's; not_higher: it is
    # not above it by `margin` points or more (a non-inferiority test; harness.claims)
    direction: str = "lower"
    margin: float = 0.0  # points; for not_higher only
    labels: list[Any] = field(default_factory=list)  # budgets it speaks of; [] = every one


@dataclass
class SearchConfig:
    """A hyperparameter search whose trials are ordinary runs (``harness.search``):
    ``search.space.<method>.<key>`` = a list of values, or ``{low, high, log, int}``;
    the same number of trials for every method searched, each read on the validation
    split (``data.holdout``), then the suite's seeds train the chosen settings."""

    trials: int = 0  # per method searched; 0 = no search
    sampler: str = "tpe"  # grid | random | tpe (Optuna's samplers)
    batch: int = 1  # trials launched at once (a SLURM array each); tpe learns between batches
    seed: int = 0  # the sampler's seed (trials train at the suite's first seed and budget)
    # <method>.<key>: a list of values or {low, high, log, int} (docs/tuning.md)
    space: dict[str, Any] = field(default_factory=dict)


@dataclass
class SlurmConfig:
    """What ``launcher=slurm`` asks SLURM for, per job (one job = one run); never a run's id.

    A job that reaches ``time_min`` (or is preempted) gets SIGUSR2 ``signal_delay_s``
    before the end, is requeued by submitit and resumes from its last epoch
    checkpoint; ``max_num_timeout`` bounds how often a run may run out of time.
    """

    partition: str = ""  # "" = the cluster's default partition
    nodes: int = 1  # one node per run (DDP spans the GPUs of one node)
    gpus_per_node: int = 0  # GPUs per job (device=cuda needs at least 1)
    # processes per job, one DDP rank each; 0 = one per GPU (gpus_per_node), or 1
    tasks_per_node: int = 0
    cpus_per_task: int = 2  # CPU cores per DDP process (the run uses `threads` of them)
    mem_gb: float = 8.0  # memory per job
    time_min: int = 60  # wall-time limit of one job
    array_parallelism: int = 256  # at most this many tasks of one array run at once
    max_array_size: int = 0  # tasks per array; 0 = the cluster's MaxArraySize
    max_num_timeout: int = 3  # requeues after a time-out before a run counts as failed
    signal_delay_s: int = 90  # SIGUSR2 this long before the time limit
    account: str = ""  # --account ("" = none)
    qos: str = ""  # --qos ("" = none)
    constraint: str = ""  # --constraint, e.g. a GPU type ("" = none)
    setup: list[str] = field(default_factory=list)  # shell lines run before the job
    additional: dict[str, Any] = field(default_factory=dict)  # more `#SBATCH --key=value`
    report_mem_gb: float = 4.0  # the aggregation (report) job
    poll_s: float = 5.0  # how often `wait=true` asks SLURM


@dataclass
class SuiteConfig:
    """Every key a suite file or a ``key=value`` override may set."""

    suite: str = DEFAULT_SUITE  # a suite in suites/ or a path to a YAML file of one's own
    description: str = ""  # one line on what the suite is for
    methods: list[str] = field(default_factory=lambda: ["baseline"])  # or ["all"]
    labels: list[Any] = field(default_factory=lambda: [100])  # total count (int) or fraction
    seeds: list[int] = field(default_factory=lambda: [0])  # split seed = train seed
    search: SearchConfig = field(default_factory=SearchConfig)
    # modules of the user's own code to import first: they register methods, models,
    # datasets (harness.plugins); installed packages use the entry points instead
    plugins: list[str] = field(default_factory=list)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    # stage name -> length and learning rate; which stages exist is the method's choice
    schedule: dict[str, StageSchedule] = field(default_factory=dict)
    eval: EvalConfig = field(default_factory=EvalConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    # method name -> keys that differ for that method's runs (its own model, a stage's
    # length), merged over the suite's (harness.config.config_for); what a run trains
    # with, so its run id and config.yaml hold the merged values. Plan, launch and report
    # keys are the suite's alone (PER_METHOD_REFUSED)
    per_method: dict[str, Any] = field(default_factory=dict)
    # a paper's numbers for these methods and budgets: the report's published.md sets
    # them beside ours (never a run's id)
    published: list[PublishedResult] = field(default_factory=list)
    # named lists of methods that claims may name instead of a method (never a run's id)
    groups: dict[str, list[str]] = field(default_factory=dict)
    # a paper's claims, checked by the report with the seed-level test (never a run's id)
    claims: list[Claim] = field(default_factory=list)
    device: str = "cpu"  # cpu | cuda | auto; cuda turns on AMP and channels_last
    # torch intra-op threads. CPU results depend on the thread count, so it is the same
    # under every launcher (not the machine's core count) and part of a CPU run's id
    threads: int = DEFAULT_THREADS
    # flush subnormal floats to zero in CPU math (torch.set_flush_denormal): long CPU
    # runs stay at full speed once weight decay drives weights below 1.2e-38, where
    # x86 multiplies by microcode assist; changes a run's numbers once subnormals
    # appear, so a CPU run's id holds it when on (off keeps every earlier id and number)
    flush_denormal: bool = False
    # torch.compile each training step (the method's loss with the model, forward and
    # backward; harness.engine.loop.step_module): faster on a GPU once compiled; its
    # kernels round differently, so a run's id holds it where it is on (ADDED_KEYS)
    compile: bool = False
    launcher: str = "inprocess"  # inprocess | local_parallel | slurm
    parallel: int = 2  # launcher=local_parallel: runs at once
    wait: bool = False  # launcher=slurm: wait for the jobs (progress bar), then print the table
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    results: str = "results"  # the results root
    progress: bool = True  # tqdm bars on stderr
    dry_run: bool = False  # print the plan (ids, what each waits for, done or not); write nothing
    # where a run writes its curves. history.csv is always written, whatever this says:
    # the report reads it. "tensorboard" adds event files under <run>/tensorboard/ (per
    # step: loss terms, lr, a method's log_scalar values; val errors per evaluation);
    # logger=[csv] writes none. Never part of a run's id (harness.engine.loggers)
    logger: list[str] = field(default_factory=lambda: list(LOGGERS))
