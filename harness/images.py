"""Picture grids as PNG, written atomically: rows of images, e.g. a model's outputs
under its inputs (a method's pictures)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from harness.store import atomic_write_bytes


def grid_array(rows: list[list[torch.Tensor]], scale: int = 1, gap: int = 2) -> np.ndarray:
    """``rows`` of [C, H, W] images in [0, 1] (all one size) -> one uint8 HxWxC array.

    Tiles are separated by ``gap`` white pixels and enlarged ``scale`` times
    (nearest neighbour) so 28-px images stay readable.
    """
    c, h, w = rows[0][0].shape
    columns = max(len(row) for row in rows)
    height, width = len(rows) * (h + gap) - gap, columns * (w + gap) - gap
    canvas = np.ones((height, width, c), dtype=np.float32)
    for r, row in enumerate(rows):
        for col, image in enumerate(row):
            tile = image.detach().float().clamp(0, 1).cpu().permute(1, 2, 0).numpy()
            top, left = r * (h + gap), col * (w + gap)
            canvas[top : top + h, left : left + w] = tile
    canvas = canvas.repeat(scale, axis=0).repeat(scale, axis=1)
    return (canvas * 255).round().astype(np.uint8)


def save_grid(rows: list[list[torch.Tensor]], path: Path, scale: int = 3) -> None:
    array = grid_array(rows, scale)
    image = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
