"""Meta-batches: the mean of a per-task meta-gradient over tasks, looped or with ``torch.func.vmap`` (spec B.4/B.6)."""

from __future__ import annotations

from typing import Callable, Mapping, NamedTuple

import torch
from torch import Tensor
from torch.func import vmap

from ._functional import Batch, Params

__all__ = ["MetaGradient", "PerTaskFn", "mean_over_tasks"]


class MetaGradient(NamedTuple):
    """One task's (or a meta-batch's mean) outer loss and gradient with respect to the initialisation theta."""

    loss: Tensor
    grads: Params


#: ``fn(params, support, query)`` -> the task's :class:`MetaGradient`.
PerTaskFn = Callable[[Mapping[str, Tensor], Batch, Batch], MetaGradient]


def mean_over_tasks(
    per_task: PerTaskFn, params: Mapping[str, Tensor], support: Batch, query: Batch, *, vectorize: bool = True,
) -> MetaGradient:
    """Mean loss and meta-gradient over a meta-batch (the outer objective is the average over tasks, MAML Alg. 1).

    ``support = (x, y)`` and ``query = (x, y)`` carry a leading task axis: ``x`` is ``(T, n, ...)``, ``y`` ``(T, n)``.
    ``vectorize=True`` maps ``per_task`` over the task axis with ``torch.func.vmap`` (the parameters are shared,
    ``in_dims=None``); ``False`` loops in Python.  Both give the same numbers up to floating-point reordering.
    """
    (sx, sy), (qx, qy) = support, query
    n_tasks = int(sx.shape[0])
    if n_tasks < 1 or not (sy.shape[0] == qx.shape[0] == qy.shape[0] == n_tasks):
        raise ValueError(f"support and query need the same leading task axis >= 1, got {sx.shape[0]}, "
                         f"{sy.shape[0]}, {qx.shape[0]}, {qy.shape[0]}")
    if vectorize:
        def one(p: Mapping[str, Tensor], a: Tensor, b: Tensor, c: Tensor, d: Tensor) -> tuple[Tensor, Params]:
            out = per_task(p, (a, b), (c, d))
            return out.loss, out.grads

        losses, grads = vmap(one, in_dims=(None, 0, 0, 0, 0))(dict(params), sx, sy, qx, qy)
        return MetaGradient(losses.mean(), {k: g.mean(0) for k, g in grads.items()})
    outs = [per_task(params, (sx[t], sy[t]), (qx[t], qy[t])) for t in range(n_tasks)]
    loss = torch.stack([o.loss for o in outs]).mean()
    return MetaGradient(loss, {k: torch.stack([o.grads[k] for o in outs]).mean(0) for k in outs[0].grads})
