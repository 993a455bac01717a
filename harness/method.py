"""The method contract and registry.

A method says *what* is trained; the trainer (``harness.engine.lifecycle``) says *how*.
A method provides:

- ``build_model(encoder, dataset)``: the module it trains, built around the
  suite's encoder (the baseline returns it as is; a method may wrap it with
  parts of its own, keeping it as ``.encoder``); ``dataset`` gives the
  channels, classes and normalization;
- ``stages()``: its ordered training stages. Each names its schedule key in the
  suite, which parameters train, whether it draws labeled and/or unlabeled
  batches, and whether it is taken from another run instead of trained
  (``starts_from``: the same stage of that method's run on the same split and
  seed; the plan runs that run first);
- ``loss(model, stage, batch)``: a dict of named scalar terms (each logged on
  its own); the trainer minimizes their sum.

A method that needs more of the model than features and a classifier says so
in ``needs`` (``harness.models.CAPABILITIES``); ``harness.run`` refuses a model
that lacks it with one line before any work.

Optional hooks let the classic SSL methods plug in without touching the trainer:

- ``config_sections``: its family's own suite sections
  (``harness.config.register_settings``; they enter its run ids and no other
  method's);
- ``labeled_view`` and ``unlabeled_views``: the augmentation of the labeled batch
  and of each view of an unlabeled image (``harness.config.AUGMENTATIONS``: ``weak``
  is the suite's crop and flip, ``strong`` adds RandAugment and Cutout), drawn from
  the run's seeded generator: FixMatch's weak/strong pair, MixMatch's K weak views;
- ``Batch.step`` / ``Batch.total_steps`` (and ``Batch.progress``): where the step
  is in its stage, for ramp-ups (``harness.ramps``) and schedules;
- ``after_step(model, stage, batch)``: after each optimizer step (a Mean Teacher EMA
  update: ``harness.ema``); the EMA copy lives in the model, so every checkpoint
  holds it;
- ``eval_model`` (the network every val/train error is measured with: the EMA
  teacher for Mean Teacher and FixMatch) and ``also_evaluate`` (other networks
  whose val error goes into ``metrics.json`` beside it, e.g. ``student_top1_val``);
- ``precision``: ``bf16`` (autocast on CUDA) or ``fp32`` (never); a region that must
  stay fp32 under bf16 (VAT's perturbation) uses ``full_precision``;
- ``val_report`` (extra numbers on val, and pictures, for ``metrics.json``) and
  ``state_dict``/``load_state_dict`` (state kept beside the model, saved in every
  checkpoint).

Pseudo-Label makes its targets inside ``loss``; a denoising method's noisy and
clean passes are two forward calls there.

A number worth watching that is not a loss term (FixMatch's mask rate, a
teacher-student agreement) is reported with ``self.log_scalar(name, value)``
from ``loss`` or ``after_step``: the trainer collects it after each step
(``pop_scalars``) and logs it per step (TensorBoard tag ``method/<name>``) but
never adds it to the loss. A tensor is kept detached on its device, so logging
costs no device sync; the last value of a name in a step counts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from omegaconf import DictConfig
from torch import nn

from harness.ema import trained_parameters
from harness.errors import UsageError, unknown
from harness.models import Encoder, classifier_of
from harness.plugins import import_plugins

if TYPE_CHECKING:
    from pathlib import Path

    from harness.data import Dataset


@dataclass(frozen=True)
class Stage:
    name: str  # its key under the suite's `schedule` (epochs, lr)
    trains: str = "all"  # parameter group, resolved by Method.parameters
    labeled: bool = True  # draws labeled batches
    unlabeled: bool = False  # draws unlabeled batches; then an epoch is a pass over the pool
    # step 1 of the paper's procedure: with `model.pretrained` set, this stage loads
    # that checkpoint into the classifier instead of training
    initializes: bool = False
    # a method whose run (same suite, split and seed) trains this stage; its weights
    # at the end of the stage are copied into the classifier, not retrained
    starts_from: str | None = None


@dataclass
class Batch:
    """One training step's inputs, already augmented and normalized on the device."""

    x: torch.Tensor | None = None  # labeled images
    y: torch.Tensor | None = None  # their labels
    x_views: list[torch.Tensor] = field(default_factory=list)  # Method.labeled_extra_views
    u: list[torch.Tensor] = field(default_factory=list)  # views of the unlabeled images
    # under DDP: world size x this rank's rows / the batch's rows. The loss is scaled by
    # it, so that DDP's mean over ranks is the whole batch's mean also when a batch does
    # not divide evenly (1.0 on one process)
    share: float = 1.0
    # this step's index in its stage (from 0) and the stage's steps: ramp-ups read them
    step: int = 0
    total_steps: int = 1
    # where this rank's unlabeled images sit in the split's pool (0 .. pool_size - 1), for
    # a method that keeps a record per pool image (FlexMatch's pseudo-labels)
    u_index: torch.Tensor | None = None
    pool_size: int = 0
    # ... and where its labeled images sit in the split's labeled subset, in a stage that
    # draws from the pool (SimMatch's memory bank keeps a slot per labeled image)
    x_index: torch.Tensor | None = None
    labeled_size: int = 0

    @property
    def progress(self) -> float:
        """The fraction of the stage done before this step, in [0, 1)."""
        return self.step / max(self.total_steps, 1)


