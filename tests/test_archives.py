"""CIFAR-10/100, SVHN and STL-10 from their official files: the same pixels and labels
as torchvision's own dataset classes, image for image; pool-only images in every pool;
bad files one line, exit 2.

The archives cannot be downloaded here: ``tests/official_archives.py`` writes small
ones in exactly the official formats, from real (Fashion-)MNIST images.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
import yaml
from omegaconf import OmegaConf

from harness._torchvision_compat import import_torchvision
from harness.config import ffcv_installed, load_config
from harness.data import load_batches, load_dataset, load_or_store_split
from harness.data.archive_betons import NATIVE_SIZE, prepare_archive
from harness.data.archives import (
    CIFAR10_CLASSES,
    CIFAR100_CLASSES,
    STL10_CLASSES,
    read_stl10_folds,
)
from harness.data.datasets import UNLABELED
from harness.data.prepare import main as prepare_main
from harness.data.splits import draw_split, every_image_labeled
from harness.errors import UsageError
from harness.run import main as run_main
from tests.conftest import needs_fashion_mnist, run_cli
from tests.official_archives import (
    cifar100_labels,
    python2_pickle,
    write_cifar10,
    write_cifar100,
    write_stl10,
    write_svhn,
)
from tests.test_ladder import needs_mnist

pytestmark = needs_fashion_mnist
# the sizes of the archives most tests read (5 batches of 120 CIFAR training images)
CIFAR = {"per_batch": 120, "test": 250}
SVHN = {"train": 500, "test": 250, "extra": 700}
STL10 = {"train": 300, "test": 200, "unlabeled": 600, "fold": 100}


def data_cfg(name: str, path: Path | None, resize: int = 32, svhn_extra: bool = False):
    path = None if path is None else str(path)
    return OmegaConf.create(
        {"name": name, "path": path, "resize": resize, "svhn_extra": svhn_extra}
    )


def hwc(images: torch.Tensor) -> np.ndarray:
    """Our stored uint8 [N, C, H, W] as torchvision's [N, H, W, C] (CIFAR's ``data``)."""
    return images.permute(0, 2, 3, 1).numpy()


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """One torchvision root holding all four archives."""
    root = tmp_path_factory.mktemp("archives")
    write_cifar10(root, CIFAR["per_batch"], CIFAR["test"])
    write_cifar100(root, 5 * CIFAR["per_batch"], CIFAR["test"])
    write_stl10(root, **STL10)
    if needs_mnist.args[0]:  # no MNIST: the SVHN tests skip
        return root
    write_svhn(root, SVHN)
    return root


@pytest.fixture
def tv(monkeypatch):
    """torchvision.datasets with the md5 checks of the official archives turned off
    (our files hold other images); everything else is torchvision's own code."""
    datasets = import_torchvision().datasets
    import torchvision.datasets.cifar as cifar

    monkeypatch.setattr(cifar, "check_integrity", lambda *args, **kwargs: True)
    for cls in (datasets.CIFAR10, datasets.SVHN, datasets.STL10):
        monkeypatch.setattr(cls, "_check_integrity", lambda self: True)
    return datasets


def assert_same_images(ours, reference, labels) -> int:
    """Every image and label of ``ours`` (an ImageSet) equals torchvision's ``reference``,
    read one by one through its ``__getitem__`` (a PIL image); how many were compared."""
    assert len(ours) == len(reference)
    for index in range(len(reference)):
        image, label = reference[index]
        np.testing.assert_array_equal(ours.images[index].permute(1, 2, 0), np.asarray(image))
        assert ours.targets[index] == label
    np.testing.assert_array_equal(ours.targets, np.asarray(labels))
    return len(reference)


