"""Datasets, splits and batches; see each module's docstring."""

from harness.data.datasets import (
    DATASETS,
    UNLABELED,
    Dataset,
    ImageSet,
    in_memory_dataset,
    load_dataset,
    register_dataset,
)
from harness.data.loaders import (
    augment_batch,
    center_crop,
    center_crop_batches,
    cycled_batches,
    epoch_batches,
    load_batches,
    normalize,
    reflect_pad,
)
from harness.data.randaugment import rand_augment
from harness.data.splits import Split, budget_key, draw_split, load_or_store_split

__all__ = [
    "DATASETS",
    "Dataset",
    "ImageSet",
    "Split",
    "UNLABELED",
    "augment_batch",
    "reflect_pad",
    "budget_key",
    "center_crop",
    "center_crop_batches",
    "cycled_batches",
    "draw_split",
    "in_memory_dataset",
    "epoch_batches",
    "load_batches",
    "load_dataset",
    "load_or_store_split",
    "normalize",
    "rand_augment",
    "register_dataset",
]
