"""Decoding-pathway augmentation (Zhang, Lee & Lee, ICML 2016): six variants, one module.

The classifier gets a mirrored decoder (``methods.decoding.decoders``); its reconstruction
losses, on labeled and unlabeled images, are added to cross-entropy on the
labeled ones. Two choices make the six registered variants:

- unpooling ``kind``: ``sae`` (fixed position) or ``swwae`` (the encoder's switches);
- loss ``placement``: ``first`` (top-down chain, loss at the image only), ``all``
  (the same chain, losses at the image and every pool level below the top) or
  ``layerwise`` (each decoder macro-layer reads the encoder's clean activation
  of its level and predicts the level below; the same loss sites as ``all``).

The paper's four steps are the stages: ``pretrain`` (the classifier, copied from
the suite's baseline run on the same split and seed, or loaded from
``model.pretrained``), ``decoder_layerwise`` (decoders from clean activations,
encoder frozen), ``decoder_topdown`` (the chain, encoder frozen; not for
-layerwise) and ``finetune`` (everything, on the joint objective).

Loss normalization (``methods.decoding.settings.DecodingSettings``): a site's term is
``weight * sum((x_hat - x)^2) / (2 * batch)`` over all its elements, Caffe's
EuclideanLoss; the image target is in the reference's units, (pixel - mean)/255
(the normalized input times the dataset std); pool targets are the encoder's
own activations, and, as with Caffe's loss, the gradient reaches both sides.
The VGG-16 defaults are the reference weights: image 1e-4, pool1-3 1e-12, pool4 1e-10
(the image term is the reference's exactly; on the scale of pool terms see DecodingSettings).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from harness.data import Dataset
from harness.errors import UsageError
from harness.images import save_grid
from harness.method import Batch, Method, Stage, register_method
from harness.models import MACRO_LAYERS, SWITCHES, Encoding, MacroEncoder
from methods.decoding.decoders import Decoder

PLACEMENTS = ("first", "all", "layerwise")


class DecodingNet(nn.Module):
    """A classifier (``encoder``) with a mirrored ``decoder``; forward classifies."""

    def __init__(
        self, encoder: MacroEncoder, kind: str, mean: tuple[float, ...], std: tuple[float, ...]
    ):
        super().__init__()
        self.encoder = encoder
        self.decoder = Decoder(encoder.macro_specs(), kind)
        self.kind = kind
        self.register_buffer("pixel_mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("pixel_std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def encode(self, x: torch.Tensor, activations: bool = False) -> Encoding:
        """The encoder pass the decoder reads (with switches for SWWAE); ``activations``
        also keeps every conv's output (inversion from inside a macro-layer)."""
        return self.encoder.encode(x, switches=self.kind == "swwae", activations=activations)

    def targets(self, x: torch.Tensor, enc: Encoding) -> list[torch.Tensor]:
        """What each decoder level predicts: the image (reference units), pool1, pool2, ..."""
        return [x * self.pixel_std, *enc.pooled[:-1]]

    def to_pixels(self, image: torch.Tensor) -> torch.Tensor:
        """An image in reference units -> [0, 1] pixels, for pictures."""
        return (image.float() + self.pixel_mean).clamp(0, 1)


def level_name(level: int) -> str:
    return "image" if level == 0 else f"pool{level}"