def test_cifar10_and_cifar100_give_torchvisions_pixels_and_labels(root, tv):
    compared = 0
    for name, cls, classes in (
        ("cifar10", tv.CIFAR10, CIFAR10_CLASSES),
        ("cifar100", tv.CIFAR100, CIFAR100_CLASSES),
    ):
        ours = load_dataset(data_cfg(name, root))
        for part, train in ((ours.train, True), (ours.val, False)):
            reference = cls(str(root), train=train, download=False)
            np.testing.assert_array_equal(hwc(part.images), reference.data)
            compared += assert_same_images(part, reference, reference.targets)
        assert ours.classes == classes == tuple(reference.classes)
        assert ours.channels == 3 and ours.pool_only == 0
        assert len(ours.train) == 5 * CIFAR["per_batch"] and len(ours.val) == CIFAR["test"]
        # data.path may also be the archive's own folder: the same dataset
        folder = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}[name]
        again = load_dataset(data_cfg(name, root / folder))
        assert again.fingerprint == ours.fingerprint and again.mean == ours.mean
    assert compared == 2 * (5 * CIFAR["per_batch"] + CIFAR["test"])
    fine = load_dataset(data_cfg("cifar100", root)).train.targets
    np.testing.assert_array_equal(fine[:20], cifar100_labels(fine[:20] // 10, 0))


def test_cifar_mean_and_std_are_the_training_pixels_and_resize_keeps_the_layout(root):
    ours = load_dataset(data_cfg("cifar10", root))
    pixels = ours.train.images.double() / 255
    np.testing.assert_allclose(ours.mean, pixels.mean(dim=(0, 2, 3)), atol=1e-6)
    np.testing.assert_allclose(ours.std, pixels.std(dim=(0, 2, 3)), atol=1e-6)
    small = load_dataset(data_cfg("cifar10", root, resize=16))
    assert small.train.images.shape == (len(ours.train), 3, 16, 16)
    assert small.fingerprint == ours.fingerprint  # the same training set, at another size


@needs_mnist
def test_svhn_gives_torchvisions_pixels_and_extra_joins_the_pool_unlabeled(root, tv):
    ours = load_dataset(data_cfg("svhn", root))
    compared = 0
    for part, split in ((ours.train, "train"), (ours.val, "test")):
        reference = tv.SVHN(str(root), split=split, download=False)
        np.testing.assert_array_equal(part.images.numpy(), reference.data)
        compared += assert_same_images(part, reference, reference.labels)
        assert 0 in reference.labels  # digit 0, written as label 10 in the file
    assert ours.pool_only == 0

    extra = load_dataset(data_cfg("svhn", root, svhn_extra=True))
    reference = tv.SVHN(str(root), split="extra", download=False)
    train = SVHN["train"]
    np.testing.assert_array_equal(extra.train.images[:train], ours.train.images)
    np.testing.assert_array_equal(extra.train.images[train:].numpy(), reference.data)
    compared += len(reference)
    assert (extra.train.targets[train:] == UNLABELED).all()  # its labels are never read
    assert extra.pool_only == SVHN["extra"] and extra.fingerprint != ours.fingerprint
    assert extra.val.images.shape == ours.val.images.shape
    assert compared == sum(SVHN.values())

    split = draw_split(extra, 40, 0)
    assert split.labeled.max() < train and len(split.labeled) == 40
    assert set(range(train, train + SVHN["extra"])) <= set(split.unlabeled)
    everything = draw_split(extra, 1.0, 0)  # every labeled image labeled: extra is the pool
    np.testing.assert_array_equal(everything.labeled, np.arange(train))
    np.testing.assert_array_equal(everything.unlabeled, np.arange(train, len(extra.train)))
    assert not every_image_labeled("1.0", extra.pool_only) and every_image_labeled("1.0")


def test_stl10_gives_torchvisions_pixels_with_the_unlabeled_images_as_the_pool(root, tv):
    ours = load_dataset(data_cfg("stl10", root, resize=96))
    both = tv.STL10(str(root), split="train+unlabeled", download=False)
    # torchvision marks the unlabeled images -1, as we do
    np.testing.assert_array_equal(ours.train.images.numpy(), both.data)
    compared = assert_same_images(ours.train, both, both.labels)
    test = tv.STL10(str(root), split="test", download=False)
    compared += assert_same_images(ours.val, test, test.labels)
    assert compared == STL10["train"] + STL10["unlabeled"] + STL10["test"]
    assert ours.classes == STL10_CLASSES == tuple(test.classes)
    assert ours.pool_only == STL10["unlabeled"]
    assert (ours.train.targets[STL10["train"] :] == UNLABELED).all()
    folds = read_stl10_folds(root / "stl10_binary", STL10["train"])
    assert folds is not None and len(folds) == 10
    for k in (0, 3, 9):
        fold = tv.STL10(str(root), split="train", folds=k, download=False)
        np.testing.assert_array_equal(ours.train.images[folds[k]].numpy(), fold.data)
        np.testing.assert_array_equal(ours.train.targets[folds[k]], fold.labels)
    small = load_dataset(data_cfg("stl10", root, resize=32))
    assert small.train.images.shape == (STL10["train"] + STL10["unlabeled"], 3, 32, 32)


def write_suite(tmp_path: Path, data: dict, **keys) -> Path:
    suite = {
        "description": "an archive dataset from generated official files",
        "methods": ["baseline"],
        "labels": [40],
        "seeds": [0],
        "data": {"resize": 32, "crop": 28, "hflip": True, **data},
        "model": {"name": "vgg_small_3"},
        "optim": {"name": "adam", "batch_size": 16, "unlabeled_batch_size": 16},
        "schedule": {
            "pretrain": {"epochs": 1, "steps": 3, "lr": 0.001},
            "finetune": {"epochs": 1, "steps": 2, "lr": 0.0005},
            "train": {"epochs": 1, "steps": 0, "lr": 0.001},
        },
        "eval": {"batch_size": 250},
        "threads": 1,
        "progress": False,
        **keys,
    }
    path = tmp_path / f"{data['name']}_archive.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


def test_a_pool_stage_reads_every_unlabeled_only_image_and_its_id_holds_the_pool(
    root, tmp_path, monkeypatch
):
    """STL-10 with every labeled image labeled (budget 1.0) still has a pool: the
    100k unlabeled images (here 600). A method's pool stage reads exactly them, and
    the pool's batch size is in its run id, as for any budget with a pool."""
    import harness.engine.batches as batches
    from harness.method import get_method
    from harness.plan import make_plan

    suite = write_suite(tmp_path, {"name": "stl10", "path": str(root)})
    args = [f"suite={suite}", f"results={tmp_path / 'results'}", "labels=[1.0]"]
    cfg = load_config([*args, "methods=[pi_model]"])
    dataset = load_dataset(cfg.data)
    split = load_or_store_split(tmp_path, dataset, "1.0", 0, store=False)
    np.testing.assert_array_equal(split.labeled, np.arange(STL10["train"]))
    pool = np.flatnonzero(dataset.train.targets == UNLABELED)
    np.testing.assert_array_equal(split.unlabeled, pool)

    seen: list[list[np.ndarray]] = []
    real = batches.load_batches

    def recording(images, indices, *rest):
        seen.append(list(indices))
        return real(images, seen[-1], *rest)

    monkeypatch.setattr(batches, "load_batches", recording)
    (spec,) = make_plan(cfg)
    ctx = batches.Context(
        cfg, spec, dataset, split, torch.device("cpu"),
        torch.tensor(dataset.mean), torch.tensor(dataset.std),
    )  # fmt: skip
    method = get_method("pi_model")(cfg)
    (stage,) = method.stages()
    assert ctx.draws_pool(stage)
    steps = list(batches.stage_batches(ctx, method, stage, epoch=0))
    labeled_batches, pool_batches = seen
    np.testing.assert_array_equal(np.sort(np.concatenate(pool_batches)), pool)
    assert set(np.concatenate(labeled_batches)) <= set(split.labeled)
    assert all(b.y is not None and (b.y >= 0).all() for b in steps)  # only real labels

    other = load_config([*args, "methods=[pi_model]", "optim.unlabeled_batch_size=32"])
    assert make_plan(other)[0].run_id != spec.run_id


# each benchmark suite for a few CPU steps: its own settings (the FixMatch recipe, the
# published rows) but for the step counts and batches; CIFAR-10 on its WRN-28-2, the
# others on a small VGG at 32 px (their backbones are GPU networks: WRN-28-8, WRN-37-2)
SMOKE = [
    "methods=[fixmatch]",  # the suite's recipe and pool; CIFAR-10 adds its baseline
    "seeds=[0]",
    "schedule.pretrain.epochs=1",
    "schedule.pretrain.steps=2",
    "schedule.finetune.steps=1",
    "schedule.train.epochs=1",
    "schedule.train.steps=3",
    "optim.batch_size=8",
    "optim.unlabeled_batch_size=16",
    "fixmatch.mu=2",
    "eval.batch_size=250",
    "data.num_workers=0",
    "threads=1",
    "progress=false",
    "report.plots=false",
]
SUITE_SMOKE = {
    "cifar10": ["labels=[40]", "methods=[baseline,fixmatch]"],
    # the other three on a small VGG: the suite's recipe and table are what they check
    "cifar100": ["labels=[100]", "model.name=vgg_small_3"],
    "svhn": ["labels=[40]", "model.name=vgg_small_3"],
    "stl10": ["labels=[40]", "model.name=vgg_small_3", "data.resize=32", "data.crop=32"],
}


@pytest.mark.parametrize("name", list(SUITE_SMOKE))
def test_each_benchmark_suite_runs_through_the_cli_to_its_published_table(root, tmp_path, name):
    """``suite=<name>_ssl`` on the generated official files, to its report: the label
    budget drawn class-balanced (4 per class at 40 labels on CIFAR-10), the FixMatch
    recipe in the runs' configs, and the published rows beside ours."""
    if name == "svhn" and not (root / "train_32x32.mat").exists():
        pytest.skip("SVHN's archive is written from MNIST (bash tools/fetch_mnist.sh)")
    results = tmp_path / "results"
    done = run_cli(
        f"suite={name}_ssl", f"data.path={root}", f"results={results}", *SMOKE, *SUITE_SMOKE[name]
    )
    assert done.returncode == 0, done.stderr
    assert "| fixmatch |" in done.stdout
    report = results / f"{name}_ssl" / "report"
    published = (report / "published.md").read_text()
    assert "USB's reproduction" in published or "Sohn et al. 2020" in published
    for metrics in results.glob(f"{name}_ssl/*/metrics.json"):
        assert 0 <= json.loads(metrics.read_text())["top1_val"] <= 100
        config = yaml.safe_load((metrics.parent / "config.yaml").read_text())["config"]
        assert config["optim"]["nesterov"] is True and config["optim"]["decay_on"] == "weights"
        assert config["optim"]["lr_schedule"] == "cosine_7_16" and config["optim"]["ema_warmup"]
    if name == "cifar10":
        (stored,) = (results / "splits").glob("cifar10-*-labels40-seed0.npz")
        labeled = np.load(stored)["labeled"]
        targets = load_dataset(data_cfg("cifar10", root)).train.targets
        assert np.bincount(targets[labeled], minlength=10).tolist() == [4] * 10


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["data.svhn_extra=true"], "data.svhn_extra=true adds SVHN's extra_32x32.mat"),
        (["data.path=BROKEN"], "data_batch_2' does not exist; expected cifar-10-batches-py/"),
        (["data.path=ABSENT"], "does not exist (dataset cifar10)"),
    ],
)
def test_bad_archive_input_is_one_line_exit_2_and_writes_nothing(root, tmp_path, args, message):
    broken = tmp_path / "broken"
    shutil.copytree(root / "cifar-10-batches-py", broken / "cifar-10-batches-py")
    (broken / "cifar-10-batches-py" / "data_batch_2").unlink()
    absent = tmp_path / "none"
    args = [a.replace("BROKEN", str(broken)).replace("ABSENT", str(absent)) for a in args]
    results = tmp_path / "results"
    suite = write_suite(tmp_path, {"name": "cifar10", "path": str(root)})
    done = run_cli(f"suite={suite}", f"results={results}", *args)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not results.exists()


