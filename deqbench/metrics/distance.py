"""A distribution distance between image sets that needs no downloaded weights (Table 1 offline).

Sliced Wasserstein-1 distance in pixel space: both sets are projected on ``projections`` random unit directions
(seeded), and the 1-D Wasserstein-1 distances of the projections, computed between their quantile functions on a
common grid, are averaged.  It is 0 for identical sets, symmetric, and grows as one set moves away from the other;
it is *not* comparable with FID (no Inception features), so tables label it as such.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class SlicedWasserstein:
    value: float
    projections: int
    n_a: int
    n_b: int
    seed: int
    space: str = "pixels in [-1, 1]"


def sliced_wasserstein(a: Tensor, b: Tensor, projections: int = 256, quantiles: int = 128,
                       seed: int = 0) -> SlicedWasserstein:
    """SW_1(a, b) of two image sets ``(N, ...)`` and ``(M, ...)`` of the same per-image shape, in float64."""
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(f"image shapes differ: {tuple(a.shape[1:])} vs {tuple(b.shape[1:])}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"need at least 2 images per set, got {len(a)} and {len(b)}")
    x, y = a.detach().flatten(1).double().cpu(), b.detach().flatten(1).double().cpu()
    gen = torch.Generator().manual_seed(seed)
    directions = torch.randn(x.shape[1], projections, generator=gen, dtype=torch.float64)
    directions /= directions.norm(dim=0, keepdim=True)
    levels = (torch.arange(quantiles, dtype=torch.float64) + 0.5) / quantiles
    qa = torch.quantile(x @ directions, levels, dim=0)
    qb = torch.quantile(y @ directions, levels, dim=0)
    return SlicedWasserstein(float((qa - qb).abs().mean()), projections, len(a), len(b), seed)
