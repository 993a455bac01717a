"""The strong augmentation of FixMatch (Sohn et al. 2020): RandAugment with a random
magnitude per operation ("RA"), then Cutout, applied per image to a whole uint8
batch on its device.

Each image gets ``ops`` operations drawn uniformly from the 14 below, each with its
own magnitude drawn uniformly from the operation's range (the ranges of Sohn et al.
2020, Table 12, as the PyTorch port kekmodel/FixMatch-pytorch encodes them; Cubuk et
al. 2020 for the operations), then one Cutout square of half the image's side at a
random place, filled with gray (google-research/fixmatch: 16 px on 32 px images, fill
127). Geometric operations fill the uncovered border with the same gray. The
reference code applies each operation with probability 0.5; the authors describe
it as always applied (its issue #65), which is what this does.

Why our own and not ``torchvision.transforms.v2.RandAugment``: that draws one
operation and magnitude per call, for the whole batch, from torch's global RNG;
FixMatch draws per image, and the harness draws every augmentation from the run's
seeded generator (on the CPU, so the stream is the same on any device), so a resumed
run repeats its augmentations bit for bit. Under DDP a rank gets rows
``rank::world`` of a ``full``-image batch, and the draws are made for the whole
batch and sliced, as ``augment_batch`` does: an image's augmentation does not
depend on the world size.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

GRAY = 0.5  # the fill of Cutout and of geometric operations' borders (reference code: 128)

CUTOUT = 0.5  # Cutout's side, as a fraction of the image side


def _blend(image: torch.Tensor, degenerate: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL's ImageEnhance: factor 0 gives ``degenerate``, 1 the image."""
    return (degenerate + factor.view(-1, 1, 1, 1) * (image - degenerate)).clamp_(0.0, 1.0)


def _gray(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] != 3:
        return x
    weights = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype)
    return (x * weights.view(1, 3, 1, 1)).sum(1, keepdim=True)