def small_archive(name: str, folder: Path) -> Path:
    """A tiny archive of ``name`` under ``folder`` (its torchvision root)."""
    if name == "cifar10":
        write_cifar10(folder, 8, 10)
    elif name == "cifar100":
        write_cifar100(folder, 20, 10)
    elif name == "svhn":
        write_svhn(folder, {"train": 12, "test": 10, "extra": 6})
    else:
        write_stl10(folder, 12, 10, 8, 4)
    return folder


def rewrite_pickle(path: Path, change) -> None:
    with open(path, "rb") as handle:
        entry = pickle.load(handle, encoding="bytes")
    change(entry)
    python2_pickle(path, entry)


def rewrite_mat(path: Path, change) -> None:
    mat = scipy.io.loadmat(path)
    change(mat)
    scipy.io.savemat(path, {key: mat[key] for key in ("X", "y") if key in mat})


class _Exploit:
    def __reduce__(self):
        return (print, ("a pickle ran code",))


def _truncate(path: Path, drop: int) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - drop])


CIFAR10_DIR, CIFAR100_DIR, STL10_DIR = "cifar-10-batches-py", "cifar-100-python", "stl10_binary"
BAD_FILES = {
    "cifar10 missing batch": (
        "cifar10",
        lambda f: (f / CIFAR10_DIR / "data_batch_3").unlink(),
        "data_batch_3' does not exist; expected cifar-10-batches-py/ (data_batch_1..5",
    ),
    "cifar10 label out of range": (
        "cifar10",
        lambda f: rewrite_pickle(
            f / CIFAR10_DIR / "test_batch", lambda e: e.__setitem__(b"labels", [10] * 10)
        ),
        "test_batch': labels range over 10..10, not 0..9",
    ),
    "cifar10 rows of another size": (
        "cifar10",
        lambda f: rewrite_pickle(
            f / CIFAR10_DIR / "data_batch_1", lambda e: e.__setitem__(b"data", e[b"data"][:, :3000])
        ),
        "data_batch_1': its 'data' rows hold 3000 bytes, not 3072",
    ),
    "cifar10 fewer labels than images": (
        "cifar10",
        lambda f: rewrite_pickle(f / CIFAR10_DIR / "data_batch_4", lambda e: e[b"labels"].pop()),
        "data_batch_4' does not hold 8 integer labels",
    ),
    "cifar10 truncated pickle": (
        "cifar10",
        lambda f: _truncate(f / CIFAR10_DIR / "data_batch_5", 100),
        "data_batch_5' is not a pickled CIFAR batch",
    ),
    "cifar10 pickle that runs code": (
        "cifar10",
        lambda f: python2_pickle(f / CIFAR10_DIR / "test_batch", {b"data": _Exploit()}),
        "test_batch' is not a pickled CIFAR batch (it refers to ",
    ),
    "cifar100 coarse labels only": (
        "cifar100",
        lambda f: rewrite_pickle(f / CIFAR100_DIR / "train", lambda e: e.pop(b"fine_labels")),
        "train' has no 'fine_labels'",
    ),
    "svhn missing test set": (
        "svhn",
        lambda f: (f / "test_32x32.mat").unlink(),
        "test_32x32.mat' does not exist; expected train_32x32.mat, test_32x32.mat",
    ),
    "svhn label 0": (
        "svhn",
        lambda f: rewrite_mat(f / "train_32x32.mat", lambda m: m["y"].__setitem__(0, 0)),
        "train_32x32.mat': labels range over 0..10, not 1..10",
    ),
    "svhn images of another size": (
        "svhn",
        lambda f: rewrite_mat(f / "test_32x32.mat", lambda m: m.__setitem__("X", m["X"][:28])),
        "test_32x32.mat': its X is not a uint8 [32, 32, 3, N] array (found uint8 (28, 32, 3, 10))",
    ),
    "svhn not a mat file": (
        "svhn",
        lambda f: (f / "train_32x32.mat").write_text("not MATLAB"),
        "train_32x32.mat' is not a MATLAB v5 file",
    ),
    "stl10 unlabeled cut short": (
        "stl10",
        lambda f: _truncate(f / STL10_DIR / "unlabeled_X.bin", 100),
        "unlabeled_X.bin' holds 221,084 bytes, not a whole number of 3 x 96 x 96 images",
    ),
    "stl10 a label missing": (
        "stl10",
        lambda f: _truncate(f / STL10_DIR / "train_y.bin", 1),
        "train_y.bin' does not hold 12 integer labels",
    ),
    "stl10 label 0": (
        "stl10",
        lambda f: (f / STL10_DIR / "test_y.bin").write_bytes(bytes(10)),
        "test_y.bin': labels range over 0..0, not 1..10",
    ),
    "stl10 fold beyond the training set": (
        "stl10",
        lambda f: (f / STL10_DIR / "fold_indices.txt").write_text("0 1 2\n" * 3 + "0 12\n" * 7),
        "fold_indices.txt' line 4 is not distinct 0-based indices into the 12 training",
    ),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_a_missing_or_wrong_file_is_one_line_naming_it(tmp_path, case, capsys):
    name, damage, message = BAD_FILES[case]
    if name == "svhn" and needs_mnist.args[0]:
        pytest.skip(needs_mnist.kwargs["reason"])
    folder = small_archive(name, tmp_path / "root")
    load_dataset(data_cfg(name, folder))  # whole, it loads
    damage(folder)
    with pytest.raises(UsageError) as error:
        load_dataset(data_cfg(name, folder, resize=31))  # a fresh load, not the cached one
    assert message in str(error.value) and "\n" not in str(error.value)
    assert "a pickle ran code" not in capsys.readouterr().out


@needs_mnist
def test_svhn_extra_without_its_file_and_a_missing_path_name_what_is_expected(tmp_path):
    folder = small_archive("svhn", tmp_path / "root")
    (folder / "extra_32x32.mat").unlink()
    load_dataset(data_cfg("svhn", folder))  # without extra, nothing is missing
    with pytest.raises(UsageError, match="extra_32x32.mat' does not exist"):
        load_dataset(data_cfg("svhn", folder, svhn_extra=True))
    for name in ("cifar10", "cifar100", "svhn", "stl10"):
        with pytest.raises(UsageError, match=f"dataset {name} needs data.path="):
            load_dataset(data_cfg(name, None))


def test_svhn_extra_is_in_a_run_id_only_where_on_and_is_set_for_the_whole_suite(root, tmp_path):
    from harness.config import run_relevant

    suite = write_suite(tmp_path, {"name": "svhn", "path": str(root)})
    off = load_config([f"suite={suite}"])
    on = load_config([f"suite={suite}", "data.svhn_extra=true"])
    assert "svhn_extra" not in run_relevant(off, ["pretrain", "finetune"])["data"]
    assert run_relevant(on, ["pretrain", "finetune"])["data"]["svhn_extra"] is True
    with pytest.raises(UsageError, match=r"per_method.baseline.data.svhn_extra: every method"):
        load_config([f"suite={suite}", "per_method={baseline: {data: {svhn_extra: true}}}"])


def test_stl10s_fold_budget_labels_the_predefined_fold_of_each_seed(root, tmp_path):
    """``labels=[fold]``: STL-10's 1,000-label protocol, fold ``seed`` of
    ``fold_indices.txt`` labeled, every other training image and the unlabeled set in
    the pool; stored and hash-checked like every split."""
    dataset = load_dataset(data_cfg("stl10", root))
    lines = (root / "stl10_binary" / "fold_indices.txt").read_text().splitlines()
    for seed in (0, 3):
        split = load_or_store_split(tmp_path, dataset, "fold", seed)
        fold = np.array(lines[seed].split(), dtype=np.int64)
        assert split.labeled.tolist() == sorted(fold.tolist())
        assert len(split.unlabeled) == len(dataset.train) - len(fold)
        assert (
            load_or_store_split(tmp_path, dataset, "fold", seed).content_hash == split.content_hash
        )
    with pytest.raises(
        UsageError, match=r"seed 10 is not one of stl10's folds; valid: seeds in 0..9"
    ):
        draw_split(dataset, "fold", 10)
    cifar = load_dataset(data_cfg("cifar10", root))
    with pytest.raises(UsageError, match="but dataset 'cifar10' has none"):
        draw_split(cifar, "fold", 0)


needs_ffcv = pytest.mark.skipif(not ffcv_installed(), reason="ffcv is not installed (.[ffcv])")


@pytest.fixture(scope="module")
def betons(root, tmp_path_factory) -> dict[str, Path]:
    """Each archive of ``root`` written as betons by ``prepare`` (SVHN with its extra)."""
    out = tmp_path_factory.mktemp("betons")
    names = ["cifar10", "cifar100", "stl10"] + ["svhn"] * (root / "extra_32x32.mat").exists()
    for name in names:
        done = prepare_archive(name, root, out / name, svhn_extra=name == "svhn", workers=1)
        assert done == [out / name / "train.beton", out / name / "val.beton"]
    return {name: out / name for name in names}


@needs_ffcv
@pytest.mark.parametrize("name", ["cifar10", "cifar100", "svhn", "stl10"])
def test_a_beton_gives_the_archives_pixels_labels_folds_and_splits(root, betons, name):
    """Through FFCV's loader (the one runs use), image for image in a shuffled order: the
    pixels and labels of the archive (pool-only images too), its mean/std, STL-10's folds,
    and the same fingerprint, so the same stored splits and run ids."""
    if name not in betons:
        pytest.skip("SVHN's archive is written from MNIST (bash tools/fetch_mnist.sh)")
    size, extra = NATIVE_SIZE[name], name == "svhn"
    archive = load_dataset(data_cfg(name, root, size, svhn_extra=extra))
    cfg = data_cfg(name, None, size, svhn_extra=extra)
    beton = load_dataset(OmegaConf.merge(cfg, {"loader": "ffcv", "beton": str(betons[name])}))
    assert (beton.fingerprint, beton.classes) == (archive.fingerprint, archive.classes)
    assert (beton.mean, beton.std) == (archive.mean, archive.std)
    assert [f.tolist() for f in beton.folds or ()] == [f.tolist() for f in archive.folds or ()]
    for part in ("train", "val"):
        ours, reference = getattr(beton, part), getattr(archive, part)
        assert ours.images is None and ours.beton is not None
        order = np.random.default_rng(0).permutation(len(reference))
        batches = [order[i : i + 100] for i in range(0, len(order), 100)]
        compared = 0
        for (x, y), (x_ref, y_ref) in zip(
            load_batches(ours, batches, size), load_batches(reference, batches, size), strict=True
        ):
            assert torch.equal(x, x_ref) and torch.equal(y, y_ref)
            compared += len(x)
        assert compared == len(reference)


@needs_ffcv
def test_prepare_skips_an_up_to_date_beton_and_refuses_bad_input(root, betons, tmp_path, capsys):
    before = {p.name: p.stat().st_mtime_ns for p in betons["cifar10"].iterdir()}
    prepare_archive("cifar10", root, betons["cifar10"], workers=1)
    assert {p.name: p.stat().st_mtime_ns for p in betons["cifar10"].iterdir()} == before
    cases = [
        (["cifar10", f"root={tmp_path / 'none'}", f"out={tmp_path / 'o'}"], "does not exist"),
        (["svhn", f"root={root}", f"out={tmp_path / 'o'}", "svhn_extra=maybe"], "not a valid"),
        (["cifar10", f"root={root}", f"out={tmp_path / 'o'}", "svhn_extra=true"], "is for svhn"),
        (["cifar100", f"out={tmp_path / 'o'}"], "prepare cifar100 needs root=DIR"),
    ]
    for args, message in cases:
        capsys.readouterr()
        assert prepare_main(args) == 2
        stderr = capsys.readouterr().err
        assert message in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert not (tmp_path / "o").exists()


@needs_ffcv
def test_a_run_from_the_beton_has_the_archives_id_and_numbers(root, betons, tmp_path, capsys):
    """``data.beton`` is where the pixels come from, not what a run computes: the same
    run id and the same final metrics as the run read from the archive. A beton that
    does not fit the suite (another size, another dataset) is one line, exit 2."""
    suite = write_suite(tmp_path, {"name": "cifar10", "path": str(root)})
    metrics = {}
    for name, extra in (("archive", []), ("beton", [f"data.beton={betons['cifar10']}"])):
        results = tmp_path / name
        assert run_main([f"suite={suite}", f"results={results}", "report.plots=false", *extra]) == 0
        (path,) = results.glob("*/*/metrics.json")
        numbers = json.loads(path.read_text())
        numbers.pop("seconds")
        metrics[name] = (path.parent.name, numbers)
    assert metrics["beton"] == metrics["archive"]
    for args, message in (
        ([f"data.beton={betons['cifar10']}", "data.resize=36"], "stores cifar10 at its native 32"),
        ([f"data.beton={betons['stl10']}"], "holds 'stl10', not cifar10"),
    ):
        capsys.readouterr()
        assert run_main([f"suite={suite}", f"results={tmp_path / 'bad'}", *args]) == 2
        stderr = capsys.readouterr().err
        assert message in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert not (tmp_path / "bad").exists()
