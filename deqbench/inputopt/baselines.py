"""Input-optimisation baselines with the JIIO calling convention: PGD and Adam on x.

Each step is a full DEQ forward solve at the current x followed by an
implicit (IFT) backward to get dl/dx, as in the papers' baselines (JIIO
paper sections 4.1 and 4.3).  ``f(z, x)`` is the DEQ layer and ``cost(z)`` the
per-sample cost (B,) to minimise.  Nothing here synchronises with the host:
the solves run a fixed number of iterations by default (``tol=0``).  An
optional ``on_iteration`` hook (:mod:`deqbench.inputopt.tracing`) is called
after each step with the cost at z*(x_k), the equilibrium of that step's input.

On CUDA all solves of one call share a :class:`~deqbench.core.graphs.GraphCache`,
so each kind of solve (forward, adjoint) captures its graph once per call and
replays it in every later step, as JIIO captures its one solve once.  A forward
solve whose graph includes f (``cuda_graph="full"``) is reused only when f is a
:class:`SplitLayerFn`: its injection is then computed once per step into a
static buffer that the captured ``layer`` reads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, runtime_checkable

import torch
from torch import Tensor

from deqbench.core.deq import fixed_point
from deqbench.core.graphs import GraphCache, graph_mode
from deqbench.inputopt.projections import make_projection
from deqbench.inputopt.tracing import IterationHook, active_hook
from deqbench.core.state import State, detach_state, spec_of

LayerFn = Callable[[State, State], State]
CostFn = Callable[[State], Tensor]


@runtime_checkable
class SplitLayerFn(Protocol):
    """f(z, x) = layer(z, inject(x)) with its two parts exposed (e.g. :class:`deqbench.models.mdeq.InjectedLayer`)."""

    def __call__(self, z: State, x: State) -> State: ...

    def inject(self, x: Tensor) -> State: ...

    def layer(self, z: State, injection: State) -> State: ...

DEFAULT_FORWARD: dict[str, Any] = {"solver": "broyden", "max_iter": 18, "tol": 0.0}
DEFAULT_BACKWARD: dict[str, Any] = {"method": "broyden", "max_iter": 20, "tol": 0.0}


@dataclass
class InputOptResult:
    """Per-sample best (lowest-cost) evaluated iterate of a gradient-based input optimisation."""

    z: State  # detached equilibrium at the returned x
    x: State
    cost: Tensor  # (B,)
    best_iteration: Tensor  # (B,)
    nfe: int  # forward f evaluations (backward VJPs not counted)
    trace_cost: Tensor  # (B, steps)
    info: dict[str, Any] = field(default_factory=dict)


def _forward_kwargs(forward: dict[str, Any] | None) -> dict[str, Any]:
    kwargs = dict(DEFAULT_FORWARD)
    kwargs.update(forward or {})
    allowed = {"solver", "max_iter", "tol", "stop_mode", "check_every", "solver_options", "cuda_graph"}
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise ValueError(f"unknown forward option(s) {unknown}; allowed: {sorted(allowed)}")
    return kwargs


def _optimise(
    f: LayerFn,
    cost: CostFn,
    z0: State,
    x0: State,
    steps: int,
    update: Callable[[int, Tensor, Tensor], Tensor],
    forward: dict[str, Any] | None,
    backward_options: dict[str, Any] | None,
    warm_start: bool,
    name: str,
    project: Callable[[Tensor], Tensor] | None = None,
    on_iteration: IterationHook | None = None,
) -> InputOptResult:
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    fwd = _forward_kwargs(forward)
    hook = active_hook(on_iteration)
    bwd = dict(DEFAULT_BACKWARD)
    bwd.update(backward_options or {})
    xspec = spec_of(x0)
    x = xspec.flatten(x0).detach()
    if project is not None:
        x = project(x)
    z_init = detach_state(z0)
    batch = x.shape[0]
    best_x = x.clone()
    best_cost = torch.full((batch,), math.inf, device=x.device, dtype=torch.promote_types(x.dtype, torch.float32))
    best_iter = torch.zeros(batch, dtype=torch.long, device=x.device)
    trace = torch.full((batch, steps), math.nan, device=x.device, dtype=best_cost.dtype)
    cache = GraphCache()
    full_forward = graph_mode(fwd.get("cuda_graph", "auto"), x.device) == "full"
    split = full_forward and isinstance(f, SplitLayerFn)
    if split:
        def forward_fn(zz: State) -> State:  # one callable for every step: its "full" graph is captured once
            return f.layer(zz, cache.statics["injection"])
    nfe = 0
    for k in range(steps):
        with torch.enable_grad():
            x_req = x.detach().requires_grad_()
            x_state = xspec.unflatten(x_req)
            stats: dict[str, Any] = {}
            if split:
                with torch.no_grad():
                    cache.static("injection", f.inject(x_state))
            z = fixed_point(lambda zz: f(zz, x_state), z_init, backward="ift", backward_options=bwd, stats=stats,
                            graph_cache=cache, forward_fn=forward_fn if split else None, **fwd)
            c = cost(z)
            (g,) = torch.autograd.grad(c.sum(), x_req)
        nfe += stats["forward"].nfe
        c = c.detach().to(best_cost.dtype)
        trace[:, k] = c
        better = c < best_cost
        torch.where(better, c, best_cost, out=best_cost)
        torch.where(better, torch.full_like(best_iter, k), best_iter, out=best_iter)
        torch.where(better.unsqueeze(1), x, best_x, out=best_x)
        if k == 0:
            zspec = spec_of(z)
            best_z = zspec.flatten(detach_state(z)).clone()
        else:
            torch.where(better.unsqueeze(1), zspec.flatten(detach_state(z)), best_z, out=best_z)
        if warm_start:
            z_init = detach_state(z)
        x = update(k, x, g)
        if hook is not None:  # tracing only (Figure 3): the hook may synchronise the device
            hook(k, c)
    return InputOptResult(
        z=zspec.unflatten(best_z),
        x=xspec.unflatten(best_x),
        cost=best_cost,
        best_iteration=best_iter,
        nfe=nfe,
        trace_cost=trace,
        info={"method": name, "forward": fwd, "backward": bwd, "warm_start": warm_start,
              "graph_workspaces": cache.captures, "graph_reuses": cache.reuses, "split_injection": split},
    )


def pgd(
    f: LayerFn,
    cost: CostFn,
    z0: State,
    x0: State,
    steps: int = 20,
    step_size: float = 0.2,
    projection: str = "l2",
    eps: float = 1.0,
    normalized_step: bool = True,
    forward: dict[str, Any] | None = None,
    backward_options: dict[str, Any] | None = None,
    warm_start: bool = False,
    on_iteration: IterationHook | None = None,
) -> InputOptResult:
    """Projected gradient descent on x: x <- P(x - step_size * d), with d the
    unit steepest-descent direction of the ball's norm (g/||g||_2 for L2,
    sign(g) for Linf) or the raw gradient when ``normalized_step=False``."""
    proj = make_projection(projection, eps)

    def update(k: int, x: Tensor, g: Tensor) -> Tensor:
        step = proj.steepest_direction(g) if normalized_step else g
        return proj(x - step_size * step)

    return _optimise(f, cost, z0, x0, steps, update, forward, backward_options, warm_start, "pgd", proj, on_iteration)


def adam(
    f: LayerFn,
    cost: CostFn,
    z0: State,
    x0: State,
    steps: int = 40,
    lr: float = 0.1,
    betas: tuple[float, float] = (0.9, 0.999),
    adam_eps: float = 1e-8,
    projection: str | None = None,
    eps: float | None = None,
    forward: dict[str, Any] | None = None,
    backward_options: dict[str, Any] | None = None,
    warm_start: bool = False,
    on_iteration: IterationHook | None = None,
) -> InputOptResult:
    """Adam (Kingma & Ba 2015) on x, elementwise, so every sample is independent;
    optionally projected onto a norm ball after each step."""
    if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
        raise ValueError(f"betas must be in [0, 1), got {betas!r}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    proj = make_projection(projection, eps) if projection is not None else None
    moments: dict[str, Tensor] = {}

    def update(k: int, x: Tensor, g: Tensor) -> Tensor:
        if not moments:
            moments["m"] = torch.zeros_like(g)
            moments["v"] = torch.zeros_like(g)
        m, v = moments["m"], moments["v"]
        m.mul_(betas[0]).add_(g, alpha=1 - betas[0])
        v.mul_(betas[1]).addcmul_(g, g, value=1 - betas[1])
        t = k + 1
        step_size = lr / (1 - betas[0] ** t)
        denom = (v / (1 - betas[1] ** t)).sqrt_().add_(adam_eps)
        x = x.addcdiv(m, denom, value=-step_size)
        return proj(x) if proj is not None else x

    return _optimise(f, cost, z0, x0, steps, update, forward, backward_options, warm_start, "adam", proj, on_iteration)
