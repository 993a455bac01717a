from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import yaml

from harness._torchvision_compat import import_torchvision
from harness.config import load_config
from harness.errors import UsageError
from harness.models import (
    DENSE,
    MACRO_LAYERS,
    SWITCHES,
    PoolSpec,
    available_models,
    build_encoder,
    classifier_of,
    load_torchvision_vgg,
    require,
)
from harness.plan import make_plan
from harness.report.tables import MISSING_MD
from tests.conftest import FAST, run_cli, tree

DECODING = ["sae_first", "sae_all", "sae_layerwise", "swwae_first", "swwae_all", "swwae_layerwise"]


def test_vgg16_loads_torchvision_state_dict_and_computes_the_same():
    import_torchvision()
    from torchvision.models import vgg16

    reference = vgg16(weights=None).eval()
    ours = build_encoder("vgg16", 3, 1000, 224).eval()
    load_torchvision_vgg(ours, reference.state_dict())
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), rtol=1e-4, atol=1e-5)


def test_dense_equals_single_crop_when_image_is_the_crop():
    model = build_encoder("vgg_small_2", 1, 10, 12).eval()
    x = torch.randn(4, 1, 12, 12)
    with torch.no_grad():
        dense = model.dense_logits(x)
        assert dense.shape == (4, 10, 1, 1)
        torch.testing.assert_close(dense[:, :, 0, 0], model(x), rtol=1e-5, atol=1e-6)


def test_dense_scores_are_the_fc_head_on_every_feature_window():
    # Not the forward pass of a corner crop: inside the whole image the convs see
    # real neighbours where the crop sees zero padding (the dense protocol's context).
    model = build_encoder("vgg_small_2", 1, 10, 12).eval()
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        dense = model.dense_logits(x)
        assert dense.shape == (2, 10, 2, 2)
        features = model.features(x)  # [2, 64, 4, 4]; the head takes 3x3 windows
        for i in range(2):
            for j in range(2):
                window = features[..., i : i + 3, j : j + 3]
                torch.testing.assert_close(
                    dense[..., i, j], model.classify(window), rtol=1e-5, atol=1e-6
                )


def test_encode_records_switches_of_every_macro_layer():
    model = build_encoder("vgg16", 3, 1000, 224)
    enc = model.encode(torch.randn(1, 3, 64, 64), switches=True)
    assert [tuple(p.shape[1:]) for p in enc.pooled] == [
        (64, 32, 32),
        (128, 16, 16),
        (256, 8, 8),
        (512, 4, 4),
        (512, 2, 2),
    ]
    assert all(
        s is not None and s.shape == p.shape for s, p in zip(enc.switches, enc.pooled, strict=True)
    )
    assert [tuple(s) for s in enc.sizes] == [(64, 64), (32, 32), (16, 16), (8, 8), (4, 4)]
    assert [len(spec.convs) for spec in model.macro_specs()] == [2, 2, 3, 3, 3]


# --- the registry and what each model offers ---------------------------------------


def test_every_model_is_registered_and_an_unknown_one_lists_them():
    # the engine's, and those a method family registers (methods/ladder/model.py,
    # methods/vat_mlp.py)
    engine = ["alexnet", "conv_large", "mlp", "vgg16", "vgg_narrow_3", "vgg_small_2"]
    engine += ["vgg_small_3", "wrn_28_2", "wrn_28_8", "wrn_37_2", "resnet50"]
    families = ["ladder_conv_small", "ladder_mlp", "vat_mlp"]
    assert available_models() == sorted([*engine, *families])
    with pytest.raises(UsageError, match="valid choices: alexnet, conv_large, ladder_conv_small"):
        build_encoder("resnet", 3, 10, 32)


@pytest.mark.parametrize(
    "name, size, offers",
    [
        ("vgg_small_2", 12, {MACRO_LAYERS, SWITCHES, DENSE}),
        ("alexnet", 28, {MACRO_LAYERS, SWITCHES, DENSE}),
        ("mlp", 12, set()),
    ],
)
def test_models_declare_what_they_offer(name, size, offers):
    model = build_encoder(name, 1, 10, size)
    assert model.offers == offers
    assert model.num_classes == 10
    assert classifier_of(model) is model
    with torch.no_grad():
        assert model(torch.rand(2, 1, size, size)).shape == (2, 10)