def _autocontrast(x: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
    """PIL's ImageOps.autocontrast per image and channel: the levels stretched to 0-255,
    as PIL computes them (level * scale + offset in float64, truncated)."""
    levels = (x.double() * 255).round()
    low = levels.amin(dim=(2, 3), keepdim=True)
    high = levels.amax(dim=(2, 3), keepdim=True)
    spread = high - low
    # tensor / tensor: a true IEEE division (a Python number over a tensor is computed
    # as a product with its reciprocal, one ulp off PIL's)
    scale = torch.full_like(spread, 255.0) / spread.clamp_min(1.0)
    stretched = torch.trunc(levels * scale + (-low * scale)).clamp_(0, 255) / 255.0
    return torch.where(spread > 0, stretched, levels / 255.0).to(x.dtype)


def _brightness(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return _blend(x, torch.zeros_like(x), m)


def _color(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return _blend(x, _gray(x).expand_as(x), m)


def _contrast(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
    return _blend(x, mean.expand_as(x), m)


def _equalize(x: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
    """PIL's ImageOps.equalize per image and channel, on the 256 levels."""
    b, c, h, w = x.shape
    levels = (x * 255).round().long().view(b * c, h * w)
    hist = torch.zeros(b * c, 256, device=x.device).scatter_add_(
        1, levels, torch.ones_like(levels, dtype=torch.float)
    )
    # PIL: step = (pixels - count of the last non-empty level) // 255,
    # lut = (pixels below the level + step // 2) // step
    last = 255 - (hist.flip(1) > 0).float().argmax(1)
    step = ((h * w - hist.gather(1, last[:, None]).squeeze(1)) // 255).clamp_min(0)
    before = hist.cumsum(1) - hist
    lut = ((before + (step // 2)[:, None]) // step.clamp_min(1)[:, None]).clamp_(0, 255)
    mapped = lut.gather(1, levels) / 255.0
    out = torch.where(step[:, None] > 0, mapped, levels / 255.0)
    return out.view(b, c, h, w)


def _posterize(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    drop = (8 - m.round().long()).clamp(0, 8)  # low bits dropped
    mask = (255 - (2**drop - 1)).view(-1, 1, 1, 1)
    return ((x * 255).round().long() & mask).float() / 255.0


def _sharpness(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """PIL's ImageEnhance.Sharpness: blend with a 3x3 smoothed image (border unchanged)."""
    c = x.shape[1]
    kernel = torch.ones(3, 3, device=x.device, dtype=x.dtype)
    kernel[1, 1] = 5.0
    kernel = (kernel / 13.0).expand(c, 1, 3, 3)
    smooth = x.clone()
    smooth[:, :, 1:-1, 1:-1] = F.conv2d(x, kernel, groups=c)
    return _blend(x, smooth, m)


def _solarize(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= m.view(-1, 1, 1, 1), 1.0 - x, x)


def _affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Sample ``x`` at theta @ (output coordinates), nearest, gray outside."""
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    inside = F.grid_sample(
        torch.ones_like(x[:, :1]), grid, mode="nearest", padding_mode="zeros", align_corners=False
    )
    return out + (1.0 - inside) * GRAY


def _matrix(m: torch.Tensor) -> torch.Tensor:
    theta = torch.zeros(len(m), 2, 3, device=m.device, dtype=m.dtype)
    theta[:, 0, 0] = 1.0
    theta[:, 1, 1] = 1.0
    return theta


def _rotate(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    angle = m * (math.pi / 180.0)
    theta = _matrix(m)
    theta[:, 0, 0], theta[:, 0, 1] = angle.cos(), -angle.sin()
    theta[:, 1, 0], theta[:, 1, 1] = angle.sin(), angle.cos()
    return _affine(x, theta)


def _shear_x(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    theta = _matrix(m)
    theta[:, 0, 1] = m
    return _affine(x, theta)


def _shear_y(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    theta = _matrix(m)
    theta[:, 1, 0] = m
    return _affine(x, theta)


def _translate_x(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    theta = _matrix(m)
    theta[:, 0, 2] = 2.0 * m  # a fraction of the width, in [-1, 1] grid units
    return _affine(x, theta)


def _translate_y(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    theta = _matrix(m)
    theta[:, 1, 2] = 2.0 * m
    return _affine(x, theta)


# (name, low, high, function) of each operation, its magnitude drawn in [low, high]
# (Sohn et al. 2020, Table 12); identity is drawn like the others and changes nothing
OPERATIONS: tuple[
    tuple[str, float, float, Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None], ...
] = (
    ("autocontrast", 0.0, 0.0, _autocontrast),
    ("brightness", 0.05, 0.95, _brightness),
    ("color", 0.05, 0.95, _color),
    ("contrast", 0.05, 0.95, _contrast),
    ("equalize", 0.0, 0.0, _equalize),
    ("identity", 0.0, 0.0, None),
    ("posterize", 4.0, 8.0, _posterize),  # bits kept
    ("rotate", -30.0, 30.0, _rotate),  # degrees
    ("sharpness", 0.05, 0.95, _sharpness),
    ("shear_x", -0.3, 0.3, _shear_x),
    ("shear_y", -0.3, 0.3, _shear_y),
    ("solarize", 0.0, 1.0, _solarize),  # threshold
    ("translate_x", -0.3, 0.3, _translate_x),  # fraction of the image
    ("translate_y", -0.3, 0.3, _translate_y),
)


def rand_augment(
    images: torch.Tensor,
    generator: torch.Generator,
    *,
    ops: int = 2,
    full: int | None = None,
    rank: int = 0,
    world: int = 1,
) -> torch.Tensor:
    """uint8 [B, C, H, W] -> uint8: ``ops`` random operations per image, then Cutout.

    The draws (operation, magnitude, Cutout place) are made on the CPU from
    ``generator`` for the ``full`` batch and sliced to this rank's rows."""
    drawn = full or len(images)
    which = torch.randint(0, len(OPERATIONS), (drawn, ops), generator=generator)[rank::world]
    unit = torch.rand(drawn, ops, generator=generator)[rank::world]
    cut = torch.rand(drawn, 2, generator=generator)[rank::world]
    low = torch.tensor([op[1] for op in OPERATIONS])
    high = torch.tensor([op[2] for op in OPERATIONS])
    magnitude = (low[which] + unit * (high[which] - low[which])).to(images.device)
    which = which.to(images.device)
    x = images.float() / 255.0
    for round_ in range(ops):
        for index, (_, _, _, apply) in enumerate(OPERATIONS):
            rows = (which[:, round_] == index).nonzero().squeeze(1)
            if apply is None or len(rows) == 0:
                continue
            x[rows] = apply(x[rows], magnitude[rows, round_])
        x = (x * 255.0).round_().clamp_(0.0, 255.0) / 255.0  # PIL works on 256 levels
    x = cutout(x, cut.to(images.device))
    return (x * 255.0).round_().to(torch.uint8)


def cutout(x: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
    """One gray square per image, of side ``CUTOUT`` x the image's, centred at
    (d0 * height, d1 * width) and clipped at the border (``draws``: [B, 2] in [0, 1))."""
    _, _, height, width = x.shape
    side = max(1, round(CUTOUT * min(height, width)))
    top = (draws[:, 0] * height - side / 2).round()
    left = (draws[:, 1] * width - side / 2).round()
    rows = torch.arange(height, device=x.device).view(1, -1, 1)
    cols = torch.arange(width, device=x.device).view(1, 1, -1)
    inside_rows = (rows >= top.view(-1, 1, 1)) & (rows < (top + side).view(-1, 1, 1))
    inside_cols = (cols >= left.view(-1, 1, 1)) & (cols < (left + side).view(-1, 1, 1))
    square = (inside_rows & inside_cols).unsqueeze(1)
    return torch.where(square, torch.full_like(x, GRAY), x)
