"""What ``dry_run=true`` says a plan costs (``harness.engine.cost``): the FLOPs against a
hand count, the meta-device count against a real one, the images each stage reads
against what the runs then record in ``history.csv``."""

from __future__ import annotations

import re

import pandas as pd
import torch

from harness.config import load_config
from harness.data import load_dataset
from harness.engine.cost import _per_image, per_image_flops
from harness.method import get_method
from harness.models.mlp import HIDDEN
from tests.conftest import FAST, run_cli, tree


def test_an_mlp_steps_flops_are_the_hand_count():
    """A linear layer's forward pass is 2 * in * out FLOPs per image; its backward pass
    is as much again for the weight's gradient and again for its input's, except at
    the first layer, whose input (the image) needs no gradient."""
    cfg = load_config(["model.name=mlp"])
    dataset = load_dataset(cfg.data)
    method = get_method("baseline")(cfg)
    stage = method.stages()[0]
    widths = [dataset.channels * cfg.data.crop**2, *HIDDEN, dataset.num_classes]
    layers = [2 * n_in * n_out for n_in, n_out in zip(widths, widths[1:], strict=False)]
    forward = sum(layers)  # 2 * (144 * 256 + 256 * 256 + 256 * 10) for digits' 12 px crops
    assert forward == 2 * (144 * 256 + 256 * 256 + 256 * 10)
    per_labeled, per_unlabeled = per_image_flops(method, cfg, dataset, stage, True, False)
    assert per_labeled == forward + forward + (forward - layers[0])
    assert per_unlabeled == 0


def test_the_meta_device_counts_what_real_tensors_count():
    """A joint stage reading labeled and pool images, with a method's own heads: the
    shapes-only count equals the count on real CPU tensors, per image of each role."""
    cfg = load_config(["model.name=vgg_small_2"])
    dataset = load_dataset(cfg.data)
    method = get_method("swwae_all")(cfg)
    for stage in method.stages():
        counts = [
            _per_image(method, cfg, dataset, stage, True, True, torch.device(device))
            for device in ("meta", "cpu")
        ]
        assert counts[0] == counts[1] and counts[0][1] > 0, stage.name


def _stage_rows(stdout: str) -> dict[tuple[str, str], tuple[int, int, float]]:
    """The dry run's stage table as {(method, stage): (labeled, unlabeled, TFLOPs)}."""
    rows = {}
    for line in stdout.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 8 and re.fullmatch(r"\d+ x \d+", cells[4]):
            labeled, unlabeled = (int(c.replace(",", "")) for c in cells[5:7])
            rows[(cells[0], cells[2])] = (labeled, unlabeled, float(cells[7].replace(",", "")))
    return rows


def test_a_dry_run_says_what_each_stage_will_read_and_writes_nothing(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    before = tree(results)
    args = [
        *FAST,
        "methods=[baseline,swwae_first]",
        "schedule.decoder_layerwise.epochs=1",
        "schedule.decoder_topdown.epochs=1",
        "report.plots=false",
        f"results={results}",
    ]
    shown = run_cli(*args, "dry_run=true")
    assert shown.returncode == 0, shown.stderr
    assert tree(results) == before  # nothing written
    planned = _stage_rows(shown.stdout)
    # the baseline's step 1 is the only one with the decoding run's copy not counted twice
    assert set(planned) == {
        ("baseline", "pretrain"),
        ("baseline", "finetune"),
        ("swwae_first", "decoder_layerwise"),
        ("swwae_first", "decoder_topdown"),
        ("swwae_first", "finetune"),
    }
    assert planned["baseline", "pretrain"][:2] == (3 * 25 * 32, 0)  # FAST: 3 epochs of 25 steps
    runs = re.findall(
        r"^\| ([0-9a-f]{12}) \| (\w+) .*\| +([\d,]+) \| +([\d.]+) \|$", shown.stdout, re.M
    )
    assert len(runs) == 2
    total = re.search(r"training in all: ([\d,]+) images read, ([\d.,]+) TFLOPs", shown.stdout)
    assert total and int(total[1].replace(",", "")) == sum(
        labeled + unlabeled for labeled, unlabeled, _ in planned.values()
    )
    assert float(total[2]) > 0
    done = run_cli(*args)
    assert done.returncode == 0, done.stderr
    for run_id, method, images, _ in runs:
        history = pd.read_csv(results / "digits" / run_id / "history.csv")
        read = history.groupby("stage")[["images_labeled", "images_unlabeled"]].sum()
        for stage, row in read.iterrows():
            assert planned[method, stage][:2] == (row.images_labeled, row.images_unlabeled)
        assert int(images.replace(",", "")) == read.to_numpy().sum()
