"""Reptile (Nichol, Achiam, Schulman 2018) on ``torch.func`` (spec B.6 "Reptile").

Per task: ``phi = Adam^k(theta)`` on the task's support set (Reptile Alg. 2, inner loop with Adam, beta1 = 0).
Meta update (Reptile Alg. 2, last line): ``theta <- theta + eps * mean_tasks (phi_i - theta)``, with the outer step
size ``eps`` annealed linearly from ``outer_step_size`` to ``outer_step_size_final`` over training.  Equivalently an
SGD step of size ``eps`` on the pseudo-gradient ``theta - phi`` (:func:`reptile_meta_gradient`).

Choice not fixed by the spec (not an ambiguity listed in B.9): the inner Adam moments start from zero for every
task (a pure function of theta).  Nichol et al.'s released code keeps one TensorFlow Adam optimiser, so its moment
estimates carry over from task to task; with beta1 = 0 only the second moment (and the step count in the bias
correction) is affected.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Mapping

import torch
from torch import Tensor
from torch.func import grad

from ._functional import Batch, LossFn, Params, tree_detach, tree_mean, tree_sub
from ._tasks import MetaGradient

__all__ = [
    "ReptileConfig", "reptile_adapt", "reptile_task_update", "reptile_meta_gradient", "reptile_meta_step",
    "reptile_outer_step_size",
]


@dataclass(frozen=True)
class ReptileConfig:
    """Reptile's standard 5-way 1-shot Omniglot settings (Nichol et al. 2018, as listed in spec B.6).

    Inner Adam: ``inner_lr`` 1e-3, ``inner_betas`` (0, 0.999), ``inner_steps`` 5 on mini-batches of
    ``inner_batch_size`` 10.  Outer: step 1.0 annealed linearly to 0 over ``meta_iterations`` (100k), meta-batch 5.
    Evaluation: ``eval_inner_steps`` 50 on batches of ``eval_inner_batch_size`` 5.  ``train_shots`` 10: Nichol et
    al.'s published Omniglot command line meta-trains with 10 support images per class (``--train-shots 10``) and
    tests 1-shot; this is not in spec B.6 (set 1 for a strict 1-shot protocol).  ``transductive``: Table 6's
    97.68 % is the transductive number (BatchNorm statistics from the query batch; spec B.6/AMBIG-B4).
    """

    inner_steps: int = 5
    inner_lr: float = 1e-3
    inner_betas: tuple[float, float] = (0.0, 0.999)
    inner_eps: float = 1e-8
    inner_batch_size: int | None = 10
    train_shots: int = 10
    outer_step_size: float = 1.0
    outer_step_size_final: float = 0.0
    meta_batch_size: int = 5
    meta_iterations: int = 100_000
    eval_inner_steps: int = 50
    eval_inner_batch_size: int | None = 5
    transductive: bool = True

    def __post_init__(self) -> None:
        if self.inner_steps < 0 or self.eval_inner_steps < 0:
            raise ValueError("inner step counts must be >= 0")
        if not (0.0 <= self.inner_betas[0] < 1.0 and 0.0 <= self.inner_betas[1] < 1.0):
            raise ValueError(f"inner_betas must lie in [0, 1), got {self.inner_betas}")
        if self.meta_batch_size < 1 or self.meta_iterations < 1:
            raise ValueError("meta_batch_size and meta_iterations must be >= 1")


def _minibatch_indices(n: int, batch_size: int | None, steps: int,
                       generator: torch.Generator | None) -> Iterator[Tensor | None]:
    """Indices of successive mini-batches: consecutive chunks of a stream of fresh random permutations of
    ``range(n)`` (a batch may straddle two permutations).  ``None`` (the full set) when ``batch_size`` is None."""
    if batch_size is None:
        for _ in range(steps):
            yield None
        return
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}")
    stream = torch.empty(0, dtype=torch.long)
    for _ in range(steps):
        while stream.numel() < batch_size:
            stream = torch.cat([stream, torch.randperm(n, generator=generator)])
        yield stream[:batch_size]
        stream = stream[batch_size:]


def reptile_adapt(
    loss_fn: LossFn, params: Mapping[str, Tensor], support: Batch, *, steps: int, lr: float,
    betas: tuple[float, float] = (0.0, 0.999), eps: float = 1e-8, batch_size: int | None = None,
    generator: torch.Generator | None = None,
) -> Params:
    """``steps`` Adam steps on the support loss from ``params`` (Reptile Alg. 2 inner loop; Adam, Kingma & Ba Alg. 1).

    Adam with bias correction, moments initialised to zero for this task: ``m = b1 m + (1-b1) g``,
    ``v = b2 v + (1-b2) g^2``, ``phi -= lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)``.  Each step uses a
    mini-batch of ``batch_size`` support examples (the whole set when None) drawn with ``generator``.  Not
    differentiable (Reptile needs no gradient through the inner loop): the result is detached.
    """
    inputs, targets = support
    b1, b2 = betas
    phi = tree_detach(params)
    m = {k: torch.zeros_like(v) for k, v in phi.items()}
    v2 = {k: torch.zeros_like(v) for k, v in phi.items()}
    support_grad = grad(loss_fn)
    for t, idx in enumerate(_minibatch_indices(int(inputs.shape[0]), batch_size, steps, generator), start=1):
        x, y = (inputs, targets) if idx is None else (inputs[idx], targets[idx])
        g = support_grad(phi, x, y)
        c1, c2 = 1.0 - b1**t, 1.0 - b2**t
        for k in phi:
            m[k] = b1 * m[k] + (1.0 - b1) * g[k]
            v2[k] = b2 * v2[k] + (1.0 - b2) * g[k] * g[k]
            phi[k] = phi[k] - lr * (m[k] / c1) / ((v2[k] / c2).sqrt() + eps)
    return tree_detach(phi)


def reptile_task_update(initial: Mapping[str, Tensor], adapted: Mapping[str, Tensor]) -> Params:
    """One task's Reptile direction ``phi - theta`` (Reptile Alg. 2: the update before averaging and scaling)."""
    return tree_detach(tree_sub(adapted, initial))


