"""Closed-form test problems: affine contractions and a linear DEQ with a quadratic cost."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def random_contraction(batch: int, dim: int, radius: float, dtype: torch.dtype, symmetric: bool = False) -> Tensor:
    """Batch of (dim, dim) matrices with spectral norm ``radius``."""
    A = torch.randn(batch, dim, dim, dtype=dtype)
    if symmetric:
        A = A + A.transpose(1, 2)
    return radius * A / torch.linalg.matrix_norm(A, ord=2).view(batch, 1, 1)


@dataclass
class AffineProblem:
    A: Tensor  # (B, D, D)
    b: Tensor  # (B, D)

    def f(self, z: Tensor) -> Tensor:
        return torch.bmm(self.A, z.unsqueeze(2)).squeeze(2) + self.b

    def solution(self) -> Tensor:
        eye = torch.eye(self.A.shape[1], dtype=self.A.dtype)
        return torch.linalg.solve(eye - self.A, self.b.unsqueeze(2)).squeeze(2)


def affine_problem(batch: int = 4, dim: int = 20, radius: float = 0.9, dtype: torch.dtype = torch.float64) -> AffineProblem:
    return AffineProblem(random_contraction(batch, dim, radius, dtype), torch.randn(batch, dim, dtype=dtype))


def relative_error(a: Tensor, b: Tensor) -> float:
    return float(((a - b).flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1)).max())


@dataclass
class LinearDEQCost:
    """f(z, x) = A z + B x + b,  l(z) = 0.5 ||C z - t||^2 per sample.

    z*(x) = M x + m with M = (I - A)^{-1} B, m = (I - A)^{-1} b, so the optimal
    input is the least-squares solution of (C M) x = t - C m.
    """

    A: Tensor
    B: Tensor
    b: Tensor
    C: Tensor
    t: Tensor

    def f(self, z: Tensor, x: Tensor) -> Tensor:
        return z @ self.A.T + x @ self.B.T + self.b

    def cost(self, z: Tensor) -> Tensor:
        return 0.5 * (z @ self.C.T - self.t).pow(2).sum(1)

    def z_of_x(self, x: Tensor) -> Tensor:
        eye = torch.eye(self.A.shape[0], dtype=self.A.dtype)
        return torch.linalg.solve(eye - self.A, (x @ self.B.T + self.b).T).T

    def optimal_x(self) -> Tensor:
        eye = torch.eye(self.A.shape[0], dtype=self.A.dtype)
        M = torch.linalg.solve(eye - self.A, self.B)
        m = torch.linalg.solve(eye - self.A, self.b)
        CM = (self.C @ M).expand(self.t.shape[0], -1, -1)
        return torch.linalg.lstsq(CM, (self.t - m @ self.C.T).unsqueeze(2)).solution.squeeze(2)


def linear_deq_cost(batch: int = 4, dz: int = 12, dx: int = 3, dc: int = 8, dtype: torch.dtype = torch.float64) -> LinearDEQCost:
    A = random_contraction(1, dz, 0.5, dtype)[0]
    return LinearDEQCost(
        A=A,
        B=torch.randn(dz, dx, dtype=dtype),
        b=torch.randn(dz, dtype=dtype),
        C=torch.randn(dc, dz, dtype=dtype),
        t=torch.randn(batch, dc, dtype=dtype),
    )