PRECISIONS = ("bf16", "fp32")


def full_precision(device_type: str) -> AbstractContextManager[None]:
    """A region computed in fp32 even inside the trainer's bf16 autocast (VAT's
    perturbation: a power iteration on a difference of two nearby outputs loses its
    direction in bf16's 8-bit mantissa). Cast tensors made outside with ``.float()``."""
    return torch.autocast(device_type, enabled=False)


class Method:
    """Base class: supervised cross-entropy on the labeled batch, one view per role."""

    name: ClassVar[str] = ""
    # the augmentation of the labeled batch, and of each view of an unlabeled image
    # (harness.config.AUGMENTATIONS); a method whose settings choose them sets them in __init__
    labeled_view: str = "weak"
    unlabeled_views: tuple[str, ...] = ("weak",)
    # more views of the labeled images, in Batch.x_views (DeFixMatch's strong one)
    labeled_extra_views: tuple[str, ...] = ()
    # "bf16": the trainer autocasts the loss on CUDA; "fp32": never (PRECISIONS)
    precision: ClassVar[str] = "bf16"
    config_sections: ClassVar[tuple[str, ...]] = ()  # suite sections it reads (run-id input)
    # what the model must offer beyond features and a classifier (harness.models.CAPABILITIES:
    # "macro_layers", "switches", "dense"); a model that lacks one is refused before any work
    needs: ClassVar[frozenset[str]] = frozenset()
    # the registered models (model.name) it can train, where it needs a model of its own
    # kind (a family's own encoders); empty = any model that offers `needs`
    models: ClassVar[tuple[str, ...]] = ()

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg

    def build_model(self, encoder: Encoder, dataset: Dataset) -> nn.Module:
        return encoder

    def stages(self) -> list[Stage]:
        raise NotImplementedError

    def unlabeled_batch_size(self) -> int:
        """Images per unlabeled batch (FixMatch: mu x the labeled batch)."""
        return int(self.cfg.optim.unlabeled_batch_size)

    def parameters(self, model: nn.Module, stage: Stage) -> Iterator[nn.Parameter]:
        """The stage's trained parameters: all but an EMA copy's (``harness.ema``)."""
        if stage.trains != "all":
            raise ValueError(f"{self.name}: unknown parameter group {stage.trains!r}")
        return trained_parameters(model)

    def loss(self, model: nn.Module, stage: Stage, batch: Batch) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def after_step(self, model: nn.Module, stage: Stage, batch: Batch) -> None:
        """Called after every optimizer step (e.g. an EMA teacher update)."""

    def eval_model(self, model: nn.Module) -> Encoder:
        """The network whose errors the run reports (per epoch and at the end): the
        classifier it trains, or a copy kept beside it (an EMA teacher)."""
        return classifier_of(model)

    def also_evaluate(self, model: nn.Module) -> dict[str, Encoder]:
        """Other networks scored on val at the end, as ``<name>_top1_val`` and
        ``<name>_top5_val`` in ``metrics.json`` (the student beside its teacher)."""
        return {}

    def log_scalar(self, name: str, value: torch.Tensor | float) -> None:
        """Log ``value`` (one number) as ``name`` at the current step, beside the loss
        terms but not summed into the loss. Kept detached (no sync, no graph) until the
        trainer takes it with ``pop_scalars``; logged outside a training step, it is
        dropped at the next one's start."""
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                raise ValueError(
                    f"{self.name}: log_scalar({name!r}) takes one number, "
                    f"got a tensor of shape {tuple(value.shape)}"
                )
            value = value.detach()
        else:
            value = torch.tensor(float(value))
        self._pending_scalars()[name] = value

    def pop_scalars(self) -> dict[str, torch.Tensor]:
        """The scalars logged since the last call, emptied (the trainer's side of
        ``log_scalar``)."""
        scalars = dict(self._pending_scalars())
        self._pending_scalars().clear()
        return scalars

    def _pending_scalars(self) -> dict[str, torch.Tensor]:
        # created on first use: a subclass's __init__ need not call super().__init__
        return self.__dict__.setdefault("_logged_scalars", {})

    def val_report(
        self,
        model: nn.Module,
        val_batches: Iterable[torch.Tensor],
        folder: Path | None,
        reduce: Callable[[torch.Tensor], torch.Tensor] = lambda sums: sums,
    ) -> dict[str, float]:
        """Extra numbers for ``metrics.json`` from normalized center-cropped val
        batches, and any pictures written into the run ``folder``.

        Under DDP every rank calls it at once with its own contiguous block of val
        (rank 0's starts with the first val images) and ``folder`` only on rank 0;
        ``reduce`` sums a tensor over the ranks, so a method adds up sums before it
        divides. No rank then waits long for another.
        """
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""


