"""JIIO-DEQ meta-learning: the inner loop, the query equilibria and the meta loss (spec B.2, B.4; JIIO paper
eqs. 28-29, appendix B.1), plus the Table 7 baseline, Adam on the task vector (spec B.7).

Layout: a meta-batch of T tasks is task-major.  Support images are ``(T S, C, H, W)`` (S = N K support images
per task, samples t S .. t S + S - 1 belong to task t) with labels ``(T S,)``; query images likewise ``(T Q, ...)``.
The task vectors x are ``(T, task_dim)``, one row per task, broadcast over the task's images by
:meth:`MDEQClassifier.broadcast_task`.  :func:`meta_loss` takes the stacked layout of
:func:`deqbench.data.omniglot.stack_tasks` (a leading task axis) and flattens it.

Inner cost (spec B.2, "inner cost in the code"): per support image k of task t,

    l_k = n_cls * ( CE(h(z_k), y_k) + task_l2 * mean_j x_{t,j}^2 )

i.e. :meth:`MDEQClassifier.task_cost_fn` with ``scale = cost_scale`` (default n_cls) and JIIO's ``task_l2`` set to
``cost_scale * task_l2``.  The Adam baseline minimises the same cost.

Where the Jacobian regulariser is evaluated (spec B.4): the Hutchinson estimate ||J_z||_F^2 / numel with
``jac_reg_probes`` Gaussian probes, computed by :func:`deqbench.inputopt.jiio.jiio` (``jac_reg="trajectory"``) at
one iterate (z_k, x_t) of the **support** JIIO trajectory per support image, drawn uniformly from iterations
[jac_reg_start, inner_iters) = [15, 100).  It is differentiable w.r.t. theta (double backward through f at that
iterate, which is treated as a constant).  ``jac_reg_query=True`` adds the same estimate at the query equilibria
z^{te*} (the reference code does both, spec B.4 [C]); it is off by default (paper text).

This module imports only ``deqbench.core``, ``deqbench.inputopt`` and ``deqbench.models`` (layer rule).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from deqbench.core.deq import fixed_point
from deqbench.core.graphs import GraphCache
from deqbench.core.jacobian import hutchinson_jacobian_loss
from deqbench.core.norms import reset_norms
from deqbench.core.state import spec_of
from deqbench.inputopt.jiio import JIIOResult, jiio
from deqbench.models.mdeq import MDEQClassifier

__all__ = [
    "JIIODEQConfig", "InnerLoopResult", "MetaStats", "AdamTaskResult", "inner_loop", "adapt_task_vectors", "query_equilibrium",
    "query_logits", "query_loss", "meta_loss", "adam_task_vectors", "flatten_tasks",
]


@dataclass
class JIIODEQConfig:
    """Settings of the JIIO-DEQ inner loop, query solve and meta loss (spec B.2, B.4, Table 9; defaults = paper)."""

    # inner loop: JIIO on (z, mu, x) over the support images (spec B.2)
    inner_iters: int = 100
    alpha: tuple[float, float, float] = (0.8, 0.6, 0.04)  # (a_z, a_mu, a_x)
    alpha_x_late: float = 0.01
    alpha_x_switch: int = 65  # paper "after 65 iterations"; the code switches at 61 (AMBIG-B3)
    anderson_memory: int = 10
    anderson_type: Literal["I", "II"] = "I"
    inner_method: Literal["anderson", "broyden", "none"] = "anderson"
    selection: str = "reference"
    task_l2: float = 1.0  # coefficient of mean_j x_j^2 per support image (B.2); 0 disables
    cost_scale: float | None = None  # n_cls rescaling of the inner cost (B.2 [C]); None: model.config.num_classes
    # query equilibria: plain DEQ at x* fixed (spec B.2 last bullet, B.4)
    query_solver: str = "broyden"
    query_max_iter: int = 18
    query_tol: float = 0.0
    query_solver_options: dict[str, Any] = field(default_factory=dict)
    backward_method: str = "broyden"
    backward_max_iter: int = 18  # effective reference value; Table 9 says 20 (AMBIG-B6)
    backward_tol: float = 0.0
    adjoint_init: Literal["zero", "grad"] = "zero"  # B.4: adjoint initialised at 0 for meta [N]
    # outer loss (spec B.4)
    jac_reg: float = 0.5
    jac_reg_probes: int = 2
    jac_reg_start: int = 15
    jac_reg_query: bool = False

    def __post_init__(self) -> None:
        for name in ("inner_iters", "anderson_memory", "query_max_iter", "backward_max_iter", "jac_reg_probes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"JIIODEQConfig.{name} must be a positive integer, got {value!r}")
        if self.anderson_type not in ("I", "II"):
            raise ValueError(f"JIIODEQConfig.anderson_type must be 'I' or 'II', got {self.anderson_type!r}")
        if self.adjoint_init not in ("zero", "grad"):
            raise ValueError(f"JIIODEQConfig.adjoint_init must be 'zero' or 'grad', got {self.adjoint_init!r}")
        for name in ("task_l2", "jac_reg"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"JIIODEQConfig.{name} must be >= 0, got {getattr(self, name)!r}")
        if self.cost_scale is not None and not self.cost_scale > 0:
            raise ValueError(f"JIIODEQConfig.cost_scale must be > 0 or None, got {self.cost_scale!r}")

    def scale_for(self, model: MDEQClassifier) -> float:
        """The inner cost's rescaling: ``cost_scale`` or the model's number of classes (B.2 [C])."""
        return float(model.config.num_classes if self.cost_scale is None else self.cost_scale)

    def jiio_options(self, model: MDEQClassifier, n_tasks: int, samples: int) -> dict[str, Any]:
        """Keyword arguments of :func:`deqbench.inputopt.jiio.jiio` for the inner loop (B.2)."""
        solver_options: dict[str, Any] = {}
        if self.inner_method == "anderson":
            solver_options = {"m": self.anderson_memory, "kind": self.anderson_type}
        return dict(
            max_iter=self.inner_iters, alpha=self.alpha, method=self.inner_method,
            alpha_x_late=self.alpha_x_late, alpha_x_switch=self.alpha_x_switch, solver_options=solver_options,
            selection=self.selection, group_size=samples // n_tasks, task_l2=self.scale_for(model) * self.task_l2,
        )

    def backward_options(self) -> dict[str, Any]:
        return {"method": self.backward_method, "max_iter": self.backward_max_iter, "tol": self.backward_tol}


@dataclass
class InnerLoopResult:
    """x* (T, task_dim, detached) and the JIIO solve behind it; ``jac_loss`` is the trajectory Jacobian term (B.4),
    differentiable w.r.t. theta, or None.  ``f_evals``/``vjps``: one f evaluation and one VJP per JIIO iteration
    (B.2), not counting the Jacobian-regulariser probes."""

    x: Tensor
    jiio: JIIOResult
    jac_loss: Tensor | None
    f_evals: int
    vjps: int


@dataclass
class MetaStats:
    """Diagnostics of one :func:`meta_loss` call (all detached)."""

    query_ce: Tensor  # scalar
    query_accuracy: Tensor  # scalar, fraction of query images classified right
    jac_loss: Tensor | None  # scalar Hutchinson term (before the jac_reg factor), or None
    support_cost: Tensor  # (T,) inner cost of each task at the kept JIIO iterate
    x_star: Tensor  # (T, task_dim)
    inner_f_evals: int
    inner_vjps: int
    query_f_evals: int
    info: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- helpers


def _check_model(model: MDEQClassifier) -> None:
    if not isinstance(model, MDEQClassifier) or model.config.task_dim == 0:
        raise ValueError("the JIIO-DEQ meta step needs an MDEQClassifier with FiLM task input (MDEQConfig.task_dim > 0)")


def _check_grouping(images: Tensor, labels: Tensor | None, n_tasks: int, what: str) -> int:
    """Samples per task of a task-major flat batch; raises a ValueError naming the mismatch."""
    if images.dim() != 4:
        raise ValueError(f"{what} images must be (tasks * per_task, C, H, W), got shape {tuple(images.shape)}")
    if isinstance(n_tasks, bool) or not isinstance(n_tasks, int) or n_tasks < 1:
        raise ValueError(f"n_tasks must be a positive integer, got {n_tasks!r}")
    b = images.shape[0]
    if b == 0 or b % n_tasks:
        raise ValueError(f"{b} {what} images do not split into {n_tasks} tasks of equal size")
    if labels is not None and tuple(labels.shape) != (b,):
        raise ValueError(f"{what} labels must have shape ({b},) to match the images, got {tuple(labels.shape)}")
    return b // n_tasks


def flatten_tasks(images: Tensor, labels: Tensor, what: str = "support") -> tuple[Tensor, Tensor, int]:
    """(T, S, C, H, W) images and (T, S) labels (the :func:`stack_tasks` layout) -> task-major flat batch and T."""
    if images.dim() != 5 or labels.dim() != 2 or images.shape[:2] != labels.shape:
        raise ValueError(f"{what} must be images (tasks, per_task, C, H, W) and labels (tasks, per_task), "
                         f"got {tuple(images.shape)} and {tuple(labels.shape)}")
    t = images.shape[0]
    return images.reshape(-1, *images.shape[2:]), labels.reshape(-1), t


# ----------------------------------------------------------------------------- inner loop (spec B.2)


def inner_loop(
    model: MDEQClassifier,
    support_images: Tensor,
    support_labels: Tensor,
    n_tasks: int,
    config: JIIODEQConfig | None = None,
    with_jac: bool = False,
) -> InnerLoopResult:
    """JIIO over (z, mu, x) on the support images, x shared per task (spec B.2; JIIO eq. 11 with the meta cost).

    Starts from z = mu = x = 0 and always runs ``inner_iters`` iterations (no early stop).  ``with_jac=True`` (needs
    grad mode) also returns the trajectory Hutchinson term of spec B.4, differentiable w.r.t. theta.
    """
    config = JIIODEQConfig() if config is None else config
    _check_model(model)
    samples = _check_grouping(support_images, support_labels, n_tasks, "support") * n_tasks
    use_jac = with_jac and torch.is_grad_enabled()
    with torch.set_grad_enabled(use_jac):
        f = model.task_layer_fn(support_images)
        cost = model.task_cost_fn(support_labels, scale=config.scale_for(model), tasks=n_tasks)
        x0 = support_images.new_zeros(n_tasks, model.config.task_dim)
        res = jiio(f, cost, model.z0(support_images), x0, backward="none",
                   jac_reg="trajectory" if use_jac else None, jac_reg_probes=config.jac_reg_probes,
                   jac_reg_start=config.jac_reg_start, **config.jiio_options(model, n_tasks, samples))
    x_star = res.x.detach()
    return InnerLoopResult(x=x_star, jiio=res, jac_loss=res.jac_loss, f_evals=res.nfe, vjps=res.nfe)


def adapt_task_vectors(
    model: MDEQClassifier,
    support_images: Tensor,
    support_labels: Tensor,
    n_tasks: int,
    config: JIIODEQConfig | None = None,
) -> Tensor:
    """The JIIO inner loop (spec B.2): x* (n_tasks, task_dim), detached (spec B.4, paper B.1)."""
    with torch.no_grad():
        return inner_loop(model, support_images, support_labels, n_tasks, config).x


# ----------------------------------------------------------------------------- query equilibria (spec B.2, B.4)


def query_equilibrium(
    model: MDEQClassifier,
    query_images: Tensor,
    x_star: Tensor,
    config: JIIODEQConfig | None = None,
    stats: dict[str, Any] | None = None,
) -> tuple[Tensor, ...]:
    """z^{te*} = f(z^{te*}, x*; s^te) as a plain DEQ at x* fixed (spec B.2 "query equilibria").

    x* is detached, so in grad mode the IFT backward (adjoint w = J_z^T w + dL/dz at z^{te*}, spec B.4) sends
    gradients to the model parameters only.  ``stats`` receives the solver results (see ``fixed_point``).
    """
    config = JIIODEQConfig() if config is None else config
    _check_model(model)
    if x_star.dim() != 2 or x_star.shape[1] != model.config.task_dim:
        raise ValueError(f"x_star must have shape (tasks, {model.config.task_dim}), got {tuple(x_star.shape)}")
    _check_grouping(query_images, None, x_star.shape[0], "query")
    if model.config.weight_norm:
        reset_norms(model)
    injection = model.inject(query_images)
    task = model.broadcast_task(x_star.detach(), query_images.shape[0])
    z0 = model.z0(query_images)
    adjoint_init = tuple(torch.zeros_like(t) for t in z0) if config.adjoint_init == "zero" else None
    return fixed_point(
        lambda z: model.layer(z, injection, task), z0, solver=config.query_solver, max_iter=config.query_max_iter,
        tol=config.query_tol, solver_options=config.query_solver_options, backward="ift",
        backward_options=config.backward_options(), adjoint_init=adjoint_init, stats=stats,
    )


def query_logits(
    model: MDEQClassifier,
    query_images: Tensor,
    x_star: Tensor,
    config: JIIODEQConfig | None = None,
    stats: dict[str, Any] | None = None,
) -> Tensor:
    """h(z^{te*}) for the query images at x* fixed (spec B.2, B.4): (T Q, num_classes)."""
    return model.logits(query_equilibrium(model, query_images, x_star, config, stats), tasks=x_star.shape[0])


def query_loss(
    model: MDEQClassifier,
    query_images: Tensor,
    query_labels: Tensor,
    x_star: Tensor,
    config: JIIODEQConfig | None = None,
) -> Tensor:
    """Mean query CE at x* fixed (the data term of the outer loss, spec B.4 / eq. 29)."""
    _check_grouping(query_images, query_labels, max(x_star.shape[0], 1), "query")
    return F.cross_entropy(query_logits(model, query_images, x_star, config), query_labels)


# ----------------------------------------------------------------------------- meta loss (spec B.4)


def meta_loss(
    model: MDEQClassifier,
    support: tuple[Tensor, Tensor],
    query: tuple[Tensor, Tensor],
    config: JIIODEQConfig | None = None,
) -> tuple[Tensor, MetaStats]:
    """Outer loss of one meta-batch (spec B.4; eq. 29): mean query CE at x* + jac_reg * Hutchinson term.

    ``support``/``query`` are ``(images (T, S, C, H, W), labels (T, S))`` (the ``stack_tasks`` layout).  x* comes
    from the JIIO inner loop and is detached: the gradient reaches theta through the IFT at the query equilibria
    only (paper B.1); the eq. 19 mu-reuse shortcut does not apply because the outer loss is not the inner cost.
    The Jacobian term is evaluated along the support JIIO trajectory (module docstring) and, with
    ``jac_reg_query``, also at z^{te*}.
    """
    config = JIIODEQConfig() if config is None else config
    s_img, s_lab, t = flatten_tasks(*support, what="support")
    q_img, q_lab, tq = flatten_tasks(*query, what="query")
    if tq != t:
        raise ValueError(f"support has {t} tasks but query has {tq}")
    inner = inner_loop(model, s_img, s_lab, t, config, with_jac=config.jac_reg > 0)
    solve_stats: dict[str, Any] = {}
    z_q = query_equilibrium(model, q_img, inner.x, config, solve_stats)
    logits = model.logits(z_q, tasks=t)
    ce = F.cross_entropy(logits, q_lab)
    loss = ce
    jac = inner.jac_loss
    if config.jac_reg > 0 and config.jac_reg_query and torch.is_grad_enabled():
        injection = model.inject(q_img)
        task = model.broadcast_task(inner.x, q_img.shape[0])
        spec = spec_of(z_q)
        jq = hutchinson_jacobian_loss(
            lambda zz: spec.flatten(model.layer(spec.unflatten(zz), injection, task)),
            spec.flatten(z_q).detach(), config.jac_reg_probes)
        jac = jq if jac is None else jac + jq
    if jac is not None:
        loss = loss + config.jac_reg * jac
    stats = MetaStats(
        query_ce=ce.detach(),
        query_accuracy=(logits.detach().argmax(1) == q_lab).float().mean(),
        jac_loss=None if jac is None else jac.detach(),
        support_cost=inner.jiio.cost.detach(),
        x_star=inner.x,
        inner_f_evals=inner.f_evals,
        inner_vjps=inner.vjps,
        query_f_evals=solve_stats["forward"].nfe,
        info={"tasks": t, "support_per_task": s_img.shape[0] // t, "query_per_task": q_img.shape[0] // t},
    )
    return loss, stats


# ----------------------------------------------------------------------------- Table 7 baseline (spec B.7)


@dataclass
class AdamTaskResult:
    """Outcome of :func:`adam_task_vectors`: the lowest-cost x per task and the work done."""

    x: Tensor  # (T, task_dim), detached
    cost: Tensor  # (T,) support cost at x (summed over the task's images)
    best_iteration: Tensor  # (T,)
    trace_cost: Tensor  # (T, steps): cost at each step's input
    f_evals: int  # forward f evaluations (the forward solves, plus the one f call the IFT attach records per step)
    vjps: int  # VJPs: adjoint-solve iterations plus the final w^T df/dx per step (the cost's own gradient excluded)


def adam_task_vectors(
    model: MDEQClassifier,
    support_images: Tensor,
    support_labels: Tensor,
    n_tasks: int,
    config: JIIODEQConfig | None = None,
    steps: int = 20,
    lr: float = 0.1,
    betas: tuple[float, float] = (0.9, 0.999),
    adam_eps: float = 1e-8,
    forward_solver: str = "broyden",
    forward_max_iter: int = 20,
    backward_max_iter: int = 20,
) -> AdamTaskResult:
    """Table 7 baseline (spec B.7): Adam (lr 0.1) on the per-task vector x, ``steps`` = 20 steps; each step is a full
    forward solve on the support images at x plus an implicit (IFT) backward for dl/dx.

    Same inner cost as JIIO (task_l2 included, ``config``); x starts at 0.  :func:`deqbench.inputopt.baselines.adam`
    keeps one x per sample, so it cannot share x within a task; this loop does the grouping (x broadcast over the
    task's images, the gradient summed) and keeps the lowest-cost step per task, as that baseline does.  Solver
    thresholds default to 20 (the reference's joint Broyden threshold, spec B.7).
    """
    config = JIIODEQConfig() if config is None else config
    _check_model(model)
    per_task = _check_grouping(support_images, support_labels, n_tasks, "support")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if not lr > 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
        raise ValueError(f"need lr > 0 and betas in [0, 1), got lr={lr!r}, betas={betas!r}")
    scale = config.scale_for(model)
    l2 = scale * config.task_l2
    x = support_images.new_zeros(n_tasks, model.config.task_dim)
    m, v = torch.zeros_like(x), torch.zeros_like(x)
    best_x, best_cost = x.clone(), x.new_full((n_tasks,), math.inf)
    best_iter = torch.zeros(n_tasks, dtype=torch.long, device=x.device)
    trace = x.new_full((n_tasks, steps), math.nan)
    bwd = {"method": "broyden", "max_iter": backward_max_iter, "tol": 0.0}
    f_evals = vjps = 0
    cache = GraphCache()  # every step's forward and adjoint solves replay the graphs of the first step
    with torch.no_grad():
        f = model.task_layer_fn(support_images)  # weights and injection fixed: gradients go to x only
    ce_cost = model.task_cost_fn(support_labels, scale=scale, tasks=n_tasks)
    z0 = model.z0(support_images)
    for k in range(steps):
        stats: dict[str, Any] = {}
        with torch.enable_grad():
            x_req = x.detach().requires_grad_()
            z = fixed_point(lambda zz: f(zz, x_req), z0, solver=forward_solver, max_iter=forward_max_iter, tol=0.0,
                            backward="ift", backward_options=bwd, stats=stats, graph_cache=cache)
            per_sample = ce_cost(z) + l2 * model.broadcast_task(x_req, support_images.shape[0]).pow(2).mean(1)
            c = per_sample.view(n_tasks, per_task).sum(1)
            (g,) = torch.autograd.grad(c.sum(), x_req)
        f_evals += stats["forward"].nfe + 1
        vjps += (stats["backward"].nfe if "backward" in stats else 0) + 1
        c = c.detach()
        trace[:, k] = c
        better = c < best_cost
        torch.where(better, c, best_cost, out=best_cost)
        torch.where(better, torch.full_like(best_iter, k), best_iter, out=best_iter)
        torch.where(better.unsqueeze(1), x, best_x, out=best_x)
        m.mul_(betas[0]).add_(g, alpha=1 - betas[0])
        v.mul_(betas[1]).addcmul_(g, g, value=1 - betas[1])
        denom = (v / (1 - betas[1] ** (k + 1))).sqrt_().add_(adam_eps)
        x = x.addcdiv(m, denom, value=-lr / (1 - betas[0] ** (k + 1)))
    return AdamTaskResult(x=best_x, cost=best_cost, best_iteration=best_iter, trace_cost=trace, f_evals=f_evals,
                          vjps=vjps)