class DecodingPathway(Method):
    kind: ClassVar[str]
    placement: ClassVar[str]
    config_sections = ("decoding",)

    def build_model(self, encoder: MacroEncoder, dataset: Dataset) -> nn.Module:
        levels = len(encoder.macro_specs())
        weights = list(self.cfg.decoding.weights)
        if len(weights) != levels:
            sites = ", ".join(level_name(i) for i in range(levels))
            raise UsageError(
                f"decoding.weights has {len(weights)} values but model {self.cfg.model.name!r} "
                f"has {levels} loss sites ({sites}); give one weight per site"
            )
        return DecodingNet(encoder, self.kind, dataset.mean, dataset.std)

    def stages(self) -> list[Stage]:
        stages = [
            Stage("pretrain", initializes=True, starts_from="baseline"),
            Stage("decoder_layerwise", trains="decoder", unlabeled=True),
        ]
        if self.placement != "layerwise":
            stages.append(Stage("decoder_topdown", trains="decoder", unlabeled=True))
        stages.append(Stage("finetune", unlabeled=True))
        return stages

    def parameters(self, model: nn.Module, stage: Stage) -> Iterable[nn.Parameter]:
        if stage.trains == "decoder":
            return model.decoder.parameters()
        return super().parameters(model, stage)

    def pathway(self, stage_name: str) -> tuple[str, list[int]]:
        """(``topdown`` | ``layerwise``, the levels that carry a loss) in a stage."""
        levels = list(range(len(self.cfg.decoding.weights)))
        if stage_name == "decoder_layerwise" or (
            stage_name == "finetune" and self.placement == "layerwise"
        ):
            return "layerwise", levels
        return "topdown", [0] if self.placement == "first" else levels

    def loss(self, model: nn.Module, stage: Stage, batch: Batch) -> dict[str, torch.Tensor]:
        # labeled and unlabeled images go through the encoder as one batch
        images = torch.cat([batch.x, *batch.u]) if batch.x is not None else torch.cat(batch.u)
        enc = model.encode(images)
        terms = {}
        if stage.name == "finetune":
            logits = model.encoder.classify(enc.pooled[-1][: len(batch.x)])
            terms["cls"] = F.cross_entropy(logits, batch.y)
        mode, sites = self.pathway(stage.name)
        outputs = (
            model.decoder.layerwise(enc) if mode == "layerwise" else model.decoder.topdown(enc)
        )
        targets = model.targets(images, enc)
        for level in sites:
            error = F.mse_loss(outputs[level].float(), targets[level].float(), reduction="sum")
            weight = self.cfg.decoding.weights[level]
            terms[f"recon_{level_name(level)}"] = weight * error / (2 * len(images))
        return terms

    @torch.no_grad()
    def val_report(
        self,
        model: nn.Module,
        val_batches: Iterable[torch.Tensor],
        folder: Path | None,
        reduce: Callable[[torch.Tensor], torch.Tensor] = lambda sums: sums,
    ) -> dict[str, float]:
        """Per level, the relative squared error on val of both pathways:
        ``recon_rel_<topdown|layerwise>_<level>`` = sum (x_hat - x)^2 / sum x^2 (1.0 is
        no better than predicting zeros); the top-down chain reconstructs from the
        top code, the layerwise decoders each from the clean level above.
        ``samples.png``: the first val images above their top-down reconstructions."""
        was_training = model.training
        model.eval()
        levels = len(self.cfg.decoding.weights)
        modes = ("topdown", "layerwise")
        error = {mode: torch.zeros(levels) for mode in modes}
        energy = torch.zeros(levels)
        rows: list[list[torch.Tensor]] = []
        for x in val_batches:
            enc = model.encode(x)
            targets = model.targets(x, enc)
            for level, target in enumerate(targets):
                energy[level] += target.float().pow(2).sum().cpu()
            for mode in modes:
                outputs = model.decoder(enc, mode)
                for level, target in enumerate(targets):
                    error[mode][level] += (
                        (outputs[level].float() - target.float()).pow(2).sum().cpu()
                    )
                if mode == "topdown" and not rows and self.cfg.decoding.samples > 0:
                    n = self.cfg.decoding.samples
                    rows = [
                        list(model.to_pixels(targets[0][:n])),
                        list(model.to_pixels(outputs[0][:n])),
                    ]
        model.train(was_training)
        if rows and folder is not None:
            save_grid(rows, folder / "samples.png")
        sums = reduce(torch.stack([error["topdown"], error["layerwise"], energy]))
        error = {"topdown": sums[0], "layerwise": sums[1]}
        energy = sums[2]
        return {
            f"recon_rel_{mode}_{level_name(level)}": float(
                error[mode][level] / energy[level].clamp(min=1e-12)
            )
            for mode in modes
            for level in range(levels)
        }


def _register(kind: str, placement: str) -> None:
    name = f"{kind}_{placement}"
    cls = type(
        name,
        (DecodingPathway,),
        {
            "kind": kind,
            "placement": placement,
            # the decoder mirrors macro-layers; SWWAE unpools with the encoder's switches
            "needs": frozenset({MACRO_LAYERS, SWITCHES} if kind == "swwae" else {MACRO_LAYERS}),
            "__doc__": (
                f"{kind.upper()}-{placement}: decoding pathway variant (see the module docstring)."
            ),
        },
    )
    register_method(name)(cls)


for _kind in ("sae", "swwae"):
    for _placement in PLACEMENTS:
        _register(_kind, _placement)
