"""Dense ("convolution") evaluation: a classifier's fc layers applied as convolutions.

The paper's dense protocol runs the whole rescaled image through the network:
fc6 becomes a ``head_size`` x ``head_size`` conv over the top feature map, fc7 and
fc8 1x1 convs, so there is a class score at every position. Shared by every model
whose classifier is a stack of Linear layers reading its top feature map whole.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def fc_as_convolutions(
    classifier: nn.Sequential, top: torch.Tensor, head_size: int
) -> torch.Tensor:
    """Class scores at every position of ``top`` ([B, C, H, W] -> [B, classes, h, w]).

    The kernels are views of the Linear weights (no copies); ReLU between the
    layers, dropout left out (it is the identity in eval mode).
    """
    linears = [m for m in classifier if isinstance(m, nn.Linear)]
    x = top
    for i, linear in enumerate(linears):
        kernel = head_size if i == 0 else 1
        weight = linear.weight.view(linear.out_features, -1, kernel, kernel)
        x = F.conv2d(x, weight, linear.bias)
        if i < len(linears) - 1:
            x = F.relu(x)
    return x
