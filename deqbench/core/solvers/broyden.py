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

from deqbench.core.solvers.base import FixedPointSolver, check_positive_int, register_solver


@dataclass
class BroydenState:
    U: Tensor  # (B, L, D)
    V: Tensor  # (B, L, D)
    prev_x: Tensor
    prev_g: Tensor
    count: Tensor  # () long: steps taken; slot count % L receives the next pair
    slots: Tensor  # (L,) long


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
        return BroydenState(
            U=zeros,
            V=zeros.clone(),
            prev_x=x0.to(compute).clone(),
            prev_g=torch.zeros_like(x0, dtype=compute),
            count=torch.zeros((), dtype=torch.long, device=x0.device),
            slots=torch.arange(self.memory, device=x0.device),
        )

    def step(self, state: BroydenState, x: Tensor, fx: Tensor, g: Tensor) -> Tensor:
        compute = state.U.dtype
        xc, gc = x.to(compute), g.to(compute)
        slot = state.count.remainder(self.memory)
        # Pairs in use for this step: the current cycle before ``slot`` (restart) or
        # every filled slot but ``slot`` (overwrite).  At count 0, dx = 0 and the
        # pair written is zero, so the first step is a forward iteration.
        if self.when_full == "restart":
            active = state.slots < slot
        else:
            active = (state.slots != slot) & (state.slots < state.count)
        active = active.view(1, -1, 1)
        dx = xc - state.prev_x
        dg = gc - state.prev_g
        # One pass over V for both products, one over U to combine them.
        v_dots = torch.where(active, torch.bmm(state.V, torch.stack((dg, gc), dim=2)), 0.0)  # (B, L, 2)
        u_comb = torch.bmm(v_dots.transpose(1, 2), state.U)  # (B, 2, D)
        hinv_dg = u_comb[:, 0] - dg
        hinv_g = u_comb[:, 1] - gc
        u_dx = torch.where(active, torch.bmm(state.U, dx.unsqueeze(2)), 0.0)  # (B, L, 1)
        v_new = torch.bmm(u_dx.transpose(1, 2), state.V).squeeze(1) - dx  # dx^T Hinv
        denom = (v_new * dg).sum(1, keepdim=True)
        usable = denom.abs() > 1e-10 * (dx * dx).sum(1, keepdim=True) + torch.finfo(compute).tiny
        u_new = torch.where(usable, (dx - hinv_dg) / torch.where(usable, denom, 1.0), 0.0)
        v_new = torch.where(usable, v_new, 0.0)
        index = slot.view(1)
        state.U.index_copy_(1, index, u_new.unsqueeze(1))
        state.V.index_copy_(1, index, v_new.unsqueeze(1))
        hinv_g = hinv_g + u_new * (v_new * gc).sum(1, keepdim=True)
        state.prev_x.copy_(xc)
        state.prev_g.copy_(gc)
        state.count.add_(1)
        return (xc - hinv_g).to(x.dtype)