def test_a_missing_capability_is_one_usage_error_naming_method_and_model():
    mlp = build_encoder("mlp", 1, 10, 12)
    with pytest.raises(UsageError) as error:
        require(mlp, "mlp", {MACRO_LAYERS, SWITCHES}, "swwae_first")
    assert str(error.value) == "swwae_first needs a model with pooling switches; model mlp has none"
    with pytest.raises(UsageError, match="sae_first needs a model with macro-layers"):
        require(mlp, "mlp", {MACRO_LAYERS}, "sae_first")
    require(build_encoder("alexnet", 1, 10, 28), "alexnet", {MACRO_LAYERS, SWITCHES}, "swwae_all")
    with pytest.raises(ValueError, match="unknown capabilities"):
        require(mlp, "mlp", {"wings"}, "icarus")


# --- AlexNet ---------------------------------------------------------------------


def test_alexnet_at_224_is_torchvisions_and_loads_its_state_dict():
    import_torchvision()
    from torchvision.models import alexnet

    reference = alexnet(weights=None).eval()
    ours = build_encoder("alexnet", 3, 1000, 224).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), rtol=1e-4, atol=1e-5)
    assert [spec.pool for spec in ours.macro_specs()] == [PoolSpec(3, 2)] * 3
    assert not any(isinstance(m, torch.nn.LocalResponseNorm) for m in ours.modules())


def test_alexnet_below_224_is_scaled_with_the_same_layout():
    small = build_encoder("alexnet", 1, 10, 28)
    full = build_encoder("alexnet", 1, 10, 224)
    assert [k.split(".")[:2] for k in small.state_dict()] == [
        k.split(".")[:2] for k in full.state_dict()
    ]  # the same module indices (a torchvision-format file has the same keys)
    conv1 = small.macro_specs()[0].convs[0]
    assert (conv1.kernel, conv1.stride, conv1.padding) == (5, 1, 2)
    assert [c.out_channels for s in small.macro_specs() for c in s.convs] == [32, 96, 192, 128, 128]
    assert [spec.pool for spec in small.macro_specs()] == [PoolSpec(3, 2)] * 3
    enc = small.encode(torch.rand(2, 1, 28, 28), switches=True)
    assert [tuple(p.shape[-2:]) for p in enc.pooled] == [(13, 13), (6, 6), (2, 2)]
    assert small.head_size == 2 and small.classifier[1].in_features == 128 * 2 * 2
    assert [tap.name for tap in small.taps()] == ["pool1", "pool2", "conv3", "conv4", "pool5"]


def test_alexnet_refuses_crops_its_three_pools_cannot_take():
    with pytest.raises(UsageError, match="input size 12 is too small for model alexnet.*15 px"):
        build_encoder("alexnet", 1, 10, 12)
    build_encoder("alexnet", 1, 10, 15)


def test_alexnet_dense_equals_single_crop_at_the_crop_and_scores_a_larger_image():
    model = build_encoder("alexnet", 1, 10, 28).eval()
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(model.dense_logits(x)[:, :, 0, 0], model(x))
        assert model.dense_logits(torch.randn(3, 1, 36, 36)).shape == (3, 10, 2, 2)


def test_encode_keeps_every_conv_output_when_asked():
    model = build_encoder("alexnet", 1, 10, 28)
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        assert model.encode(x).activations == []
        enc = model.encode(x, activations=True)
    assert [len(level) for level in enc.activations] == [1, 1, 3]
    assert [a.shape[1] for level in enc.activations for a in level] == [32, 96, 192, 128, 128]
    for level, pooled in enumerate(enc.pooled):  # each level's last conv output, max-pooled
        torch.testing.assert_close(F.max_pool2d(enc.activations[level][-1], 3, 2), pooled)


# --- through the CLI -------------------------------------------------------------


