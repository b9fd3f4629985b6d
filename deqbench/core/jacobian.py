"""Jacobian regularisation of an equilibrium layer (Bai et al. 2021; JIIO paper eq. 27)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor


def hutchinson_jacobian_loss(f_flat: Callable[[Tensor], Tensor], z: Tensor, probes: int = 2) -> Tensor:
    """Hutchinson estimate of ||J_z||_F^2 / numel(z), with J_z = df/dz at ``z`` (B, D).

    E_eps ||eps^T J||^2 = ||J||_F^2 for eps ~ N(0, I); the estimate averages
    ``probes`` draws and is divided by the number of state entries, as the
    reference code does.  Differentiable w.r.t. the parameters of ``f``
    (double backward); ``z`` itself is treated as a constant.
    """
    if probes < 1:
        raise ValueError(f"probes must be >= 1, got {probes}")
    with torch.enable_grad():
        z_req = z.detach().requires_grad_()
        fz = f_flat(z_req)
        total = fz.new_zeros(())
        for _ in range(probes):
            probe = torch.randn_like(fz)
            (vjp,) = torch.autograd.grad(fz, z_req, probe, create_graph=True, retain_graph=True)
            total = total + vjp.pow(2).sum()
    return total / (probes * z.numel())
