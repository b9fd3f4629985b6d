"""Parameter dictionaries as pytrees: the small algebra the meta-learners share (spec B.6 implementation note).

Every meta-learner here works on ``Params = dict[str, Tensor]`` (the names of ``module.named_parameters()``) and a
loss ``LossFn(params, inputs, targets) -> scalar`` built with :func:`torch.func.functional_call`, so adaptation is a
pure function of the parameters and ``torch.func.grad`` / ``vmap`` compose over it.
"""

from __future__ import annotations

from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

__all__ = [
    "Params", "LossFn", "Batch", "module_loss", "module_params", "tree_add", "tree_sub", "tree_scale",
    "tree_axpy", "tree_dot", "tree_zeros_like", "tree_detach", "tree_mean", "assign_grads",
]

#: Named parameters of a model, as ``dict(module.named_parameters())``.
Params = dict[str, Tensor]
#: ``loss(params, inputs, targets)`` -> scalar tensor.
LossFn = Callable[[Mapping[str, Tensor], Tensor, Tensor], Tensor]
#: ``(inputs, targets)`` of a support or query set.
Batch = tuple[Tensor, Tensor]


def module_loss(module: nn.Module, loss: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy) -> LossFn:
    """``loss(functional_call(module, params, inputs), targets)``: a model and a criterion as a :data:`LossFn`.

    Buffers (if any) are taken from the module as they are when the loss is called.  A module whose forward
    writes buffers (BatchNorm with running statistics in training mode) would be mutated by every call; the
    meta-learners' backbone (:class:`deqbench.models.conv4.Conv4`) keeps none.
    """

    def fn(params: Mapping[str, Tensor], inputs: Tensor, targets: Tensor) -> Tensor:
        state = {**dict(module.named_buffers()), **params}
        return loss(functional_call(module, state, (inputs,)), targets)

    return fn


def module_params(module: nn.Module) -> Params:
    """``{name: parameter}`` of a module's trainable parameters (the meta-learned initialisation theta)."""
    return {name: p for name, p in module.named_parameters() if p.requires_grad}


def tree_add(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> Params:
    """``a + b`` leaf by leaf."""
    return {k: a[k] + b[k] for k in a}


def tree_sub(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> Params:
    """``a - b`` leaf by leaf."""
    return {k: a[k] - b[k] for k in a}


def tree_scale(a: Mapping[str, Tensor], s: float | Tensor) -> Params:
    """``s * a`` leaf by leaf."""
    return {k: s * v for k, v in a.items()}


def tree_axpy(alpha: float | Tensor, x: Mapping[str, Tensor], y: Mapping[str, Tensor]) -> Params:
    """``y + alpha * x`` leaf by leaf."""
    return {k: y[k] + alpha * x[k] for k in y}


def tree_dot(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> Tensor:
    """Euclidean inner product of two parameter dictionaries (sum over all leaves), a 0-d tensor."""
    return sum((a[k] * b[k]).sum() for k in a)  # type: ignore[return-value]


def tree_zeros_like(a: Mapping[str, Tensor]) -> Params:
    """Zeros shaped like ``a``."""
    return {k: torch.zeros_like(v) for k, v in a.items()}


def tree_detach(a: Mapping[str, Tensor]) -> Params:
    """Detached copies (no autograd history) of every leaf."""
    return {k: v.detach() for k, v in a.items()}


def tree_mean(trees: list[Params]) -> Params:
    """Leaf-wise mean of a non-empty list of parameter dictionaries (the mean over a meta-batch of tasks)."""
    if not trees:
        raise ValueError("tree_mean needs at least one tree")
    return {k: torch.stack([t[k] for t in trees]).mean(0) for k in trees[0]}


def assign_grads(params: Mapping[str, Tensor], grads: Mapping[str, Tensor]) -> None:
    """Write a meta-gradient into ``p.grad`` of the module's parameters, ready for an outer ``optimizer.step()``."""
    for name, p in params.items():
        g = grads[name].detach().to(dtype=p.dtype, device=p.device)
        if p.grad is None:
            p.grad = g.clone()
        else:
            p.grad.copy_(g)