METHODS: dict[str, type[Method]] = {}


def can_train(method: type[Method], model_name: str) -> bool:
    """Whether ``model_name`` is one the method trains (any, without a ``models`` list)."""
    return not method.models or model_name in method.models


def check_model(method: type[Method], model_name: str) -> None:
    """Refuse (UsageError) a ``model.name`` outside the method's own ``models`` list."""
    if not can_train(method, model_name):
        raise UsageError(
            f"{method.name} trains only model.name={' | '.join(method.models)}; "
            f"got model.name={model_name}"
        )


def register_method(name: str) -> Callable[[type[Method]], type[Method]]:
    def add(cls: type[Method]) -> type[Method]:
        if name in METHODS and METHODS[name] is not cls:
            raise ValueError(f"method {name!r} registered twice")
        if cls.precision not in PRECISIONS:
            raise ValueError(f"method {name!r}: precision {cls.precision!r} not in {PRECISIONS}")
        cls.name = name
        METHODS[name] = cls
        return cls

    return add


def available_methods() -> list[str]:
    """Every registered method: the baseline first, then in registration order (the
    order of ``methods=all``)."""
    import_plugins("method")
    return sorted(METHODS, key=lambda name: name != "baseline")


TRIAL_MARK = "@"  # mixmatch@1f2e3d4c: a search trial of mixmatch (harness.search)


def get_method(name: str) -> type[Method]:
    """The registered method ``name``; a search trial's name (``<method>@<tag>``) is
    its method's, with the trial's settings under ``per_method``."""
    import_plugins("method")
    base = name.split(TRIAL_MARK, 1)[0]
    if base not in METHODS:
        raise unknown("method", name, METHODS)
    return METHODS[base]
