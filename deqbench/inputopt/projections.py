"""Per-sample norm-ball projections and steepest-descent directions for input optimisation.

Inputs are (B, D) matrices (flattened perturbations or latents).  Each sample
is projected onto its own ball {x : ||x|| <= eps}.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

STEP_EPS = 1e-8


@dataclass(frozen=True)
class Projection:
    """Euclidean projection onto a norm ball of radius ``eps`` plus the matching
    normalised gradient step (the steepest-descent direction of unit norm)."""

    name: ClassVar[str] = "base"
    eps: float

    def __post_init__(self) -> None:
        if not isinstance(self.eps, (int, float)) or isinstance(self.eps, bool) or not self.eps > 0:
            raise ValueError(f"projection eps must be a number > 0, got {self.eps!r}")

    def __call__(self, x: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def steepest_direction(self, g: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def norm(self, x: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError


@dataclass(frozen=True)
class L2Ball(Projection):
    """x -> x * min(1, eps / ||x||_2);  direction g / ||g||_2."""

    name: ClassVar[str] = "l2"

    def norm(self, x: Tensor) -> Tensor:
        return torch.linalg.vector_norm(x.flatten(1), dim=1)

    def __call__(self, x: Tensor) -> Tensor:
        shape = (-1,) + (1,) * (x.dim() - 1)
        scale = (self.eps / (self.norm(x) + 1e-12)).clamp(max=1.0)
        return x * scale.view(shape)

    def steepest_direction(self, g: Tensor) -> Tensor:
        shape = (-1,) + (1,) * (g.dim() - 1)
        return g / (self.norm(g) + STEP_EPS).view(shape)


@dataclass(frozen=True)
class LinfBall(Projection):
    """x -> clamp(x, -eps, eps);  direction sign(g)."""

    name: ClassVar[str] = "linf"

    def norm(self, x: Tensor) -> Tensor:
        return x.flatten(1).abs().amax(dim=1)

    def __call__(self, x: Tensor) -> Tensor:
        return x.clamp(-self.eps, self.eps)

    def steepest_direction(self, g: Tensor) -> Tensor:
        return torch.sign(g)


PROJECTIONS: dict[str, type[Projection]] = {"l2": L2Ball, "linf": LinfBall}


def make_projection(name: str, eps: float | None) -> Projection:
    if name not in PROJECTIONS:
        raise ValueError(f"unknown projection {name!r}; known: {sorted(PROJECTIONS)}")
    if eps is None:
        raise ValueError(f"projection {name!r} needs eps")
    return PROJECTIONS[name](eps)
