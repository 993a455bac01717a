"""Decoders that mirror an encoder's macro-layers, and the two ways to unpool.

Zhang, Lee & Lee (ICML 2016) give a classification network a decoder that is
its exact mirror, weights untied: each max-pool becomes an unpool, each conv a
conv whose output channels are the mirrored conv's input channels (a strided
conv becomes a transposed conv of the same geometry), ReLU after every decoder
conv except the one that outputs the image. Decoder weights start at N(0, 0.001).

Unpooling is where the two families differ, and where the paper locates the
information loss of a classifier:

- ``sae``: every value goes to a *fixed* position of its pooling window (offset
  ``kernel // 2`` in both axes, the reference's ``fix = kernel/2``), zeros elsewhere;
- ``swwae``: every value goes back to where the encoder's max came from (the
  recorded switches, "what-where"). Switches are integer indices, so no
  gradient flows through them. Where pooling windows overlap (AlexNet's 3x3
  stride-2 pools) several windows can point at one position: the values are
  summed there and divided by how many windows wrote to it, as the reference does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from harness.models import Encoding, MacroSpec, PoolSpec

UNPOOL_KINDS = ("sae", "swwae")
DECODER_INIT_STD = 0.001


def unpool_fixed(x: torch.Tensor, pool: PoolSpec, size: torch.Size) -> torch.Tensor:
    """SAE unpooling: value (i, j) goes to (stride*i + kernel//2, stride*j + kernel//2)."""
    out = x.new_zeros(*x.shape[:-2], *size)
    offset, stride = pool.kernel // 2, pool.stride
    h, w = x.shape[-2:]
    out[..., offset : offset + stride * h : stride, offset : offset + stride * w : stride] = x
    return out


def unpool_switches(
    x: torch.Tensor, switches: torch.Tensor, pool: PoolSpec, size: torch.Size
) -> torch.Tensor:
    """SWWAE unpooling: every value back at its window's argmax; overlaps averaged."""
    if pool.kernel <= pool.stride:  # windows never overlap: one writer per position
        return F.max_unpool2d(x, switches, pool.kernel, pool.stride, output_size=size)
    flat_index = switches.flatten(2)
    plane = size[0] * size[1]
    total = x.new_zeros(*x.shape[:2], plane).scatter_add_(2, flat_index, x.flatten(2))
    writers = x.new_zeros(*x.shape[:2], plane).scatter_add_(
        2, flat_index, torch.ones_like(x).flatten(2)
    )
    return (total / writers.clamp(min=1)).view(*x.shape[:2], *size)


def unpool(
    kind: str,
    x: torch.Tensor,
    pool: PoolSpec,
    size: torch.Size,
    switches: torch.Tensor | None = None,
) -> torch.Tensor:
    if kind == "sae":
        return unpool_fixed(x, pool, size)
    if switches is None:
        raise ValueError("swwae unpooling needs the encoder's switches (encode(switches=True))")
    return unpool_switches(x, switches, pool, size)


class MacroDecoder(nn.Module):
    """The mirror of one macro-layer: unpool, then its convs in reverse order."""

    def __init__(self, spec: MacroSpec, kind: str, linear_output: bool):
        super().__init__()
        if kind not in UNPOOL_KINDS:
            raise ValueError(f"unknown unpooling {kind!r}; valid: {', '.join(UNPOOL_KINDS)}")
        self.kind, self.pool, self.linear_output = kind, spec.pool, linear_output
        if any(conv.stride != 1 for conv in spec.convs[1:]):
            # only the last decoder conv is told its output size (the macro-layer's input)
            raise ValueError("a strided conv must be the first conv of its macro-layer")
        convs: list[nn.Module] = []
        for conv in reversed(spec.convs):
            same_size = conv.stride == 1 and 2 * conv.padding == conv.kernel - 1
            layer = nn.Conv2d if same_size else nn.ConvTranspose2d
            convs.append(
                layer(
                    conv.out_channels,
                    conv.in_channels,
                    conv.kernel,
                    stride=conv.stride,
                    padding=conv.padding,
                )
            )
        self.convs = nn.ModuleList(convs)

    def forward(
        self,
        x: torch.Tensor,
        size: torch.Size,
        input_size: torch.Size,
        switches: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x`` at pool level l -> the prediction of level l-1 (``input_size``)."""
        x = unpool(self.kind, x, self.pool, size, switches)
        return self.mirror(x, input_size)

    def mirror(
        self, x: torch.Tensor, input_size: torch.Size, after_conv: int | None = None
    ) -> torch.Tensor:
        """The mirrored convs, from an unpooled map (``after_conv=None``), or from the
        ReLU output of the macro-layer's conv number ``after_conv`` (0-based, encoder
        order): then only the mirrors of that conv and of those below it run."""
        last = len(self.convs) - 1
        first = 0 if after_conv is None else last - after_conv
        for i in range(first, last + 1):
            conv = self.convs[i]
            if isinstance(conv, nn.ConvTranspose2d):
                target = input_size if i == last else None
                x = conv(x, output_size=list(target)) if target is not None else conv(x)
            else:
                x = conv(x)
            if not (i == last and self.linear_output):
                x = F.relu(x)
        return x


class Decoder(nn.Module):
    """One decoder macro-layer per encoder macro-layer; ``layers[0]`` outputs the image.

    ``topdown`` runs the chain from the top pooled code (or from any level
    ``start``) down to the image; ``from_conv`` runs it from a conv inside a
    macro-layer (network inversion from AlexNet's conv3 and conv4);
    ``layerwise`` feeds each decoder macro-layer the encoder's clean activation
    of its own level. They return the predictions of levels ``start-1 .. 0``
    (0 = the image), bottom first.
    """

    def __init__(self, specs: list[MacroSpec], kind: str):
        super().__init__()
        self.kind = kind
        self.layers = nn.ModuleList(
            MacroDecoder(spec, kind, linear_output=(level == 0)) for level, spec in enumerate(specs)
        )
        init_decoder(self)

    def _step(self, level: int, x: torch.Tensor, enc: Encoding) -> torch.Tensor:
        return self.layers[level](x, enc.sizes[level], enc.inputs[level], enc.switches[level])

    def topdown(
        self, enc: Encoding, start: int | None = None, code: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """``code`` replaces the encoder's pooled output of level ``start`` (an fc
        decoder's prediction of the top pool, when inverting from fc layers)."""
        start = len(self.layers) if start is None else start
        x = enc.pooled[start - 1] if code is None else code
        outputs: list[torch.Tensor] = []
        for level in reversed(range(start)):
            x = self._step(level, x, enc)
            outputs.append(x)
        return outputs[::-1]

    def from_conv(self, enc: Encoding, level: int, conv: int) -> list[torch.Tensor]:
        """The chain started inside macro-layer ``level``, from the ReLU output of its conv
        ``conv`` (``enc.activations``: ``encode(x, activations=True)``): the mirrors of
        that conv and those below it, then the decoder macro-layers below. Predictions
        of levels ``level .. 0``, bottom first (as ``topdown``)."""
        x = self.layers[level].mirror(enc.activations[level][conv], enc.inputs[level], conv)
        outputs = [x]
        for below in reversed(range(level)):
            x = self._step(below, x, enc)
            outputs.append(x)
        return outputs[::-1]

    def layerwise(self, enc: Encoding) -> list[torch.Tensor]:
        return [self._step(level, enc.pooled[level], enc) for level in range(len(self.layers))]

    def forward(self, enc: Encoding, mode: str = "topdown") -> list[torch.Tensor]:
        return self.layerwise(enc) if mode == "layerwise" else self.topdown(enc)


class FcDecoder(nn.Module):
    """fc8 -> fc7 -> fc6 -> top pool, for inverting a network from its fc layers.

    Mirrors the classifier's Linear layers in reverse (ReLU after each, since
    every target is a post-ReLU activation) and reshapes to the top pooled code.
    Only network inversion uses it; classification runs have no fc decoder.
    """

    def __init__(self, classifier: nn.Sequential, top_shape: tuple[int, int, int]):
        super().__init__()
        linears = [m for m in classifier if isinstance(m, nn.Linear)]
        self.top_shape = top_shape
        self.layers = nn.ModuleList(
            nn.Linear(linear.out_features, linear.in_features) for linear in reversed(linears)
        )
        init_decoder(self)

    def forward(self, code: torch.Tensor, start: int | None = None) -> list[torch.Tensor]:
        """Predictions of each level below fc level ``start`` (0 = fc6, 1 = fc7, 2 = fc8;
        default the top), down to the top pool: from fc8 scores, [fc7, fc6, pool]."""
        start = len(self.layers) - 1 if start is None else start
        outputs = []
        x = code
        for layer in self.layers[len(self.layers) - 1 - start :]:
            x = F.relu(layer(x))
            outputs.append(x)
        outputs[-1] = outputs[-1].view(-1, *self.top_shape)
        return outputs

    def layerwise(self, codes: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each layer from the clean code of its level (``codes`` = [fc6, fc7, fc8]):
        predictions of [fc7, fc6, pool], to train the layers one by one."""
        top = len(self.layers) - 1
        outputs = [F.relu(layer(codes[top - i])) for i, layer in enumerate(self.layers)]
        outputs[-1] = outputs[-1].view(-1, *self.top_shape)
        return outputs


def fc_codes(classifier: nn.Sequential, pooled_top: torch.Tensor) -> list[torch.Tensor]:
    """[fc6, fc7, fc8] of a VGG-style classifier in eval mode (fc6/fc7 after ReLU, fc8 scores)."""
    linears = [m for m in classifier if isinstance(m, nn.Linear)]
    x = torch.flatten(pooled_top, 1)
    codes = []
    for i, linear in enumerate(linears):
        x = linear(x)
        if i < len(linears) - 1:
            x = F.relu(x)
        codes.append(x)
    return codes


def init_decoder(module: nn.Module) -> None:
    """The reference's decoder init: Gaussian weights, std 0.001, zero bias."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
            nn.init.normal_(layer.weight, 0.0, DECODER_INIT_STD)
            nn.init.zeros_(layer.bias)