def reptile_meta_gradient(
    loss_fn: LossFn, params: Mapping[str, Tensor], support: Batch, config: ReptileConfig = ReptileConfig(), *,
    generator: torch.Generator | None = None,
) -> MetaGradient:
    """One task's Reptile pseudo-gradient ``theta - phi`` (so that ``theta - eps * it`` is the Reptile step) and
    the support loss at phi.  Inner loop: :func:`reptile_adapt` with ``config``'s training settings."""
    phi = reptile_adapt(loss_fn, params, support, steps=config.inner_steps, lr=config.inner_lr,
                        betas=config.inner_betas, eps=config.inner_eps, batch_size=config.inner_batch_size,
                        generator=generator)
    with torch.no_grad():
        loss = loss_fn(phi, *support)
    return MetaGradient(loss, tree_detach(tree_sub(params, phi)))


def reptile_meta_step(
    initial: Mapping[str, Tensor], adapted: list[Params], step_size: float,
) -> Params:
    """The new initialisation ``theta + step_size * mean_i (phi_i - theta)`` (Reptile Alg. 2, batched version)."""
    if not adapted:
        raise ValueError("reptile_meta_step needs at least one adapted task")
    mean_update = tree_mean([reptile_task_update(initial, phi) for phi in adapted])
    return {k: initial[k].detach() + step_size * mean_update[k] for k in initial}


def reptile_outer_step_size(config: ReptileConfig, iteration: int) -> float:
    """Outer step size at ``iteration`` (0-based): linear from ``outer_step_size`` at 0 towards
    ``outer_step_size_final`` at ``meta_iterations`` (Nichol et al. 2018, Sec. 6 / App. A schedule)."""
    frac = min(max(iteration / config.meta_iterations, 0.0), 1.0)
    return (1.0 - frac) * config.outer_step_size + frac * config.outer_step_size_final
