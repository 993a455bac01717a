"""Unpooling and mirrored decoders (methods.decoding.decoders)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from harness.models import AlexNet, PoolSpec, build_encoder
from methods.decoding.decoders import (
    Decoder,
    FcDecoder,
    MacroDecoder,
    fc_codes,
    unpool,
    unpool_fixed,
    unpool_switches,
)


@pytest.mark.parametrize("size", [(8, 8), (7, 9), (5, 5)])
def test_swwae_unpool_puts_each_value_back_at_its_argmax(size):
    x = torch.randn(2, 3, *size)
    pooled, switches = F.max_pool2d(x, 2, 2, return_indices=True)
    out = unpool_switches(pooled, switches, PoolSpec(2, 2), x.shape[-2:])
    assert out.shape == x.shape  # odd sizes come back whole
    assert torch.equal(out.flatten(2).gather(2, switches.flatten(2)), pooled.flatten(2))
    assert int((out != 0).sum()) == pooled.numel()  # zeros everywhere else
    # pooling the unpooled map again gives the pooled map (the switches are exact)
    assert torch.equal(F.max_pool2d(out.abs(), 2, 2), pooled.abs())


@pytest.mark.parametrize("size", [(8, 8), (7, 9), (5, 5)])
def test_sae_unpool_puts_each_value_at_offset_one_one(size):
    x = torch.randn(2, 3, *size)
    pooled = F.max_pool2d(x, 2, 2)
    out = unpool_fixed(pooled, PoolSpec(2, 2), x.shape[-2:])
    assert out.shape == x.shape
    h, w = pooled.shape[-2:]
    assert torch.equal(out[..., 1 : 2 * h : 2, 1 : 2 * w : 2], pooled)
    assert int((out != 0).sum()) == int((pooled != 0).sum())


def test_overlapping_switches_average_where_windows_share_a_position():
    x = torch.zeros(1, 1, 5, 5)
    x[0, 0, 2, 2] = 1.0  # the max of all four overlapping 3x3 stride-2 windows
    pooled, switches = F.max_pool2d(x, 3, 2, return_indices=True)
    assert (switches == 12).all()
    decoded = torch.tensor([[[[1.0, 2.0], [3.0, 6.0]]]])  # what a decoder would unpool
    out = unpool_switches(decoded, switches, PoolSpec(3, 2), x.shape[-2:])
    assert out[0, 0, 2, 2] == pytest.approx(3.0)  # (1 + 2 + 3 + 6) / 4 writers
    assert int((out != 0).sum()) == 1


def test_unpooled_values_get_their_gradient_and_overlaps_share_it():
    x = torch.randn(1, 2, 6, 6)
    pooled, switches = F.max_pool2d(x, 2, 2, return_indices=True)
    values = pooled.clone().requires_grad_(True)
    unpool_switches(values, switches, PoolSpec(2, 2), x.shape[-2:]).sum().backward()
    assert torch.equal(values.grad, torch.ones_like(values))
    # overlapping windows: a position written by w windows passes 1/w back to each
    x = torch.zeros(1, 1, 5, 5)
    x[0, 0, 2, 2] = 1.0
    _, switches = F.max_pool2d(x, 3, 2, return_indices=True)
    values = torch.ones(1, 1, 2, 2, requires_grad=True)
    unpool_switches(values, switches, PoolSpec(3, 2), x.shape[-2:]).sum().backward()
    assert torch.allclose(values.grad, torch.full_like(values, 0.25))


def test_a_strided_conv_after_the_first_of_a_macro_layer_is_refused():
    from harness.models import ConvSpec, MacroSpec

    spec = MacroSpec((ConvSpec(3, 8, 3, 1, 1), ConvSpec(8, 8, 3, 2, 1)), PoolSpec(2, 2))
    with pytest.raises(ValueError, match="first conv of its macro-layer"):
        MacroDecoder(spec, "swwae", linear_output=True)


def test_vgg16_decoder_mirrors_the_encoder_layer_by_layer():
    encoder = build_encoder("vgg16", 3, 1000, 64)
    decoder = Decoder(encoder.macro_specs(), "swwae")
    plan = [
        [(conv.in_channels, conv.out_channels, conv.kernel_size) for conv in layer.convs]
        for layer in decoder.layers
    ]
    k = (3, 3)
    assert plan == [  # bottom (outputs the image) first, each conv (in, out)
        [(64, 64, k), (64, 3, k)],
        [(128, 128, k), (128, 64, k)],
        [(256, 256, k), (256, 256, k), (256, 128, k)],
        [(512, 512, k), (512, 512, k), (512, 256, k)],
        [(512, 512, k), (512, 512, k), (512, 512, k)],
    ]
    assert all(isinstance(c, nn.Conv2d) for layer in decoder.layers for c in layer.convs)
    assert all(layer.pool == PoolSpec(2, 2) for layer in decoder.layers)
    enc = encoder.encode(torch.rand(1, 3, 64, 64), switches=True)
    shapes = [tuple(o.shape[1:]) for o in decoder.topdown(enc)]
    assert shapes == [(3, 64, 64), (64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4)]
    assert [tuple(o.shape[1:]) for o in decoder.layerwise(enc)] == shapes
    weights = torch.cat([p.flatten() for n, p in decoder.named_parameters() if "weight" in n])
    assert weights.std().item() == pytest.approx(0.001, rel=0.05)  # N(0, 0.001) init
    assert all((p == 0).all() for n, p in decoder.named_parameters() if "bias" in n)


def test_relu_after_every_decoder_conv_but_the_image_output():
    encoder = build_encoder("vgg_small_2", 1, 10, 12)
    decoder = Decoder(encoder.macro_specs(), "sae")
    for layer in decoder.layers:
        for conv in layer.convs:
            nn.init.normal_(conv.weight, 0.0, 0.5)
    enc = encoder.encode(torch.rand(4, 1, 12, 12))
    image, pool1 = decoder.topdown(enc)
    assert (pool1 >= 0).all()
    assert (image < 0).any()  # the linear image output can go negative


@pytest.mark.parametrize("size", [224, 99])
def test_alexnet_decoder_undoes_strides_and_overlapping_pools(size):
    encoder = AlexNet()
    specs = encoder.macro_specs()
    assert [len(s.convs) for s in specs] == [1, 1, 3]
    assert all(s.pool == PoolSpec(3, 2) for s in specs)
    decoder = Decoder(specs, "swwae")
    assert isinstance(decoder.layers[0].convs[0], nn.ConvTranspose2d)  # mirrors conv1 stride 4
    x = torch.rand(1, 3, size, size)
    with torch.no_grad():
        enc = encoder.encode(x, switches=True)
        outputs = decoder.topdown(enc)
    assert outputs[0].shape == x.shape
    assert [o.shape for o in outputs[1:]] == [p.shape for p in enc.pooled[:-1]]
    sae = Decoder(specs, "sae")
    with torch.no_grad():
        assert sae.topdown(enc)[0].shape == x.shape


def test_fc_decoder_inverts_fc8_to_pool5():
    encoder = AlexNet()
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        pool5 = encoder.encode(x).pooled[-1]
        fc = FcDecoder(encoder.classifier, tuple(pool5.shape[1:]))
        fc7, fc6, top = fc(encoder(x))
    assert fc7.shape == (2, 4096) and fc6.shape == (2, 4096)
    assert top.shape == pool5.shape == (2, 256, 6, 6)
    codes = fc_codes(encoder.classifier[1:], pool5)  # AlexNet's fc6 input at 224 px is pool5
    assert [c.shape[1] for c in codes] == [4096, 4096, 1000]
    assert fc(codes[0], start=0)[-1].shape == pool5.shape  # from fc6 straight to pool5
    assert [o.shape for o in fc.layerwise(codes)] == [fc7.shape, fc6.shape, pool5.shape]


def test_unknown_unpooling_is_refused():
    spec = build_encoder("vgg_small_2", 1, 10, 12).macro_specs()[0]
    with pytest.raises(ValueError, match="sae, swwae"):
        MacroDecoder(spec, "nearest", linear_output=True)


@pytest.mark.parametrize("kind", ["sae", "swwae"])
@pytest.mark.parametrize("size", [28, 31])
def test_scaled_alexnet_decoders_undo_its_overlapping_pools(kind, size):
    encoder = build_encoder("alexnet", 1, 10, 28)
    decoder = Decoder(encoder.macro_specs(), kind)
    assert all(layer.pool == PoolSpec(3, 2) for layer in decoder.layers)
    assert all(isinstance(c, nn.Conv2d) for layer in decoder.layers for c in layer.convs)
    x = torch.rand(2, 1, size, size)
    with torch.no_grad():
        enc = encoder.encode(x, switches=kind == "swwae")
        outputs = decoder.topdown(enc)
        assert [o.shape for o in outputs] == [x.shape] + [p.shape for p in enc.pooled[:-1]]
        assert [o.shape for o in decoder.layerwise(enc)] == [o.shape for o in outputs]
        # the unpooled map of each level has the size of that level's pool input
        for level, pooled in enumerate(enc.pooled):
            size_before = enc.sizes[level]
            unpooled = unpool(
                kind, pooled, decoder.layers[level].pool, size_before, enc.switches[level]
            )
            assert unpooled.shape[-2:] == size_before
            if kind == "sae":  # the window centres: (2i + 1, 2j + 1)
                h, w = pooled.shape[-2:]
                assert torch.equal(unpooled[..., 1 : 2 * h : 2, 1 : 2 * w : 2], pooled)
            else:  # every max back where it came from (overlaps average equal values)
                torch.testing.assert_close(
                    unpooled.flatten(2).gather(2, enc.switches[level].flatten(2)),
                    pooled.flatten(2),
                )


def test_from_conv_starts_the_mirror_at_that_conv_inside_a_macro_layer():
    encoder = build_encoder("alexnet", 1, 10, 28)
    decoder = Decoder(encoder.macro_specs(), "swwae")
    x = torch.rand(2, 1, 28, 28)
    ran: list[int] = []
    top = decoder.layers[2]
    for index, conv in enumerate(top.convs):  # mirrors of conv5, conv4, conv3
        conv.register_forward_hook(lambda *_, index=index: ran.append(index))
    with torch.no_grad():
        enc = encoder.encode(x, switches=True, activations=True)
        from_conv4 = decoder.from_conv(enc, level=2, conv=1)
        assert ran == [1, 2]  # conv4's and conv3's mirrors; conv5's and the unpool skipped
        ran.clear()
        from_conv3 = decoder.from_conv(enc, level=2, conv=0)
        assert ran == [2]
        full = decoder.topdown(enc)
    shapes = [o.shape for o in full]
    assert [o.shape for o in from_conv4] == shapes == [o.shape for o in from_conv3]
    # the same code as the chain's, entered lower: mirror(conv3) of conv3's output
    with torch.no_grad():
        expected = F.relu(top.convs[2](enc.activations[2][0]))
    torch.testing.assert_close(from_conv3[2], expected)
