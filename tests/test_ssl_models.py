"""The backbones of the field's protocols (issue 34 §2): WRN-28-2, WRN-28-8, WRN-37-2 and
ResNet-50, their sizes as the references count them, and the crops they refuse."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from harness.models import build_encoder
from tests.conftest import run_cli


def count(model: nn.Module, kind: type[nn.Module]) -> int:
    return sum(isinstance(module, kind) for module in model.modules())


@pytest.mark.parametrize(
    ("name", "classes", "crop", "convs", "million"),
    [
        # FixMatch's paper: WRN-28-2 "1.5M parameters"; WRN-28-8 for CIFAR-100
        ("wrn_28_2", 10, 32, 25 + 3, 1.47),
        ("wrn_28_8", 100, 32, 25 + 3, 23.40),
        # a fourth group of four blocks: 33 convolutions and 4 shortcut ones
        ("wrn_37_2", 10, 96, 33 + 4, 5.93),
        # torchvision's resnet50 at ImageNet's 1,000 classes: 25,557,032 parameters
        ("resnet50", 1000, 224, 53, 25.557032),
    ],
)
def test_each_backbone_has_the_references_shape(name, classes, crop, convs, million):
    torch.manual_seed(0)
    model = build_encoder(name, 3, classes, crop)
    assert count(model, nn.Conv2d) == convs
    assert count(model, nn.Dropout) == 0  # batch norm and no dropout, as the references
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(million, abs=0.01)
    model.eval()
    with torch.no_grad():
        scores = model(torch.randn(2, 3, crop, crop))
    assert scores.shape == (2, classes) and torch.isfinite(scores).all()
    # the head is one linear layer on the pooled top: what the methods' heads read
    assert isinstance(model.classifier[-1], nn.Linear)


def test_resnet50s_names_are_torchvisions_under_features():
    from harness._torchvision_compat import import_torchvision

    reference = import_torchvision().models.resnet50(weights=None)
    ours = build_encoder("resnet50", 3, 1000, 224)
    theirs = {k: v.shape for k, v in reference.state_dict().items() if not k.startswith("fc.")}
    names = {0: "conv1", 1: "bn1", 4: "layer1", 5: "layer2", 6: "layer3", 7: "layer4"}
    renamed = {}
    for key, value in ours.features.state_dict().items():
        index, rest = key.split(".", 1)
        renamed[f"{names[int(index)]}.{rest}"] = value.shape
    assert renamed == theirs


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["model.name=wrn_37_2"],
            "model wrn_37_2 is STL-10's network at 96 px and needs a crop of at least 64 px, "
            "got data.crop=28",
        ),
        (["model.name=resnet50", "data.crop=24"], "needs a crop of at least 32 px"),
    ],
)
def test_a_backbone_at_a_crop_it_cannot_take_is_one_line_exit_2(tmp_path, args, message):
    done = run_cli("suite=mnist_ssl", *args, f"results={tmp_path / 'results'}")
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert message in done.stderr
    assert not (tmp_path / "results").exists()
