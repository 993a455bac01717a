"""The ImageNet path on a small real folder: FFCV .beton files, both loaders, pools, lists.

The folder is made from Fashion-MNIST (``python -m harness.data.prepare demo``): 4
classes of real JPEGs in the ImageNet layout, upsampled to 48x40 so the
center-square decode matters. FFCV runs happen in this process: importing ffcv
and compiling its pipeline costs ~20 s once per process.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from harness.config import ffcv_installed, load_config
from harness.data import load_batches, load_dataset, load_or_store_split
from harness.data.prepare import make_demo_folder, prepare_imagenet
from harness.data.splits import draw_split
from harness.errors import UsageError
from harness.run import main as run_main
from tests.conftest import FASHION_MNIST, needs_fashion_mnist, run_cli, tree

if not ffcv_installed() and os.environ.get("CI"):
    pytest.fail("CI must run the FFCV tests, but ffcv is not installed", pytrace=False)
pytestmark = [
    needs_fashion_mnist,
    pytest.mark.skipif(not ffcv_installed(), reason="ffcv is not installed (pip: .[ffcv])"),
]

# What the two loaders may disagree on. Their geometry is the same (center square,
# then resize); FFCV stores JPEGs re-encoded at quality 90 and resizes with OpenCV:
# measured 1.3/255 mean absolute pixel difference on this folder.
PIXEL_TOLERANCE = 3.0  # mean |FFCV - PIL| per pixel, in 0..255 units
EVAL_TOLERANCE = 2.0  # one model's top-1 val error read through each loader (4 of 200 images)
# Whole runs, one per loader: training on the slightly different pixels takes another
# path, so their errors differ as much as two seeds' do (measured: 5 points).
RUN_TOLERANCE = 8.0

SMALL = [
    "data.resize=36",
    "data.crop=28",
    "data.num_workers=0",  # torchvision: no worker processes; FFCV: one thread
    "model.name=vgg_small_3",
    "optim.name=adam",
    "optim.batch_size=32",
    "optim.unlabeled_batch_size=32",
    "eval.batch_size=100",
    "schedule.pretrain.epochs=6",
    "schedule.pretrain.steps=0",
    "schedule.pretrain.lr=0.002",
    "schedule.finetune.epochs=0",
    "decoding.weights=[0.01,0.0001,0.0001]",
    "threads=2",
    "device=cpu",
    "seeds=[0]",
    "progress=false",
    "report.plots=false",
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("imagenet-layout")
    make_demo_folder(root, FASHION_MNIST, classes=4, train_per_class=100, val_per_class=50)
    return root


@pytest.fixture(scope="module")
def betons(folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ffcv")
    # a new interpreter: FFCV's writer pool pages the file by its workers, as a user's run does
    done = run_cli(
        "imagenet", f"root={folder}", f"out={out}", module="harness.data.prepare", fresh=True
    )
    assert done.returncode == 0, done.stderr
    assert "100%" in done.stderr  # FFCV's progress bar
    return out


def imagenet_data(folder: Path, betons: Path, loader: str, resize: int = 36):
    return load_dataset(
        OmegaConf.create(
            {
                "name": "imagenet",
                "path": str(folder),
                "beton": str(betons),
                "loader": loader,
                "resize": resize,
            }
        )
    )


def test_prepare_writes_both_parts_and_skips_them_when_up_to_date(folder, betons):
    manifest = json.loads((betons / "train.json").read_text())
    assert manifest["classes"] == [f"n{c:08d}" for c in range(4)]
    assert len(manifest["files"]) == 400 and manifest["files"][0].startswith("n00000000/")
    before = tree(betons)
    assert prepare_imagenet(folder, betons) == [betons / "train.beton", betons / "val.beton"]
    assert tree(betons) == before  # nothing rewritten


def test_a_write_cut_short_is_refused_then_rewritten_alone(folder, betons, tmp_path):
    copy = tmp_path / "ffcv"
    shutil.copytree(betons, copy)
    beton = copy / "train.beton"
    with open(beton, "r+b") as handle:  # what a killed copy would leave
        handle.truncate(beton.stat().st_size // 2)
    (copy / ".train.beton.tmp-999").write_bytes(b"half")  # a killed write's temp file
    with pytest.raises(UsageError, match="cut short"):
        imagenet_data(folder, copy, "ffcv", resize=37)
    val_before = (copy / "val.beton").stat().st_mtime_ns
    prepare_imagenet(folder, copy)
    assert (copy / "val.beton").stat().st_mtime_ns == val_before
    assert beton.stat().st_size == (betons / "train.beton").stat().st_size
    assert not list(copy.glob(".train.beton.tmp-*"))
    assert len(imagenet_data(folder, copy, "ffcv", resize=37).train) == 400


def test_both_loaders_see_the_same_images_labels_and_split(folder, betons):
    ffcv, tv = imagenet_data(folder, betons, "ffcv"), imagenet_data(folder, betons, "torchvision")
    assert ffcv.fingerprint == tv.fingerprint and ffcv.classes == tv.classes
    np.testing.assert_array_equal(ffcv.train.targets, tv.train.targets)
    split_ffcv, split_tv = draw_split(ffcv, 0.1, 0), draw_split(tv, 0.1, 0)
    np.testing.assert_array_equal(split_ffcv.labeled, split_tv.labeled)
    # any order, repeats, a short last batch: exactly the images asked for
    order = np.array([5, 399, 5, 0, 250, 17, 17, 3, 100, 42, 7], dtype=np.int64)
    batches = [order[0:4], order[4:8], order[8:]]
    got_ffcv = list(load_batches(ffcv.train, batches, 36, num_workers=2))
    got_tv = list(load_batches(tv.train, batches, 36))
    assert [len(y) for _, y in got_ffcv] == [4, 4, 3]
    for (xf, yf), (xt, yt), batch in zip(got_ffcv, got_tv, batches, strict=True):
        np.testing.assert_array_equal(yf.numpy(), tv.train.targets[batch])
        np.testing.assert_array_equal(yt.numpy(), yf.numpy())
        assert xf.shape == xt.shape == (len(batch), 3, 36, 36) and xf.dtype == torch.uint8
        assert (xf.float() - xt.float()).abs().mean() < PIXEL_TOLERANCE
    np.testing.assert_array_equal(got_ffcv[0][0][0], got_ffcv[0][0][2])  # index 5 twice


def test_pool_batches_come_from_their_own_indices_and_a_tiny_labeled_set_still_batches(
    folder, betons, monkeypatch
):
    import harness.engine.batches as train
    from harness.method import get_method
    from harness.plan import make_plan

    args = [f"data.beton={betons}", "data.loader=ffcv", *SMALL, "labels=[4]"]
    args += ["schedule.decoder_layerwise.steps=0"]  # an epoch = one pass over the pool
    cfg = load_config(["suite=imagenet_1pct", "methods=[swwae_all]", *args])
    dataset = load_dataset(cfg.data)
    split = load_or_store_split(Path("unused"), dataset, "4", 0, store=False)
    assert len(split.labeled) == 4 < cfg.optim.batch_size  # one image per class
    assert not set(split.labeled) & set(split.unlabeled)
    seen: list[list[np.ndarray]] = []  # the batches of each load_batches call
    real = train.load_batches

    def recording(images, batches, *rest):
        seen.append(list(batches))
        return real(images, seen[-1], *rest)

    monkeypatch.setattr(train, "load_batches", recording)
    spec = next(s for s in make_plan(cfg) if s.method == "swwae_all")
    ctx = train.Context(
        cfg, spec, dataset, split, torch.device("cpu"),
        torch.tensor(dataset.mean), torch.tensor(dataset.std),
    )  # fmt: skip
    method = get_method("swwae_all")(cfg)
    stages = {s.name: s for s in method.stages()}
    pretrain = list(train.stage_batches(ctx, method, stages["pretrain"], epoch=0))
    assert [len(b.x) for b in pretrain] == [4]  # smaller than a batch: still one batch
    assert set(np.concatenate(seen[0])) == set(split.labeled)
    seen.clear()
    joint = list(train.stage_batches(ctx, method, stages["decoder_layerwise"], epoch=0))
    labeled_batches, pool_batches = seen
    assert len(pool_batches) == len(labeled_batches) == len(joint)
    pool = np.concatenate(pool_batches)
    np.testing.assert_array_equal(np.sort(pool), split.unlabeled)  # one pass over the pool
    assert set(np.concatenate(labeled_batches)) <= set(split.labeled)
    assert all(len(b.x) == cfg.optim.batch_size for b in joint)  # cycled: full batches
    assert all(b.y is not None and len(b.y) == len(b.x) for b in joint)


def test_ffcv_and_torchvision_give_the_same_val_error_within_tolerance(
    folder, betons, tmp_path, capsys
):
    from harness.engine.evaluate import error_rates, predict_topk
    from harness.models import build_encoder

    metrics, finals = {}, {}
    for loader in ("ffcv", "torchvision"):
        results = tmp_path / loader
        args = [f"data.path={folder}", f"data.beton={betons}", f"data.loader={loader}"]
        code = run_main(
            ["suite=imagenet_10pct", *args, *SMALL, "labels=[0.5]", f"results={results}"]
        )
        assert code == 0, capsys.readouterr().err
        (found,) = results.glob("imagenet_10pct/*/metrics.json")
        metrics[loader] = json.loads(found.read_text())
        finals[loader] = found.parent / "stage-finetune.pt"
        assert OmegaConf.load(found.parent / "config.yaml").config.data.loader == loader
    ffcv, tv = metrics["ffcv"], metrics["torchvision"]
    assert ffcv["split_hash"] == tv["split_hash"] and ffcv["labeled"] == tv["labeled"] == 200
    assert tv["top1_val"] < 60 and ffcv["top1_val"] < 60  # they learned (chance: 75)
    assert abs(ffcv["top1_val"] - tv["top1_val"]) <= RUN_TOLERANCE

    # one trained model, its val set read through each loader
    model = build_encoder("vgg_small_3", 3, 4, 28)
    model.load_state_dict(torch.load(finals["torchvision"]))
    top1, errors = {}, {}
    for loader in ("ffcv", "torchvision"):
        data = imagenet_data(folder, betons, loader)
        topk = predict_topk(
            model, data.val, np.arange(len(data.val)), dense=False, crop=28, resize=36, k=5,
            batch_size=100, mean=torch.tensor(data.mean), std=torch.tensor(data.std),
            device=torch.device("cpu"),
        )  # fmt: skip
        top1[loader], errors[loader] = topk[:, 0], error_rates(topk, data.val.targets)[0]
    assert errors["torchvision"] == pytest.approx(tv["top1_val"])  # the run's own model
    agree = np.mean(top1["ffcv"] == top1["torchvision"])
    print(
        f"runs: ffcv {ffcv['top1_val']:.2f} vs torchvision {tv['top1_val']:.2f}; one model: "
        f"ffcv {errors['ffcv']:.2f} vs torchvision {errors['torchvision']:.2f}, agree {agree}"
    )
    assert abs(errors["ffcv"] - errors["torchvision"]) <= EVAL_TOLERANCE
    assert agree >= 0.95


def test_a_published_list_gives_exactly_its_images(folder, betons, tmp_path):
    dataset = imagenet_data(folder, betons, "ffcv")
    chosen = [3, 17, 120, 399]
    names = [Path(dataset.train.files[i]).name for i in chosen]
    listed = tmp_path / "1percent.txt"
    # the published format (one file name per line); a class folder prefix is allowed too
    listed.write_text(f"{names[0]}\n{names[1]}\nn00000001/{names[2]}\n{names[3]}\n")
    split = draw_split(dataset, str(listed), seed=7)
    np.testing.assert_array_equal(split.labeled, chosen)
    assert len(split.unlabeled) == 396
    np.testing.assert_array_equal(draw_split(dataset, str(listed), seed=0).labeled, chosen)

    listed.write_text(f"{names[0]}\nn09999999_1.JPEG\n")
    with pytest.raises(UsageError, match=r"1 of 2 files are not in imagenet's training set"):
        draw_split(dataset, str(listed), seed=0)
    digits = load_dataset(load_config([]).data)
    with pytest.raises(UsageError, match="has none"):
        draw_split(digits, str(listed), seed=0)


def test_imagenet_suites_name_the_missing_data_location(tmp_path, capsys):
    for suite in ("imagenet_full", "imagenet_10pct", "imagenet_1pct"):
        assert run_main([f"suite={suite}", "device=cpu", f"results={tmp_path}"]) == 2
        error = capsys.readouterr().err
        assert "data.path=" in error and "data.beton=" in error
    assert (
        run_main(["suite=imagenet_full", "device=cpu", "data.loader=ffcv", f"results={tmp_path}"])
        == 2
    )
    assert "data.loader=ffcv needs data.beton=" in capsys.readouterr().err
    args = ["suite=imagenet_full", "device=cpu", f"data.beton={tmp_path}"]
    assert run_main([*args, f"results={tmp_path}"]) == 2
    assert "train.beton' does not exist" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "unknown command '(none)'; valid choices: cifar10, cifar100, demo, imagenet, stl"),
        (("imagenet", "out=/tmp/x"), "prepare imagenet needs root=DIR"),
        (("imagenet", "root=/nonexistent", "out=/tmp/x"), "'/nonexistent/train' does not exist"),
        (("imagenet", "root=/tmp", "out=/tmp/x", "write_mode=png"), "unknown write_mode 'png'"),
        (("demo", "out=/tmp/x", "classes=11"), "classes=11 must lie in 1..10"),
    ],
)
def test_prepare_bad_input_exits_2(args, message, capsys):
    from harness.data.prepare import main

    assert main(list(args)) == 2
    assert message in capsys.readouterr().err


def test_a_run_reading_a_beton_ends_cleanly_with_more_workers_than_cores(folder, betons, tmp_path):
    """A successful command prints no traceback (issue 14): FFCV's decoding threads are
    capped at what numba may start here, so ``data.num_workers`` above the core count
    (a laptop's setting on a smaller SLURM job) neither fails the run nor leaves a
    numba ``ValueError`` from the loader's thread."""
    args = [f"data.path={folder}", f"data.beton={betons}", "data.loader=ffcv"]
    small = [a for a in SMALL if not a.startswith(("schedule.pretrain.epochs", "data.num_workers"))]
    result = run_cli(
        "suite=imagenet_10pct",
        *args,
        *small,
        "schedule.pretrain.epochs=1",
        f"data.num_workers={os.cpu_count() * 4}",
        "labels=[0.5]",
        f"results={tmp_path}",
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "Error" not in result.stderr, result.stderr


def test_imagenet_full_reports_the_posters_table_and_claims_beside_ours(folder, betons, tmp_path):
    """A short real run of imagenet_full's code path (its stages, every image labeled,
    both evaluations) on generated JPEGs: published.md sets ours beside each of the
    poster's cells, and summary.md checks the poster's claims on the pairs it ran."""
    small = [a for a in SMALL if not a.startswith(("schedule.", "seeds="))]
    result = run_cli(
        "suite=imagenet_full",
        "methods=[baseline,swwae_all]",
        "seeds=[0,1]",
        f"data.path={folder}",
        f"data.beton={betons}",
        *small,
        "schedule.pretrain={epochs: 2, steps: 4, lr: 0.002}",
        "schedule.decoder_layerwise={epochs: 1, steps: 2, lr: 0.001}",
        "schedule.decoder_topdown={epochs: 1, steps: 2, lr: 0.001}",
        "schedule.finetune={epochs: 1, steps: 3, lr: 0.001}",
        f"results={tmp_path}",
    )
    assert result.returncode == 0, result.stderr
    report = tmp_path / "imagenet_full" / "report"
    published = pd.read_csv(report / "published.csv")
    assert len(published) == 42 and set(published["published_seeds"]) == {1}
    ours = published[published["method"].isin(["baseline", "swwae_all"])]
    assert len(ours) == 12 and ours["ours_seeds"].eq(2).all() and ours["ours_mean"].notna().all()
    assert published[~published.index.isin(ours.index)]["ours_mean"].isna().all()
    text = (report / "published.md").read_text()
    base = ours.set_index(["method", "metric"])["ours_mean"]
    assert (
        f"| baseline | 1.0 | 17.43 / {base['baseline', 'top1_train']:.2f} "
        f"| 29.05 / {base['baseline', 'top1_val']:.2f} "
        f"| 4.02 / {base['baseline', 'top5_train']:.2f} "
        f"| 10.07 / {base['baseline', 'top5_val']:.2f} "
        f"| 26.97 / {base['baseline', 'dense_top1_val']:.2f} "
        f"| 8.94 / {base['baseline', 'dense_top5_val']:.2f} |"
    ) in text
    assert "- sae_first at 1.0 labels (top1_train, top1_val, top5_train," in text
    assert "no run in this plan" in text
    claims = pd.read_csv(report / "claims.csv")
    tested = claims[claims["verdict"] != "waiting"]
    # swwae_all against the baseline: claims 1 and 2; the rest need runs not planned
    assert sorted(tested["claim"]) == [1, 2] and set(tested["method"]) == {"swwae_all"}
    assert tested["seeds"].eq(2).all() and tested["p"].notna().all()
    summary = (report / "summary.md").read_text()
    assert "## Claims checked" in summary and "**1. every decoding variant lowers" in summary
    assert "## imagenet_full: claims checked" in result.stdout  # and on screen
