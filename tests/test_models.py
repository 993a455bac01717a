from __future__ import annotations

import torch

from harness._torchvision_compat import import_torchvision
from harness.models import build_encoder, load_torchvision_vgg


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
