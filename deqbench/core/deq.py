"""Differentiable equilibrium layer: solve without a graph, then attach gradients.

``fixed_point(f, z0)`` finds z* = f(z*) with a graph-free solve.  When grad
mode is enabled (independently of any module's ``training`` flag) the returned
z* is attached so that gradients reach every tensor ``f`` closes over
(parameters and inputs), by one of

* ``"ift"``: implicit function theorem.  The adjoint w = J^T w + g, with
  J = df/dz at z*, is solved by its own fixed-point solve (JIIO paper eq. 9;
  Bai et al. 2019), optionally warm started; the gradient is w^T df/dtheta.
* ``"phantom"``: the phantom gradient, k damped unrolled steps from z*
  (Geng et al. 2021).
* ``"neumann"``: the Neumann series truncated at order T,
  w = sum_{t=0..T} (J^T)^t g.  T = 1 is (Implicit)^2's one-step backward
  (I + J^T) g; T = 0 is the Jacobian-free backward.

In every mode the returned value is exactly z*; only the gradient differs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import torch
from torch import Tensor

from deqbench.core.graphs import GraphCache
from deqbench.core.solvers import SolverResult, make_solver, solve
from deqbench.core.state import State, StateSpec, flat_map, spec_of

BackwardMode = Literal["ift", "phantom", "neumann", "none"]

_IFT_KEYS = {"method", "max_iter", "tol", "stop_mode", "check_every", "cuda_graph"}


@dataclass
class BackwardConfig:
    """Validated options of the backward pass."""

    mode: BackwardMode = "ift"
    # ift: the adjoint solve
    method: str = "anderson"
    max_iter: int = 30
    tol: float = 1e-6
    stop_mode: str = "rel"
    check_every: int = 8
    cuda_graph: str = "auto"
    solver_options: dict[str, Any] = field(default_factory=dict)
    # phantom
    steps: int = 5
    tau: float = 0.5
    # neumann
    order: int = 1

    @classmethod
    def build(cls, mode: str, options: dict[str, Any] | None) -> "BackwardConfig":
        options = dict(options or {})
        if mode not in ("ift", "phantom", "neumann", "none"):
            raise ValueError(f"backward must be 'ift', 'phantom', 'neumann' or 'none', got {mode!r}")
        allowed = {
            "ift": _IFT_KEYS | {"solver_options"},
            "phantom": {"steps", "tau"},
            "neumann": {"order"},
            "none": set(),
        }[mode]
        solver_options = dict(options.pop("solver_options", {}) or {})
        if mode == "ift":
            # Solver-specific keys (m, beta, lam, memory, ...) may be given flat.
            for key in list(options):
                if key not in allowed:
                    solver_options[key] = options.pop(key)
        unknown = sorted(set(options) - allowed)
        if unknown:
            raise ValueError(f"unknown backward option(s) {unknown} for backward={mode!r}; allowed: {sorted(allowed)}")
        cfg = cls(mode=mode, solver_options=solver_options, **options)  # type: ignore[arg-type]
        if cfg.steps < 1 or not isinstance(cfg.steps, int):
            raise ValueError(f"phantom steps must be a positive integer, got {cfg.steps!r}")
        if not 0 < cfg.tau <= 1:
            raise ValueError(f"phantom tau must be in (0, 1], got {cfg.tau!r}")
        if cfg.order < 0 or not isinstance(cfg.order, int):
            raise ValueError(f"neumann order must be an integer >= 0, got {cfg.order!r}")
        if mode == "ift":
            make_solver(cfg.method, **cfg.solver_options)  # validate now, not at backward time
        return cfg


class _ImplicitGradient(torch.autograd.Function):
    """Identity on z* in the forward pass; in the backward pass it turns the
    incoming gradient g into the adjoint w and sends w into the graph of
    f(z*) (so autograd adds w^T df/dtheta and w^T df/dx)."""

    @staticmethod
    def forward(ctx: Any, fz: Tensor, z_star: Tensor, adjoint: Callable[[Tensor], Tensor]) -> Tensor:  # type: ignore[override]
        ctx.adjoint = adjoint
        return z_star.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        return ctx.adjoint(grad), None, None


def _vjp_at(fz: Tensor, z_req: Tensor) -> Callable[[Tensor], Tensor]:
    """w -> J^T w for the recorded graph fz = f(z_req)."""

    def vjp(w: Tensor) -> Tensor:
        (out,) = torch.autograd.grad(fz, z_req, w, retain_graph=True)
        return out

    return vjp


def solve_adjoint(
    vjp: Callable[[Tensor], Tensor],
    grad: Tensor,
    cfg: BackwardConfig,
    init: Tensor | None = None,
    graph_cache: GraphCache | None = None,
) -> tuple[Tensor, SolverResult | None]:
    """Solve w = J^T w + grad (IFT) or sum the truncated Neumann series; ``graph_cache`` as in :func:`solve`."""
    if cfg.mode == "neumann":
        w, term = grad, grad
        for _ in range(cfg.order):
            term = vjp(term)
            w = w + term
        return w, None
    w0 = grad if init is None else init
    result = solve(
        lambda w: vjp(w) + grad,
        w0.detach(),
        method=cfg.method,
        max_iter=cfg.max_iter,
        tol=cfg.tol,
        stop_mode=cfg.stop_mode,  # type: ignore[arg-type]
        check_every=cfg.check_every,
        # The VJP replays a graph that autograd recorded outside any capture, on the stream of the forward
        # pass, so it cannot join a capture on the side stream: at most the bookkeeping is captured.
        cuda_graph="auto" if cfg.cuda_graph == "full" else cfg.cuda_graph,  # type: ignore[arg-type]
        graph_cache=graph_cache,
        **cfg.solver_options,
    )
    return result.z, result  # type: ignore[return-value]


def attach_gradient(
    f_flat: Callable[[Tensor], Tensor],
    z_star: Tensor,
    cfg: BackwardConfig,
    adjoint_init: Callable[[Tensor], Tensor | None] | None = None,
    stats: dict[str, Any] | None = None,
    graph_cache: GraphCache | None = None,
) -> Tensor:
    """Return z* (B, D) attached to the graph of ``f_flat`` according to ``cfg``.

    ``adjoint_init(g)`` may return a warm start for the adjoint solve.
    ``stats``, if given, receives the adjoint ``SolverResult`` under ``"backward"``.
    ``graph_cache`` is handed to the adjoint solve (:func:`solve`).
    """
    z_star = z_star.detach()
    if cfg.mode == "none":
        return z_star
    if cfg.mode == "phantom":
        z = z_star
        for _ in range(cfg.steps):
            z = torch.lerp(z, f_flat(z), cfg.tau)
        return z_star + (z - z.detach())
    z_req = z_star.clone().requires_grad_()
    fz = f_flat(z_req)
    vjp = _vjp_at(fz, z_req)

    def adjoint(grad: Tensor) -> Tensor:
        init = adjoint_init(grad) if adjoint_init is not None else None
        w, result = solve_adjoint(vjp, grad, cfg, init, graph_cache)
        if stats is not None and result is not None:
            stats["backward"] = result
        return w

    return _ImplicitGradient.apply(fz, z_star, adjoint)


def fixed_point(
    f: Callable[[State], State],
    z0: State,
    solver: str = "anderson",
    max_iter: int = 30,
    tol: float = 1e-4,
    stop_mode: str = "rel",
    check_every: int = 8,
    solver_options: dict[str, Any] | None = None,
    backward: BackwardMode = "ift",
    backward_options: dict[str, Any] | None = None,
    adjoint_init: State | Callable[[State], State] | None = None,
    stats: dict[str, Any] | None = None,
    cuda_graph: str = "auto",
    graph_cache: GraphCache | None = None,
    forward_fn: Callable[[State], State] | None = None,
) -> State:
    """Equilibrium z* = f(z*) of ``f`` from ``z0``; differentiable when grad is enabled.

    ``solver``/``max_iter``/``tol``/``solver_options`` configure the forward
    solve (see :func:`deqbench.core.solvers.solve`).  ``backward`` picks how the
    gradient is attached and ``backward_options`` configures it:

    * ift: ``method``, ``max_iter``, ``tol``, ``stop_mode``, ``check_every``
      and solver options (e.g. ``m``); ``adjoint_init`` warm-starts the adjoint
      (a state like z, or a callable of the incoming gradient).
    * phantom: ``steps`` (k), ``tau``.
    * neumann: ``order`` (T).

    ``stats``, if given, receives ``"forward"`` (the forward ``SolverResult``)
    and, after backward, ``"backward"`` (the adjoint solve's result).
    ``cuda_graph`` ("auto", "full", "off") applies to the forward solve; the
    adjoint solve takes its own from ``backward_options``.  ``graph_cache``
    (:class:`deqbench.core.graphs.GraphCache`) lets both solves reuse the
    workspaces and graphs of earlier calls of the same shapes.
    ``forward_fn``, if given, is iterated by the forward solve instead of f:
    it must compute the same map (for example reading its input from a
    :meth:`GraphCache.static` buffer, so that a ``"full"`` graph can be reused),
    while f, in the caller's grad mode, attaches the gradient.
    """
    cfg = BackwardConfig.build(backward, backward_options)
    spec = spec_of(z0)
    result = solve(
        f if forward_fn is None else forward_fn,
        z0,
        method=solver,
        max_iter=max_iter,
        tol=tol,
        stop_mode=stop_mode,  # type: ignore[arg-type]
        check_every=check_every,
        cuda_graph=cuda_graph,  # type: ignore[arg-type]
        graph_cache=graph_cache,
        **(solver_options or {}),
    )
    if stats is not None:
        stats["forward"] = result
    if not torch.is_grad_enabled() or cfg.mode == "none":
        return result.z
    z_flat = spec.flatten(result.z)
    init_fn = _adjoint_init_fn(adjoint_init, spec)
    attached = attach_gradient(flat_map(f, spec), z_flat, cfg, init_fn, stats, graph_cache)
    return spec.unflatten(attached)


def _adjoint_init_fn(
    adjoint_init: State | Callable[[State], State] | None, spec: StateSpec
) -> Callable[[Tensor], Tensor | None] | None:
    if adjoint_init is None:
        return None
    if callable(adjoint_init):
        fn = adjoint_init
        return lambda g: spec.flatten(fn(spec.unflatten(g)))
    flat = spec.flatten(adjoint_init).detach()
    return lambda g: flat
