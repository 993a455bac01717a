"""Top-1 / top-5 error, single crop and dense, per the paper's protocol.

Single crop: the image at ``resize`` (shorter side), its ``crop`` x ``crop``
center. Dense: the whole ``resize`` x ``resize`` image through the fc layers
applied as convolutions; softmax scores are averaged over positions. The paper
(VGG-16 on ImageNet) uses resize 256 / crop 224; smaller suites scale both.
Folder datasets are stored as their center ``resize`` square, so dense
evaluation covers that square rather than the full non-square image.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from harness.data import ImageSet, center_crop, epoch_batches, load_batches, normalize
from harness.models import VGG

TOPK = 5  # the paper's second error column


@torch.no_grad()
def predict_topk(
    model: VGG,
    images: ImageSet,
    indices: np.ndarray,
    *,
    dense: bool,
    crop: int,
    resize: int,
    k: int,
    batch_size: int,
    mean: torch.Tensor,
    std: torch.Tensor,
    device: torch.device,
    num_workers: int = 0,
    channels_last: bool = False,
) -> np.ndarray:
    """The ``k`` highest-scoring classes of each image in ``indices``, best first: [N, k]."""
    was_training = model.training
    model.eval()
    k = min(k, model.classifier[-1].out_features)
    out = []
    batches = epoch_batches(indices, batch_size, shuffle=False)
    for x, _ in load_batches(images, batches, resize, num_workers):
        x = x.to(device, non_blocking=True)
        if not dense:
            x = center_crop(x, crop)
        x = normalize(x, mean, std)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if dense:
            scores = F.softmax(model.dense_logits(x).float(), dim=1).mean(dim=(2, 3))
        else:
            scores = F.softmax(model(x).float(), dim=1)
        out.append(scores.topk(k, dim=1).indices.cpu())
    model.train(was_training)
    dtype = np.int16 if k < 2**15 else np.int64
    return torch.cat(out).numpy().astype(dtype) if out else np.empty((0, k), dtype)


def error_rates(topk: np.ndarray, targets: np.ndarray) -> tuple[float, float]:
    """(top-1 error %, top-k error %) of predictions ``topk`` [N, k] against ``targets``."""
    hits = topk == targets[:, None]
    return 100.0 * (1.0 - hits[:, 0].mean()), 100.0 * (1.0 - hits.any(axis=1).mean())
