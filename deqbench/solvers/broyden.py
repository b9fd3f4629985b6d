"""Limited-memory ("good") Broyden's method on g(z) = f(z) - z.

The inverse Jacobian of g is approximated as ``-I + sum_i u_i v_i^T`` with at
most ``memory`` rank-one terms kept in a ring buffer (the oldest pair is
overwritten).  The step is the quasi-Newton step ``z+ = z - Hinv g`` with unit
length, so the first step is a forward iteration.  Updates whose denominator
vanishes are skipped per sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor

from deqbench.solvers.base import FixedPointSolver, check_positive_int, register_solver


@dataclass
class BroydenState:
    U: Tensor  # (B, L, D)
    V: Tensor  # (B, L, D)
    prev_x: Tensor
    prev_g: Tensor


@register_solver
@dataclass
class Broyden(FixedPointSolver):
    """Limited-memory Broyden with ``memory`` rank-one updates."""

    name: ClassVar[str] = "broyden"
    memory: int = 20
    when_full: Literal["restart", "overwrite"] = "restart"

    def __post_init__(self) -> None:
        check_positive_int("memory", self.memory)
        if self.when_full not in ("restart", "overwrite"):
            raise ValueError(f"when_full must be 'restart' or 'overwrite', got {self.when_full!r}")

    def init(self, x0: Tensor) -> BroydenState:
        batch, dim = x0.shape
        compute = torch.promote_types(x0.dtype, torch.float32)
        zeros = torch.zeros(batch, self.memory, dim, dtype=compute, device=x0.device)
        return BroydenState(U=zeros, V=zeros.clone(), prev_x=x0.to(compute), prev_g=torch.zeros_like(x0, dtype=compute))

    def step(self, state: BroydenState, x: Tensor, fx: Tensor, g: Tensor, k: int) -> Tensor:
        compute = state.U.dtype
        xc, gc = x.to(compute), g.to(compute)
        if k == 0:
            state.prev_x, state.prev_g = xc, gc
            return fx  # Hinv = -I: plain forward step
        if self.when_full == "restart" and k > 1 and (k - 1) % self.memory == 0:
            state.U.zero_()
            state.V.zero_()
        dx = xc - state.prev_x
        dg = gc - state.prev_g
        # One pass over V for both products, one over U to combine them.
        v_dots = torch.bmm(state.V, torch.stack((dg, gc), dim=2))  # (B, L, 2)
        u_comb = torch.bmm(v_dots.transpose(1, 2), state.U)  # (B, 2, D)
        hinv_dg = -dg + u_comb[:, 0]
        hinv_g = -gc + u_comb[:, 1]
        u_dx = torch.bmm(state.U, dx.unsqueeze(2))  # (B, L, 1)
        v_new = -dx + torch.bmm(u_dx.transpose(1, 2), state.V).squeeze(1)  # dx^T Hinv
        denom = (v_new * dg).sum(1, keepdim=True)
        scale = (dx * dx).sum(1, keepdim=True)
        usable = denom.abs() > 1e-10 * scale + torch.finfo(compute).tiny
        u_new = torch.where(usable, (dx - hinv_dg) / torch.where(usable, denom, torch.ones_like(denom)), 0.0)
        v_new = torch.where(usable, v_new, 0.0)
        slot = (k - 1) % self.memory
        state.U[:, slot] = u_new
        state.V[:, slot] = v_new
        hinv_g = hinv_g + u_new * (v_new * gc).sum(1, keepdim=True)
        state.prev_x, state.prev_g = xc, gc
        return (xc - hinv_g).to(x.dtype)
