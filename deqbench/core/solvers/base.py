"""Solver protocol, result type, registry and the device-side solve loop."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Callable, ClassVar, Literal

import torch
from torch import Tensor

from deqbench.core.graphs import GraphCache, GraphMode, StepRunner, graph_mode
from deqbench.core.state import State, flat_map, spec_of
from deqbench.core.watch import active_watch, first_nonfinite_iteration

StopMode = Literal["rel", "abs"]
RESIDUAL_EPS = 1e-9


@dataclass
class SolverResult:
    """Outcome of a fixed-point solve; every tensor field is per sample.

    ``z`` is the lowest-residual iterate of each sample (the point whose
    residual was measured, not its image), with the structure of ``z0``.
    """

    z: State
    residual: Tensor  # (B,) lowest residual reached, in ``stop_mode`` units
    converged: Tensor  # (B,) bool: residual <= tol
    nfe: int  # number of f evaluations
    trace: Tensor  # (B, max_iter) residual at every iteration; NaN where not run
    best_iteration: Tensor  # (B,) iteration index of the returned iterate
    nonfinite_iteration: Tensor | None = None  # (B,) first iteration f gave non-finite values, -1: none; only
    # computed inside deqbench.core.watch.watch_solves() (None otherwise)
    method: str = ""
    info: dict[str, Any] = field(default_factory=dict)


class FixedPointSolver:
    """A solver is a small config object: ``init`` makes its state, ``step`` proposes the next iterate.

    ``step(state, x, fx, g)`` receives the current iterate ``x`` (B, D), its
    image ``fx = f(x)`` and residual ``g = fx - x`` and returns the next
    iterate.  It must not synchronise with the host, must keep its iteration
    count on the device and must update its state in place, so that the same
    kernels are valid at every iteration (see :mod:`deqbench.core.graphs`).
    """

    name: ClassVar[str] = "base"

    def init(self, x0: Tensor) -> Any:  # pragma: no cover - interface
        raise NotImplementedError

    def step(self, state: Any, x: Tensor, fx: Tensor, g: Tensor) -> Tensor:  # pragma: no cover
        raise NotImplementedError


SOLVERS: dict[str, type[FixedPointSolver]] = {}


def register_solver(cls: type[FixedPointSolver]) -> type[FixedPointSolver]:
    """Class decorator: make ``cls`` available to :func:`solve` under ``cls.name``."""
    SOLVERS[cls.name] = cls
    return cls


def make_solver(method: str | FixedPointSolver, **options: Any) -> FixedPointSolver:
    """Build a solver from its registry name and options, rejecting unknown keys by name."""
    if isinstance(method, FixedPointSolver):
        if options:
            raise ValueError(f"options {sorted(options)} given together with a solver instance")
        return method
    if method not in SOLVERS:
        raise ValueError(f"unknown solver method {method!r}; known: {sorted(SOLVERS)}")
    cls = SOLVERS[method]
    allowed = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for solver {method!r}; allowed: {sorted(allowed)}")
    return cls(**options)


def check_positive_int(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def check_range(name: str, value: float, low: float, high: float, low_open: bool = False) -> None:
    ok = (low < value if low_open else low <= value) and value <= high
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not ok:
        bracket = "(" if low_open else "["
        raise ValueError(f"{name} must be in {bracket}{low}, {high}], got {value!r}")


def relative_residual(fx: Tensor, g: Tensor, out_dtype: torch.dtype, stop_mode: StopMode = "rel") -> Tensor:
    """Per-sample ||g|| (abs) or ||g|| / (||f(x)|| + eps) (rel)."""
    abs_res = torch.linalg.vector_norm(g, dim=1, dtype=out_dtype)
    if stop_mode == "abs":
        return abs_res
    return abs_res / (torch.linalg.vector_norm(fx, dim=1, dtype=out_dtype) + RESIDUAL_EPS)


class ResidualTracker:
    """Per-sample residual trace, NaN-safe best iterate and an on-device iteration counter."""

    def __init__(self, x0: Tensor, max_iter: int, stop_mode: StopMode):
        batch = x0.shape[0]
        self.stop_mode = stop_mode
        res_dtype = torch.promote_types(x0.dtype, torch.float32)
        self.k = torch.zeros((), dtype=torch.long, device=x0.device)
        self.best_residual = torch.full((batch,), math.inf, dtype=res_dtype, device=x0.device)
        self.best_iteration = torch.zeros(batch, dtype=torch.long, device=x0.device)
        self.best_x = x0.clone()
        self.trace = torch.full((batch, max_iter), math.nan, dtype=res_dtype, device=x0.device)

    def record(self, x: Tensor, res: Tensor) -> Tensor:
        """Store residual ``res`` of iterate ``x``; returns the (B,) mask of improved samples."""
        self.trace.index_copy_(1, self.k.view(1), res.unsqueeze(1))
        better = res < self.best_residual  # NaN compares False: a diverged sample keeps its best
        torch.where(better, res, self.best_residual, out=self.best_residual)
        torch.where(better, self.k, self.best_iteration, out=self.best_iteration)
        torch.where(better.unsqueeze(1), x, self.best_x, out=self.best_x)
        self.k.add_(1)
        return better

    def reset(self, x0: Tensor) -> None:
        """Start a new solve from ``x0`` in the same buffers (for graph reuse, :class:`GraphCache`)."""
        self.k.zero_()
        self.best_residual.fill_(math.inf)
        self.best_iteration.zero_()
        self.best_x.copy_(x0)
        self.trace.fill_(math.nan)


def reset_solver_state(solver: FixedPointSolver, state: Any, x0: Tensor) -> None:
    """Overwrite ``state`` in place with ``solver.init(x0)``, field by field, so graphs reading it stay valid."""
    if state is None:
        return
    fresh = solver.init(x0)
    if not is_dataclass(state):
        raise TypeError(f"{type(solver).__name__}.init must return None or a dataclass of tensors to be reused")
    for f in fields(state):
        held = getattr(state, f.name)
        if isinstance(held, Tensor):
            held.copy_(getattr(fresh, f.name))


class SolveWorkspace:
    """The buffers one solve mutates (iterate, its image, solver state, tracker) and the runner of its
    iteration; reused by later solves of the same signature through a :class:`GraphCache`."""

    def __init__(self, solver: FixedPointSolver, fn: Callable[[Tensor], Tensor], f: Callable, x0: Tensor,
                 max_iter: int, stop_mode: StopMode, mode: str):
        self.solver = solver
        self.f = f  # the caller's map, held so that its identity stays unique while a "full" graph contains it
        self.x = x0.detach().clone()  # the current iterate, updated in place
        self.fx = torch.empty_like(self.x)
        self.state = solver.init(self.x)
        self.tracker = ResidualTracker(self.x, max_iter, stop_mode)
        self.stop_mode = stop_mode
        self.full = mode == "full"
        self.fn = fn  # only the "full" graph calls it; other modes evaluate the current solve's f outside
        self.busy = False
        self.runner = StepRunner(self.iteration if self.full else self.bookkeeping, mode != "off", self.x.device)

    def bookkeeping(self) -> None:
        """Record the residual of the current iterate and take the solver's step (eq. of the chosen method)."""
        x, fx, tracker = self.x, self.fx, self.tracker
        g = fx - x
        tracker.record(x, relative_residual(fx, g, tracker.trace.dtype, self.stop_mode))
        x.copy_(self.solver.step(self.state, x, fx, g))

    def iteration(self) -> None:
        self.fx.copy_(self.fn(self.x))
        self.bookkeeping()

    def restart(self, x0: Tensor) -> None:
        """Begin a new solve from ``x0`` in the same buffers."""
        self.x.copy_(x0)
        reset_solver_state(self.solver, self.state, self.x)
        self.tracker.reset(self.x)


