"""Damped forward (Picard) iteration: z <- (1 - tau) z + tau f(z)  (JIIO paper eq. 4)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from deqbench.core.solvers.base import FixedPointSolver, check_range, register_solver


@register_solver
@dataclass
class ForwardIteration(FixedPointSolver):
    """Forward iteration with damping ``tau`` in (0, 1]."""

    name: ClassVar[str] = "forward"
    tau: float = 1.0

    def __post_init__(self) -> None:
        check_range("tau", self.tau, 0.0, 1.0, low_open=True)

    def init(self, x0: Tensor) -> None:
        return None

    def step(self, state: None, x: Tensor, fx: Tensor, g: Tensor) -> Tensor:
        if self.tau == 1.0:
            return fx
        return x.add(g, alpha=self.tau)
