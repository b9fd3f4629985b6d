"""The standard 4-block convolutional backbone of the meta-learning baselines (spec B.6 "Common backbone").

Finn et al. 2017 (MAML, Sec. 5.2), used unchanged by Reptile and iMAML: four blocks of
``conv3x3(64 filters) -> BatchNorm -> ReLU``; on Omniglot the blocks downsample with **stride-2 convolutions
instead of max-pooling** (spec B.6), 28 -> 14 -> 7 -> 4 -> 2 px; the feature map is averaged over space to 64
features and a ``Linear(64 -> n_way)`` head gives the logits.  ``downsample="maxpool"`` gives the
miniImageNet-style variant (stride-1 conv, then 2x2 max-pool; 28 -> 14 -> 7 -> 3 -> 1 px), same head.

BatchNorm handling (spec B.6, Reptile; AMBIG-B4): the BatchNorm layers keep **no running statistics**
(``track_running_stats=False``), so they always normalise with the statistics of the batch they are given, in
training and evaluation alike, as in Finn et al.'s code.  Evaluating a whole query set in one call is therefore
**transductive** (the setting of Table 6's Reptile 97.68 %, and of MAML's published numbers); feeding query images
one at a time is the non-transductive variant.  It also means the module has no buffers, so
``torch.func.functional_call(model, params, (x,))`` is a pure function of ``params`` (no state is written).
``norm="group"`` (GroupNorm, 8 groups) or ``norm="none"`` remove the batch dependence altogether.  Weights use
PyTorch's default initialisation (not specified by the spec).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

__all__ = ["Conv4", "Norm", "Downsample"]

Norm = Literal["batch", "group", "none"]
Downsample = Literal["stride", "maxpool"]


def _norm(kind: Norm, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels, track_running_stats=False)
    if kind == "group":
        return nn.GroupNorm(8, channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm must be 'batch', 'group' or 'none', got {kind!r}")


class Conv4(nn.Module):
    """4 x [conv3x3(``hidden``) -> norm -> ReLU (-> 2x2 max-pool)], spatial mean, ``Linear(hidden -> n_way)``.

    Input ``(B, in_channels, H, W)`` (28 x 28 x 1 for Omniglot), output logits ``(B, n_way)``.  See the module
    docstring for the BatchNorm (transductive batch statistics) and downsampling choices (spec B.6).
    """

    def __init__(
        self, n_way: int = 5, in_channels: int = 1, hidden: int = 64, *, norm: Norm = "batch",
        downsample: Downsample = "stride", blocks: int = 4,
    ) -> None:
        super().__init__()
        if downsample not in ("stride", "maxpool"):
            raise ValueError(f"downsample must be 'stride' or 'maxpool', got {downsample!r}")
        if n_way < 1 or blocks < 1:
            raise ValueError("n_way and blocks must be >= 1")
        self.n_way, self.norm, self.downsample = n_way, norm, downsample
        layers: list[nn.Module] = []
        channels = in_channels
        for _ in range(blocks):
            stride = 2 if downsample == "stride" else 1
            layers += [nn.Conv2d(channels, hidden, 3, stride=stride, padding=1), _norm(norm, hidden), nn.ReLU()]
            if downsample == "maxpool":
                layers.append(nn.MaxPool2d(2))
            channels = hidden
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(hidden, n_way)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, n_way)`` of images ``(B, C, H, W)``."""
        return self.head(torch.flatten(self.features(x).mean(dim=(-2, -1)), 1))
