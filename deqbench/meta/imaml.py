"""iMAML (Rajeswaran, Finn, Kakade, Levine 2019), GD inner solver, on ``torch.func`` (spec B.6 "iMAML-GD").

Inner problem (iMAML Sec. 3, proximal regularisation):
``phi*(theta) = argmin_phi L_support(phi) + (lam/2) ||phi - theta||^2``, approximated
by ``inner_steps`` gradient-descent steps from ``phi_0 = theta``.
Implicit meta-gradient (iMAML Lemma 1): ``d phi*/d theta = (I + H/lam)^{-1}`` with
``H = hess L_support(phi*)``, so the task's meta-gradient is ``(I + H/lam)^{-1} grad L_query(phi*)``, solved
approximately with ``cg_steps`` conjugate-gradient steps (iMAML Sec. 3.1, Alg. 2) on Hessian-vector products.
HVPs are forward-over-reverse, ``torch.func.jvp`` of ``torch.func.grad(L_support)`` at phi*, one per CG step
(reverse-over-reverse fails under ``vmap`` through BatchNorm's double backward in torch 2.14: "accessing `data`
under vmap transform").  No gradient flows through the inner loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import torch
from torch import Tensor
from torch.func import grad, grad_and_value, jvp

from ._functional import Batch, LossFn, Params, tree_axpy, tree_detach, tree_dot, tree_zeros_like
from ._tasks import MetaGradient, mean_over_tasks

__all__ = ["IMAMLConfig", "imaml_adapt", "conjugate_gradient", "imaml_meta_gradient", "imaml_meta_gradient_batch"]


@dataclass(frozen=True)
class IMAMLConfig:
    """iMAML-GD's 5-way 1-shot Omniglot settings (spec B.6): lam 2.0, 16 inner GD steps [Q], inner lr 0.1 [U],
    5 CG steps for the meta-gradient [Q]; outer Adam lr 1e-3 [U], meta-batch 32 [U], 20,000 meta-steps [U]."""

    lam: float = 2.0
    inner_steps: int = 16
    inner_lr: float = 0.1
    cg_steps: int = 5
    meta_batch_size: int = 32
    outer_lr: float = 1e-3
    meta_steps: int = 20_000

    def __post_init__(self) -> None:
        if self.lam <= 0:
            raise ValueError(f"lam must be > 0, got {self.lam}")
        if self.inner_steps < 0 or self.cg_steps < 0:
            raise ValueError("inner_steps and cg_steps must be >= 0")


def imaml_adapt(
    loss_fn: LossFn, params: Mapping[str, Tensor], support: Batch, *, lam: float, steps: int, lr: float,
) -> Params:
    """``steps`` GD steps on ``L_support(phi) + (lam/2) ||phi - theta||^2`` from ``phi = theta`` (iMAML Sec. 3,
    the "GD" inner solver of iMAML Table 2).  theta is detached: the meta-gradient is implicit, not unrolled."""
    theta = tree_detach(params)
    support_grad = grad(loss_fn)
    phi = dict(theta)
    for _ in range(steps):
        g = support_grad(phi, *support)
        phi = {k: phi[k] - lr * (g[k] + lam * (phi[k] - theta[k])) for k in phi}
    return tree_detach(phi)


def conjugate_gradient(
    matvec: Callable[[Params], Params], b: Mapping[str, Tensor], steps: int,
) -> Params:
    """Approximately solve ``A x = b`` for symmetric positive-definite ``A`` (given as ``matvec``) with ``steps``
    conjugate-gradient iterations from ``x = 0`` (Hestenes & Stiefel 1952; Nocedal & Wright Alg. 5.2).

    Exact (in exact arithmetic) after ``n`` steps for an ``n``-dimensional problem.  No data-dependent Python
    branching, so it runs under ``vmap``: a step whose curvature ``p^T A p`` or residual is zero moves nothing.
    """
    x = tree_zeros_like(b)
    r = dict(b)
    p = dict(b)
    rr = tree_dot(r, r)
    for _ in range(steps):
        ap = matvec(p)
        pap = tree_dot(p, ap)
        ok = pap > 0
        alpha = torch.where(ok, rr / torch.where(ok, pap, torch.ones_like(pap)), torch.zeros_like(rr))
        x = tree_axpy(alpha, p, x)
        r = tree_axpy(-alpha, ap, r)
        rr_new = tree_dot(r, r)
        nonzero = rr > 0
        beta = torch.where(nonzero, rr_new / torch.where(nonzero, rr, torch.ones_like(rr)), torch.zeros_like(rr))
        p = tree_axpy(beta, p, r)
        rr = rr_new
    return x


def imaml_meta_gradient(
    loss_fn: LossFn, params: Mapping[str, Tensor], support: Batch, query: Batch, config: IMAMLConfig = IMAMLConfig(),
) -> MetaGradient:
    """One task's query loss at phi* and its implicit meta-gradient ``(I + H/lam)^{-1} grad L_query(phi*)``
    (iMAML Lemma 1, Alg. 2), with phi* from :func:`imaml_adapt` and ``config.cg_steps`` CG steps."""
    phi = imaml_adapt(loss_fn, params, support, lam=config.lam, steps=config.inner_steps, lr=config.inner_lr)
    g_query, loss = grad_and_value(loss_fn)(phi, *query)
    support_grad = grad(loss_fn)

    def matvec(v: Params) -> Params:
        _, hv = jvp(lambda p: support_grad(p, *support), (phi,), (v,))  # H v, forward-over-reverse
        return tree_axpy(1.0 / config.lam, hv, v)

    v = conjugate_gradient(matvec, tree_detach(g_query), config.cg_steps)
    return MetaGradient(loss.detach(), tree_detach(v))


def imaml_meta_gradient_batch(
    loss_fn: LossFn, params: Mapping[str, Tensor], support: Batch, query: Batch,
    config: IMAMLConfig = IMAMLConfig(), *, vectorize: bool = True,
) -> MetaGradient:
    """Mean of :func:`imaml_meta_gradient` over a meta-batch (leading task axis; see ``mean_over_tasks``)."""
    return mean_over_tasks(lambda p, s, q: imaml_meta_gradient(loss_fn, p, s, q, config), params, support, query,
                           vectorize=vectorize)