@pytest.mark.parametrize(
    "methods, message",
    [
        ("[swwae_first]", "swwae_first needs a model with pooling switches; model mlp has none"),
        ("[baseline,sae_all]", "sae_all needs a model with macro-layers"),
    ],
)
def test_a_method_the_model_cannot_serve_exits_2_before_any_work(tmp_path, methods, message):
    results = tmp_path / "results"
    results.mkdir()
    (results / "keep.txt").write_text("untouched")
    before = tree(results)
    result = run_cli("model.name=mlp", f"methods={methods}", f"results={results}", *FAST)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert tree(results) == before


def test_methods_all_leaves_out_the_methods_a_model_cannot_serve():
    # the mlp has no macro-layers: `all` is the methods it can serve, not an error
    plan = make_plan(load_config(["model.name=mlp", "methods=all", "schedule.train.epochs=1"]))
    planned = {spec.method for spec in plan}
    assert "baseline" in planned and "vat" in planned
    assert not any(name.startswith(("sae_", "swwae_")) for name in planned)


def test_an_mlp_baseline_trains_and_its_report_shows_dense_as_missing(results):
    result = run_cli("model.name=mlp", f"results={results}", *FAST)
    assert result.returncode == 0, result.stderr
    (metrics_file,) = results.glob("digits/*/metrics.json")
    metrics = json.loads(metrics_file.read_text())
    assert metrics["top1_val"] < 90 and "dense_top1_val" not in metrics
    assert set(np.load(metrics_file.parent / "predictions.npz").files) == {
        "train_topk",
        "train_targets",
        "val_topk",
        "val_targets",
    }
    (row,) = [line for line in result.stdout.splitlines() if line.startswith("| baseline")]
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[3] != MISSING_MD and "nan" not in cells[3], row
    # no number in the dense columns: a column the model does not offer is missing
    assert all(cell == MISSING_MD for cell in cells[-2:]), row


def test_alexnet_trains_every_decoding_variant_and_inverts_from_its_eight_layers(tmp_path):
    """Digits at 16 px crops (resize 24): the smallest AlexNet, pools 7, 3 and 1 px."""
    args = [
        "model.name=alexnet",
        "data.resize=24",
        "data.crop=16",
        "labels=[100]",
        "seeds=[0]",
        "threads=1",
        "progress=false",
        "schedule.pretrain.epochs=12",
        "schedule.pretrain.steps=5",
        "eval.every=4",  # val is not what this test reads
        "schedule.decoder_layerwise.epochs=1",
        "schedule.decoder_layerwise.steps=4",
        "schedule.decoder_topdown.epochs=1",
        "schedule.decoder_topdown.steps=4",
        "schedule.finetune.epochs=2",
        "schedule.finetune.steps=5",
        "report.plots=false",
        f"results={tmp_path}",
    ]
    weights = run_cli(*args, "methods=[swwae_first]")
    assert weights.returncode == 2
    assert "decoding.weights has 2 values but model 'alexnet' has 3 loss sites" in weights.stderr
    args.append("decoding.weights=[0.01,0.0001,0.0001]")
    result = run_cli(*args, f"methods=[{','.join(['baseline', *DECODING])}]", timeout=900)
    assert result.returncode == 0, result.stderr
    found = {}
    for config in tmp_path.glob("digits/*/config.yaml"):
        method = yaml.safe_load(config.read_text())["run"]["method"]
        found[method] = json.loads((config.parent / "metrics.json").read_text())
    assert sorted(found) == sorted(["baseline", *DECODING])
    assert found["baseline"]["top1_val"] < 90 and "dense_top1_val" in found["baseline"]
    for name in DECODING:
        assert 0 < found[name]["recon_rel_topdown_image"] < 2, name
    inverted = run_cli(
        *args,
        "method=swwae_first",
        "layer=8",
        "images=3",
        "fc_steps=20",
        module="methods.decoding.invert",
    )
    assert inverted.returncode == 0, inverted.stderr
    (table_file,) = tmp_path.glob("digits/invert/swwae_first-*-layer8.json")
    table = pd.read_json(table_file)
    names = ["pool1", "pool2", "conv3", "conv4", "pool5", "fc6", "fc7", "fc8"]
    assert table[table["method"] == "swwae_first"]["name"].tolist() == names
    assert table["relative_error"].between(0, 2).all()
    assert table_file.with_suffix(".png").is_file()
