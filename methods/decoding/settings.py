"""The ``decoding:`` section of a suite: the decoding pathways' own settings.

It enters the run ids of the six decoding methods (``config_sections``), less
``samples``, which only draws pictures; it never enters the baseline's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.config import register_settings
from harness.errors import UsageError

# Reference weights (VGG-16, ImageNet) of the reconstruction losses, by level:
# [image, pool1, pool2, pool3, pool4]; pool5 is the decoder's input.
VGG16_RECON_WEIGHTS = [1e-4, 1e-12, 1e-12, 1e-12, 1e-10]


@register_settings("decoding", id_exclude=("samples",))
@dataclass
class DecodingSettings:
    """Settings of the decoding-pathway methods (``methods/decoding/method.py``).

    A reconstruction term is ``weight * sum((x_hat - x)^2) / (2 * batch)`` (Caffe's
    EuclideanLoss). The image target is the input in the reference's units,
    (pixel - mean) / 255, i.e. the normalized input times the dataset's std;
    a pool target is the encoder's own pooled activation. One weight per level,
    image first, so the list is as long as the encoder has macro-layers.

    The defaults are the reference's VGG-16 values in the reference's convention;
    the image term matches it exactly. Pool terms carry the scale of the encoder's
    activations: a torchvision VGG-16 reads (pixel/255 - mean)/std where Caffe's
    read pixel - mean, so its activations are roughly 1/(255 std) ~ 1/58 of
    Caffe's and the pool terms ~1/3400 as large at the same weight. At 1e-10 and
    1e-12 those terms are small in both; multiply the pool weights by ~3400 to
    match Caffe's pool terms.
    """

    # reconstruction loss weights per loss site, image first (the docstring above)
    weights: list[float] = field(default_factory=lambda: list(VGG16_RECON_WEIGHTS))
    samples: int = 8  # val images (with reconstructions) drawn into samples.png

    def __post_init__(self) -> None:
        if any(not w >= 0 for w in self.weights):  # `not >=` also catches nan
            raise UsageError(f"decoding.weights must all be >= 0, got {list(self.weights)}")
        if self.samples < 0:
            raise UsageError(f"decoding.samples must be >= 0, got {self.samples}")
