"""MAML (Finn, Abbeel, Levine 2017), second order, on ``torch.func`` (spec B.6 "MAML").

Inner loop (MAML Eq. 1): ``phi_{k+1} = phi_k - alpha * grad L_support(phi_k)``, ``phi_0 = theta``.
Outer objective (MAML Eq. 2 / Alg. 2): ``L_query(phi_K(theta))``, differentiated through the whole inner loop:
the adaptation is written with ``torch.func.grad``, so ``torch.func.grad`` of the query loss with respect to theta
includes the Hessian terms (the "second-order" meta-gradient).  ``first_order=True`` drops them (FOMAML): the query
gradient at phi is used as the meta-gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from torch import Tensor
from torch.func import grad, grad_and_value

from ._functional import Batch, LossFn, Params, tree_detach
from ._tasks import MetaGradient, mean_over_tasks

__all__ = ["MAMLConfig", "maml_adapt", "maml_meta_gradient", "maml_meta_gradient_batch"]


@dataclass(frozen=True)
class MAMLConfig:
    """MAML's standard 5-way 1-shot Omniglot settings (Finn et al. 2017, as listed in spec B.6).

    ``eval_inner_steps`` is the step count at test time (3 per spec B.6 [U]); the outer optimiser is Adam with
    ``outer_lr`` over meta-batches of ``meta_batch_size`` tasks for ``meta_iterations`` steps.
    """

    inner_steps: int = 1
    inner_lr: float = 0.4
    eval_inner_steps: int = 3
    meta_batch_size: int = 32
    outer_lr: float = 1e-3
    meta_iterations: int = 60_000
    first_order: bool = False

    def __post_init__(self) -> None:
        if self.inner_steps < 0 or self.eval_inner_steps < 0:
            raise ValueError("inner step counts must be >= 0")
        if self.meta_batch_size < 1:
            raise ValueError(f"meta_batch_size must be >= 1, got {self.meta_batch_size}")


def maml_adapt(loss_fn: LossFn, params: Mapping[str, Tensor], support: Batch, *, steps: int, lr: float) -> Params:
    """``steps`` SGD steps on the support loss from ``params`` (MAML Eq. 1), differentiable in ``params``.

    Pure ``torch.func``: called inside ``torch.func.grad`` (or on parameters that require grad) the result carries
    the graph of the whole inner loop, which is what the second-order meta-gradient differentiates.
    """
    support_grad = grad(loss_fn)
    phi = dict(params)
    for _ in range(steps):
        g = support_grad(phi, *support)
        phi = {k: phi[k] - lr * g[k] for k in phi}
    return phi


def maml_meta_gradient(
    loss_fn: LossFn, params: Mapping[str, Tensor], support: Batch, query: Batch, config: MAMLConfig = MAMLConfig(),
) -> MetaGradient:
    """One task's query loss after adaptation and its gradient with respect to theta (MAML Eq. 2, Alg. 2 line 10).

    Second order by default: ``grad_theta L_query(phi(theta))`` through ``config.inner_steps`` inner steps.  With
    ``config.first_order`` the inner loop is run on detached parameters and the query gradient at phi is returned.
    The result is detached from ``params``.
    """
    theta = tree_detach(params)
    if config.first_order:
        phi = tree_detach(maml_adapt(loss_fn, theta, support, steps=config.inner_steps, lr=config.inner_lr))
        grads, loss = grad_and_value(loss_fn)(phi, *query)
        return MetaGradient(loss.detach(), tree_detach(grads))

    def query_loss(p: Params) -> Tensor:
        return loss_fn(maml_adapt(loss_fn, p, support, steps=config.inner_steps, lr=config.inner_lr), *query)

    grads, loss = grad_and_value(query_loss)(theta)
    return MetaGradient(loss.detach(), tree_detach(grads))


def maml_meta_gradient_batch(
    loss_fn: LossFn, params: Mapping[str, Tensor], support: Batch, query: Batch, config: MAMLConfig = MAMLConfig(),
    *, vectorize: bool = True,
) -> MetaGradient:
    """Mean of :func:`maml_meta_gradient` over a meta-batch (leading task axis on the data; see ``mean_over_tasks``)."""
    return mean_over_tasks(lambda p, s, q: maml_meta_gradient(loss_fn, p, s, q, config), params, support, query,
                           vectorize=vectorize)
