"""Small equilibrium layers and models for tests, benchmarks and quick examples.

They share the calling convention of the papers' models: a layer f(z, x) with
input injection, a cost on z, and GroupNorm only (never BatchNorm) so that
every sample's inner problem is independent of the rest of the batch.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MLPLayer(nn.Module):
    """f(z, x) = tanh(W z + U x + b), with W scaled to spectral norm ``contraction``."""

    def __init__(self, dim: int, in_dim: int, contraction: float = 0.9):
        super().__init__()
        self.W = nn.Linear(dim, dim, bias=False)
        self.U = nn.Linear(in_dim, dim)
        with torch.no_grad():
            self.W.weight.mul_(contraction / torch.linalg.matrix_norm(self.W.weight, ord=2))

    def forward(self, z: Tensor, x: Tensor) -> Tensor:
        return torch.tanh(self.W(z) + self.U(x))


class ConvLayer(nn.Module):
    """A contractive single-resolution block in the style of MDEQ's (Bai et al. 2020):
    f(z, x) = GN(relu(conv(relu(GN(conv(z)))) + x)), ``expansion``x wide inside.
    Unlike MDEQ's block it has no identity skip on z and only the second conv is
    not renormalised, so ``contraction`` (its weight scale) keeps plain iteration
    convergent; the multi-branch MDEQ lives in :mod:`deqbench.models.mdeq`."""

    def __init__(self, channels: int, expansion: int = 2, groups: int = 4, contraction: float = 0.3):
        super().__init__()
        hidden = channels * expansion
        self.conv1 = nn.Conv2d(channels, hidden, 3, padding=1, bias=False)
        self.gn1 = nn.GroupNorm(groups, hidden)
        self.conv2 = nn.Conv2d(hidden, channels, 3, padding=1, bias=False)
        self.gn3 = nn.GroupNorm(groups, channels)
        with torch.no_grad():
            self.conv2.weight.mul_(contraction)

    def forward(self, z: Tensor, x: Tensor) -> Tensor:
        h = F.relu(self.gn1(self.conv1(z)))
        h = self.conv2(h)
        return self.gn3(F.relu(h + x))


class SmallDEQClassifier(nn.Module):
    """Single-resolution DEQ classifier: injection conv, :class:`ConvLayer`, GN head.

    ``layer_fn(images)`` returns f(z, delta) for adversarial input optimisation
    of a perturbation delta of the images, and ``cost_fn(labels)`` the inner
    cost -CE of eq. (26).
    """

    def __init__(self, in_channels: int = 1, channels: int = 16, num_classes: int = 10, groups: int = 4):
        super().__init__()
        self.channels = channels
        self.inject = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.layer = ConvLayer(channels, groups=groups)
        self.head_norm = nn.GroupNorm(groups, channels)
        self.fc = nn.Linear(channels, num_classes)

    def z0(self, images: Tensor) -> Tensor:
        b, _, h, w = images.shape
        return images.new_zeros(b, self.channels, h, w)

    def layer_fn(self, images: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
        return lambda z, delta: self.layer(z, self.inject(images + delta))

    def logits(self, z: Tensor) -> Tensor:
        return self.fc(F.relu(self.head_norm(z)).mean(dim=(2, 3)))

    def cost_fn(self, labels: Tensor) -> Callable[[Tensor], Tensor]:
        return lambda z: -F.cross_entropy(self.logits(z), labels, reduction="none")


class SmallDEQGenerator(nn.Module):
    """Decoder-only DEQ generator: latent -> linear injection -> :class:`ConvLayer` -> conv+tanh.

    ``cost_fn(target)`` is the per-sample sum of squared errors, the inner cost
    of eq. (20) as the reference code sums it.
    """

    def __init__(self, latent_dim: int = 16, channels: int = 16, size: int = 16, out_channels: int = 1, groups: int = 4):
        super().__init__()
        self.channels, self.size = channels, size
        self.inject = nn.Linear(latent_dim, channels * size * size)
        self.layer = ConvLayer(channels, groups=groups)
        self.out = nn.Conv2d(channels, out_channels, 3, padding=1)

    def z0(self, latent: Tensor) -> Tensor:
        return latent.new_zeros(latent.shape[0], self.channels, self.size, self.size)

    def f(self, z: Tensor, latent: Tensor) -> Tensor:
        return self.layer(z, self.inject(latent).view_as(z))

    def decode(self, z: Tensor) -> Tensor:
        return torch.tanh(self.out(z))

    def cost_fn(self, target: Tensor) -> Callable[[Tensor], Tensor]:
        return lambda z: (self.decode(z) - target).pow(2).flatten(1).sum(1)