def _workspace(solver: FixedPointSolver, fn: Callable[[Tensor], Tensor], f: Callable, x0: Tensor, max_iter: int,
               stop_mode: StopMode, mode: str, cache: GraphCache | None) -> tuple[SolveWorkspace, bool]:
    """A workspace for this solve, from ``cache`` when one of the same signature is free; ``(ws, from_cache)``."""
    if cache is None:
        return SolveWorkspace(solver, fn, f, x0, max_iter, stop_mode, mode), False
    key = (repr(solver), tuple(x0.shape), x0.dtype, x0.device, max_iter, stop_mode, mode)
    ws = cache.workspaces.get(key)
    # A "full" graph contains f: only a solve of the same f may replay it; another f replaces the workspace.
    if ws is None or (ws.full and ws.f is not f and not ws.busy):
        ws = cache.workspaces[key] = SolveWorkspace(solver, fn, f, x0, max_iter, stop_mode, mode)
        cache.captures += 1
        return ws, True
    if ws.busy:  # a solve nested in another's f: never share the outer solve's buffers
        return SolveWorkspace(solver, fn, f, x0, max_iter, stop_mode, mode), False
    ws.restart(x0)
    cache.reuses += 1
    return ws, True


def solve(
    f: Callable[[State], State],
    z0: State,
    method: str | FixedPointSolver = "anderson",
    max_iter: int = 50,
    tol: float = 1e-4,
    stop_mode: StopMode = "rel",
    check_every: int = 8,
    cuda_graph: GraphMode | bool = "auto",
    graph_cache: GraphCache | None = None,
    **method_options: Any,
) -> SolverResult:
    """Find z with z = f(z), batched, without host synchronisation inside the iteration.

    The loop runs at most ``max_iter`` f evaluations.  Every ``check_every``
    iterations (and only then) it reads one boolean from the device to stop
    early when every sample's residual is <= ``tol``; ``tol=0`` never checks
    and runs exactly ``max_iter`` evaluations.  On CUDA the per-iteration
    bookkeeping is replayed as a CUDA graph (``cuda_graph="auto"``), or the
    whole iteration including f (``"full"``, for capturable f; see
    :mod:`deqbench.core.graphs`).  ``graph_cache`` lets a sequence of solves of
    the same shapes reuse one workspace and its captured graph
    (:class:`deqbench.core.graphs.GraphCache`).  Gradients are not tracked.
    """
    check_positive_int("max_iter", max_iter)
    check_positive_int("check_every", check_every)
    if not (isinstance(tol, (int, float)) and tol >= 0):
        raise ValueError(f"tol must be a number >= 0, got {tol!r}")
    if stop_mode not in ("rel", "abs"):
        raise ValueError(f"stop_mode must be 'rel' or 'abs', got {stop_mode!r}")
    solver = make_solver(method, **method_options)
    spec = spec_of(z0)
    fn = flat_map(f, spec)
    watch = active_watch()
    if watch is not None:
        fn = watch.poison(fn)
        graph_cache = None  # fault injection wraps f anew in every solve
    with torch.no_grad():
        mode = graph_mode(cuda_graph, spec.flatten(z0).device)
        ws, cached = _workspace(solver, fn, f, spec.flatten(z0).detach(), max_iter, stop_mode, mode, graph_cache)
        x, fx, tracker = ws.x, ws.fx, ws.tracker
        ws.busy = True
        try:
            nfe = 0
            for k in range(max_iter):
                nfe += 1
                if k + 1 == max_iter:
                    fx.copy_(fn(x))
                    tracker.record(x, relative_residual(fx, fx - x, tracker.trace.dtype, stop_mode))
                    break
                if not ws.full:
                    fx.copy_(fn(x))
                ws.runner()
                if tol > 0 and (k + 1) % check_every == 0:
                    if bool((tracker.best_residual <= tol).all()):  # the only host sync, every check_every steps
                        break
        finally:
            ws.busy = False
        nonfinite = first_nonfinite_iteration(tracker.trace, nfe) if watch is not None else None
        outputs = (tracker.best_x, tracker.best_residual, tracker.trace, tracker.best_iteration)
        if cached:  # the next solve overwrites the workspace
            outputs = tuple(t.clone() for t in outputs)
        best_x, best_residual, trace, best_iteration = outputs
    if watch is not None and nonfinite is not None:
        watch.observe(nonfinite)
    return SolverResult(
        z=spec.unflatten(best_x),
        residual=best_residual,
        converged=best_residual <= tol,
        nfe=nfe,
        trace=trace,
        best_iteration=best_iteration,
        nonfinite_iteration=nonfinite,
        method=getattr(solver, "name", str(method)),
    )
