"""Gradient-based meta-learning baselines for the JIIO meta-learning comparison (issue 12; spec section B.6).

MAML (second order), Reptile and iMAML-GD, written on ``torch.func`` (``functional_call``, ``grad``, ``vjp``,
``vmap``) because learn2learn, torchmeta and higher are unusable here (spec B.6 implementation note).  Each method
is an inner-loop adaptation function ``*_adapt`` and a per-task meta-gradient ``*_meta_gradient`` on parameter
dictionaries; MAML and iMAML also have a meta-batch version (mean over a leading task axis, vmapped).

>>> import torch
>>> from deqbench.meta import MAMLConfig, maml_meta_gradient, module_loss, module_params
>>> model = torch.nn.Linear(4, 3)
>>> x, y = torch.randn(6, 4), torch.arange(6) % 3
>>> out = maml_meta_gradient(module_loss(model), module_params(model), (x, y), (x, y), MAMLConfig())
>>> sorted(out.grads), out.loss.ndim
(['bias', 'weight'], 0)

The JIIO-DEQ meta step itself (spec B.2, B.4; the Table 7 Adam baseline, B.7) is in :mod:`deqbench.meta.jiio_deq`:
:func:`adapt_task_vectors`, :func:`query_logits`, :func:`meta_loss`, :func:`adam_task_vectors`.

This package is a lower layer: the baselines import only torch; ``jiio_deq`` imports ``deqbench.core``,
``deqbench.inputopt`` and ``deqbench.models``; nothing here imports ``deqbench.experiments`` or ``deqbench.tasks``.
"""

from __future__ import annotations

from ._functional import (
    Batch,
    LossFn,
    Params,
    assign_grads,
    module_loss,
    module_params,
    tree_add,
    tree_axpy,
    tree_detach,
    tree_dot,
    tree_mean,
    tree_scale,
    tree_sub,
    tree_zeros_like,
)
from ._tasks import MetaGradient, mean_over_tasks
from .imaml import IMAMLConfig, conjugate_gradient, imaml_adapt, imaml_meta_gradient, imaml_meta_gradient_batch
from .jiio_deq import (
    AdamTaskResult,
    InnerLoopResult,
    JIIODEQConfig,
    MetaStats,
    adam_task_vectors,
    adapt_task_vectors,
    inner_loop,
    meta_loss,
    query_equilibrium,
    query_logits,
    query_loss,
)
from .maml import MAMLConfig, maml_adapt, maml_meta_gradient, maml_meta_gradient_batch
from .reptile import (
    ReptileConfig,
    reptile_adapt,
    reptile_meta_gradient,
    reptile_meta_step,
    reptile_outer_step_size,
    reptile_task_update,
)

__all__ = [
    "Batch", "LossFn", "Params", "MetaGradient", "assign_grads", "module_loss", "module_params", "mean_over_tasks",
    "tree_add", "tree_axpy", "tree_detach", "tree_dot", "tree_mean", "tree_scale", "tree_sub", "tree_zeros_like",
    "MAMLConfig", "maml_adapt", "maml_meta_gradient", "maml_meta_gradient_batch",
    "ReptileConfig", "reptile_adapt", "reptile_meta_gradient", "reptile_meta_step", "reptile_outer_step_size",
    "reptile_task_update",
    "IMAMLConfig", "conjugate_gradient", "imaml_adapt", "imaml_meta_gradient", "imaml_meta_gradient_batch",
    "JIIODEQConfig", "InnerLoopResult", "MetaStats", "AdamTaskResult", "inner_loop", "adapt_task_vectors",
    "query_equilibrium", "query_logits", "query_loss", "meta_loss", "adam_task_vectors",
]
