"""JIIO: joint inference and input optimisation in a DEQ (Gurumurthy et al. 2021).

The augmented state v = (z, mu, x) is driven to the fixed point of the damped
primal-dual map of eq. (11),

    z+  = z  + a_z  (f(z, x) - z)
    mu+ = mu + a_mu (J_z^T mu + dl/dz - mu)
    x+  = P(x - a_x J_x^T mu)          (P: optional projection, eq. 26)

whose fixed point satisfies the KKT conditions (14) of
``min_{x,z} l(z) s.t. z = f(z, x)``.  One f evaluation and one VJP per
iteration give both J_z^T mu + dl/dz and J_x^T mu.  The map is accelerated by
Anderson (Type-I, the paper's choice, appendix A.2), Type-II, Broyden or
nothing.  Each sample keeps the iterate chosen by a named selection policy.

When grad is enabled the returned z is attached so that the gradient of the
inner cost reuses mu* (eq. 19): no second fixed-point solve, x* constant.
``backward="ift"`` instead solves the adjoint for any outer loss, warm started
from mu*.  Optional Jacobian regularisation (eq. 27, appendix A.1) is a
Hutchinson estimate at a random iterate of each sample's trajectory.

Task grouping (meta-learning, spec B.2): with ``group_size=K`` the batch is laid
out task-major (samples t*K .. t*K+K-1 belong to task t) and x has one row per
task, shared by its samples.  The x-update then uses J_x^T mu summed over the
task's samples (autograd through the broadcast of x does the sum).  The solver
state holds one row per task, ``(z_1..z_K, mu_1..mu_K, x)``, so Anderson mixes
a task's whole augmented vector with one set of coefficients (x stays shared)
and the selection policy keeps one iterate per task, judged on the task's
summed cost and its whole-row residual.  ``K = 1`` (or None) is the plain,
per-sample solve.  ``task_l2 = lam`` adds lam * mean_j x_j^2 to every sample's
cost (the reference's task-vector regulariser, B.2), so its gradient enters the
x-update as in eq. (11).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Literal

import torch
from torch import Tensor

from deqbench.core.deq import BackwardConfig, _ImplicitGradient, attach_gradient
from deqbench.core.jacobian import hutchinson_jacobian_loss
from deqbench.inputopt.projections import Projection, make_projection
from deqbench.inputopt.tracing import IterationHook, active_hook
from deqbench.core.solvers import make_solver
from deqbench.core.graphs import GraphMode, StepRunner, graph_mode
from deqbench.core.solvers.base import check_positive_int, check_range, relative_residual
from deqbench.core.state import State, StateSpec, spec_of

LayerFn = Callable[[State, State], State]
CostFn = Callable[[State], Tensor]


# ----------------------------------------------------------------------------- selection policies


class SelectionPolicy:
    """Decides, per sample and iteration, whether the current iterate replaces the kept one.

    ``accept(k, residual, cost)`` (``k`` the on-device iteration count) returns a
    (B,) bool mask and updates the policy's own running bests.  Non-finite
    iterates are never accepted.
    """

    name: ClassVar[str] = "base"

    def reset(self, batch: int, device: torch.device, dtype: torch.dtype) -> None:
        self.best_residual = torch.full((batch,), math.inf, device=device, dtype=dtype)
        self.best_cost = torch.full((batch,), math.inf, device=device, dtype=dtype)

    def accept(self, k: Tensor, residual: Tensor, cost: Tensor) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def _keep(self, accept: Tensor, residual: Tensor, cost: Tensor) -> Tensor:
        """Record the accepted samples' residual and cost as the running bests."""
        torch.where(accept, cost, self.best_cost, out=self.best_cost)
        torch.where(accept, residual, self.best_residual, out=self.best_residual)
        return accept


@dataclass
class ReferenceSelection(SelectionPolicy):
    """The reference code's heuristic: accept during ``warmup`` iterations, on a new
    lowest KKT residual, or on a lower cost whose residual is within ``slack`` of
    the best.  The best residual moves only on the first two conditions."""

    name: ClassVar[str] = "reference"
    warmup: int = 10
    slack: float = 1.3

    def accept(self, k: int, residual: Tensor, cost: Tensor) -> Tensor:
        finite = torch.isfinite(residual) & torch.isfinite(cost)
        strict = ((residual < self.best_residual) | (k < self.warmup)) & finite
        accept = strict | ((cost < self.best_cost) & (residual < self.slack * self.best_residual) & finite)
        torch.where(strict, residual, self.best_residual, out=self.best_residual)
        torch.where(accept, cost, self.best_cost, out=self.best_cost)
        return accept


@dataclass
class LowestCostSelection(SelectionPolicy):
    """Keep the iterate with the lowest inner cost (the paper's text, appendix C.3)."""

    name: ClassVar[str] = "lowest_cost"

    def accept(self, k: int, residual: Tensor, cost: Tensor) -> Tensor:
        return self._keep((cost < self.best_cost) & torch.isfinite(residual), residual, cost)


@dataclass
class LowestResidualSelection(SelectionPolicy):
    """Keep the iterate with the lowest KKT residual."""

    name: ClassVar[str] = "lowest_residual"

    def accept(self, k: int, residual: Tensor, cost: Tensor) -> Tensor:
        return self._keep((residual < self.best_residual) & torch.isfinite(cost), residual, cost)


@dataclass
class LastSelection(SelectionPolicy):
    """Keep the last finite iterate."""

    name: ClassVar[str] = "last"

    def accept(self, k: int, residual: Tensor, cost: Tensor) -> Tensor:
        return self._keep(torch.isfinite(residual) & torch.isfinite(cost), residual, cost)


SELECTION_POLICIES: dict[str, type[SelectionPolicy]] = {
    cls.name: cls for cls in (ReferenceSelection, LowestCostSelection, LowestResidualSelection, LastSelection)
}


def make_selection(policy: str | SelectionPolicy, **options: Any) -> SelectionPolicy:
    if isinstance(policy, SelectionPolicy):
        return policy
    if policy not in SELECTION_POLICIES:
        raise ValueError(f"unknown selection policy {policy!r}; known: {sorted(SELECTION_POLICIES)}")
    try:
        return SELECTION_POLICIES[policy](**options)
    except TypeError as err:
        raise ValueError(f"bad option for selection policy {policy!r}: {err}") from None


# ----------------------------------------------------------------------------- result and config


@dataclass
class JIIOResult:
    """Per-sample outcome of a JIIO solve; with ``group_size`` (spec B.2) x and the statistics
    (cost, residual, best_iteration, traces) have one row per task, z and mu one per sample."""

    z: State  # attached to the parameters' graph when grad is enabled
    x: State  # optimised input (detached: treated as constant, eq. 19)
    mu: State  # adjoint / dual variable
    cost: Tensor  # (B,) inner cost at the returned iterate
    residual: Tensor  # (B,) relative damped-KKT residual at the returned iterate
    best_iteration: Tensor  # (B,)
    nfe: int
    trace_residual: Tensor  # (B, max_iter)
    trace_cost: Tensor  # (B, max_iter)
    jac_loss: Tensor | None = None  # Hutchinson ||J_z||_F^2 / numel, differentiable
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class JIIOConfig:
    """Validated JIIO options (see :func:`jiio`)."""

    max_iter: int = 40
    alpha: tuple[float, float, float] = (0.8, 0.6, 0.01)
    alpha_x_late: float | None = None
    alpha_x_switch: int | None = None
    method: Literal["anderson", "broyden", "none"] = "anderson"
    solver_options: dict[str, Any] = field(default_factory=lambda: {"m": 20, "kind": "I"})
    projection: str | None = None
    eps: float | None = None
    normalized_step: bool = False
    selection: str = "reference"
    selection_options: dict[str, Any] = field(default_factory=dict)
    jac_reg: Literal["trajectory", "final"] | None = None
    jac_reg_probes: int = 2
    jac_reg_start: int = 15
    backward: Literal["mu", "ift", "none"] = "mu"
    backward_options: dict[str, Any] = field(default_factory=dict)
    cuda_graph: GraphMode | bool = "auto"
    group_size: int | None = None  # samples per task sharing one x (spec B.2); None: x per sample
    task_l2: float = 0.0  # coefficient of mean_j x_j^2 added to each sample's cost (spec B.2); 0 disables

    def __post_init__(self) -> None:
        check_positive_int("max_iter", self.max_iter)
        if self.group_size is not None:
            check_positive_int("group_size", self.group_size)
        if isinstance(self.task_l2, bool) or not isinstance(self.task_l2, (int, float)) or not self.task_l2 >= 0:
            raise ValueError(f"task_l2 must be a number >= 0, got {self.task_l2!r}")
        if len(self.alpha) != 3:
            raise ValueError(f"alpha must be (a_z, a_mu, a_x), got {self.alpha!r}")
        for name, value in zip(("a_z", "a_mu"), self.alpha[:2]):
            check_range(f"alpha {name}", value, 0.0, 1.0, low_open=True)
        if not self.alpha[2] > 0:
            raise ValueError(f"alpha a_x must be > 0, got {self.alpha[2]!r}")
        if (self.alpha_x_late is None) != (self.alpha_x_switch is None):
            raise ValueError("alpha_x_late and alpha_x_switch must be given together")
        if self.method not in ("anderson", "broyden", "none"):
            raise ValueError(f"method must be 'anderson', 'broyden' or 'none', got {self.method!r}")
        if self.jac_reg not in (None, "trajectory", "final"):
            raise ValueError(f"jac_reg must be None, 'trajectory' or 'final', got {self.jac_reg!r}")
        check_positive_int("jac_reg_probes", self.jac_reg_probes)
        if self.backward not in ("mu", "ift", "none"):
            raise ValueError(f"backward must be 'mu', 'ift' or 'none', got {self.backward!r}")
        make_selection(self.selection, **self.selection_options)
        if self.projection is not None:
            make_projection(self.projection, self.eps)

    def alpha_x_at(self, k: int) -> float:
        if self.alpha_x_switch is not None and k >= self.alpha_x_switch:
            return float(self.alpha_x_late)  # type: ignore[arg-type]
        return float(self.alpha[2])


# ----------------------------------------------------------------------------- the solve


class _Augmented:
    """Packs (z, mu, x) into one (T, 2 K Dz + Dx) matrix, a row per task of K samples (K = 1: per sample),
    and evaluates the map of eq. (11) (spec B.2 for K > 1)."""

    def __init__(self, f: LayerFn, cost: CostFn, zspec: StateSpec, xspec: StateSpec, cfg: JIIOConfig, proj: Projection | None):
        self.f, self.cost, self.zspec, self.xspec, self.cfg, self.proj = f, cost, zspec, xspec, cfg, proj
        self.dz, self.dx = zspec.dim, xspec.dim
        self.k = cfg.group_size or 1
        self.rz = self.k * self.dz  # width of the z (and of the mu) block of a row

    def per_sample(self, x: Tensor) -> Tensor:
        """Broadcast per-task rows (T, ...) to the task-major samples (T K, ...)."""
        return x if self.k == 1 else x.repeat_interleave(self.k, dim=0)

    def per_row(self, c: Tensor) -> Tensor:
        """Sum a per-sample quantity (T K,) over each task: (T,)."""
        return c if self.k == 1 else c.view(-1, self.k).sum(1)

    def alpha_x(self, k: Tensor) -> Tensor | float:
        """a_x at iteration ``k``, computed on the device (no host read of k)."""
        cfg = self.cfg
        if cfg.alpha_x_switch is None:
            return float(cfg.alpha[2])
        return torch.where(k >= cfg.alpha_x_switch, cfg.alpha_x_late, cfg.alpha[2])

    def split(self, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(z, mu) per sample, (T K, Dz) each, and x per row, (T, Dx)."""
        z, mu, x = v[:, : self.rz], v[:, self.rz : 2 * self.rz], v[:, 2 * self.rz :]
        if self.k > 1:
            z, mu = z.reshape(-1, self.dz), mu.reshape(-1, self.dz)
        return z, mu, x

    def pack(self, z: Tensor, mu: Tensor, x: Tensor) -> Tensor:
        if self.k > 1:
            z, mu = z.reshape(-1, self.rz), mu.reshape(-1, self.rz)
        return torch.cat((z, mu, x), dim=1)

    def __call__(self, v: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        """Returns F(v) and the per-row cost l at v (summed over a task's samples); ``k`` is the on-device
        iteration count."""
        a_z, a_mu, _ = self.cfg.alpha
        z, mu, x = self.split(v)
        a_x = self.alpha_x(k)
        if isinstance(a_x, Tensor):
            a_x = a_x.to(x.dtype)
        with torch.enable_grad():
            z_req = z.detach().requires_grad_()
            x_req = x.detach().requires_grad_()
            x_s = self.per_sample(x_req)  # autograd through the broadcast sums J_x^T mu over a task (B.2)
            z_state = self.zspec.unflatten(z_req)
            fz = self.zspec.flatten(self.f(z_state, self.xspec.unflatten(x_s)))
            c = self.cost(z_state)
            if self.cfg.task_l2:
                c = c + self.cfg.task_l2 * x_s.pow(2).mean(1)
            g_z, g_x = torch.autograd.grad((c.sum(), fz), (z_req, x_req), (None, mu.detach()), allow_unused=True)
        if g_x is None:
            raise ValueError("f(z, x) does not depend on x: nothing to optimise")
        if g_z is None:
            g_z = torch.zeros_like(z)
        z_new = torch.lerp(z, fz.detach(), a_z)
        mu_new = torch.lerp(mu, g_z, a_mu)
        if self.cfg.normalized_step and self.proj is not None:
            step = self.proj.steepest_direction(g_x)
        elif self.cfg.normalized_step:
            step = g_x / (torch.linalg.vector_norm(g_x, dim=1, keepdim=True) + 1e-8)
        else:
            step = g_x
        x_new = x - a_x * step
        if self.proj is not None:
            x_new = self.proj(x_new)
        return self.pack(z_new, mu_new, x_new), self.per_row(c.detach())


def jiio(
    f: LayerFn,
    cost: CostFn,
    z0: State,
    x0: State,
    max_iter: int = 40,
    alpha: tuple[float, float, float] = (0.8, 0.6, 0.01),
    method: Literal["anderson", "broyden", "none"] = "anderson",
    **options: Any,
) -> JIIOResult:
    """Jointly find the DEQ fixed point z*, the adjoint mu* and the optimal input x*.

    ``f(z, x)`` is the DEQ layer (states may be tuples); ``cost(z)`` returns the
    per-sample inner cost, shape (B,).  Options (validated, see
    :class:`JIIOConfig`): ``alpha_x_late``/``alpha_x_switch`` (a_x schedule),
    ``solver_options`` (e.g. ``{"m": 20, "kind": "I"}``), ``projection``
    ("l2"/"linf") with ``eps`` and ``normalized_step``, ``selection`` with
    ``selection_options``, ``jac_reg`` ("trajectory"/"final") with
    ``jac_reg_probes``/``jac_reg_start``, ``backward`` ("mu"/"ift"/"none") with
    ``backward_options``, ``mu0`` (initial adjoint, zeros by default) and
    ``on_iteration`` (a :mod:`~deqbench.inputopt.tracing` hook called with
    ``(k, cost at the iterate)`` after each iteration; None: the hook
    :func:`~deqbench.inputopt.tracing.iteration_hook` installed, if any),
    ``group_size`` (K samples per task share one x, spec B.2: z0 has T K rows
    laid out task-major, x0 has T rows; selection, ``cost``, ``residual``,
    ``best_iteration`` and the traces are then per task, z and mu per sample)
    and ``task_l2`` (lam * mean_j x_j^2 added to every sample's cost).
    """
    mu0 = options.pop("mu0", None)
    hook: IterationHook | None = active_hook(options.pop("on_iteration", None))
    grad_on = torch.is_grad_enabled()
    try:
        cfg = JIIOConfig(max_iter=max_iter, alpha=tuple(alpha), method=method, **options)  # type: ignore[arg-type]
    except TypeError as err:
        raise ValueError(f"bad JIIO option: {err}") from None
    proj = make_projection(cfg.projection, cfg.eps) if cfg.projection is not None else None
    zspec, xspec = spec_of(z0), spec_of(x0)
    samples, rows = zspec.flatten(z0).shape[0], xspec.flatten(x0).shape[0]
    if samples != rows * (cfg.group_size or 1):
        raise ValueError(f"z0 has {samples} samples but x0 has {rows} rows and group_size is {cfg.group_size}: "
                         "z0 needs group_size samples per row of x0")
    aug = _Augmented(f, cost, zspec, xspec, cfg, proj)
    selection = make_selection(cfg.selection, **cfg.selection_options)
    solver = make_solver("forward" if cfg.method == "none" else cfg.method, **({} if cfg.method == "none" else cfg.solver_options))

    with torch.no_grad():
        z_flat = zspec.flatten(z0).detach()
        x_flat = xspec.flatten(x0).detach()
        if proj is not None:
            x_flat = proj(x_flat)
        mu_flat = torch.zeros_like(z_flat) if mu0 is None else zspec.flatten(mu0).detach()
        v = aug.pack(z_flat, mu_flat, x_flat)  # the current iterate, updated in place
        fv = torch.empty_like(v)
        batch = v.shape[0]
        stat_dtype = torch.promote_types(v.dtype, torch.float32)
        cost_now = torch.empty(batch, dtype=stat_dtype, device=v.device)
        selection.reset(batch, v.device, stat_dtype)
        state = solver.init(v)
        k_dev = torch.zeros((), dtype=torch.long, device=v.device)
        best_v = v.clone()
        best_iter = torch.zeros(batch, dtype=torch.long, device=v.device)
        best_res = torch.full((batch,), math.inf, dtype=stat_dtype, device=v.device)
        best_cost = torch.full((batch,), math.inf, dtype=stat_dtype, device=v.device)
        trace_res = torch.full((batch, cfg.max_iter), math.nan, dtype=stat_dtype, device=v.device)
        trace_cost = torch.full_like(trace_res, math.nan)
        track_jac = cfg.jac_reg == "trajectory" and grad_on
        if track_jac:
            low = cfg.jac_reg_start if cfg.max_iter > cfg.jac_reg_start else 0
            pick = torch.randint(low, cfg.max_iter, (samples, 1), device=v.device)  # per sample (B.4)
            jac_z, jac_x = z_flat.clone(), aug.per_sample(x_flat).clone()
        x_part = slice(2 * aug.rz, None)

        def record() -> Tensor:
            g = fv - v
            res = relative_residual(fv, g, stat_dtype)
            column = k_dev.view(1)
            trace_res.index_copy_(1, column, res.unsqueeze(1))
            trace_cost.index_copy_(1, column, cost_now.unsqueeze(1))
            accept = selection.accept(k_dev, res, cost_now)
            torch.where(accept.unsqueeze(1), v, best_v, out=best_v)
            torch.where(accept, res, best_res, out=best_res)
            torch.where(accept, cost_now, best_cost, out=best_cost)
            torch.where(accept, k_dev, best_iter, out=best_iter)
            if track_jac:
                hit = pick == k_dev
                z_now, _, x_now = aug.split(v)
                torch.where(hit, z_now, jac_z, out=jac_z)
                torch.where(hit, aug.per_sample(x_now), jac_x, out=jac_x)
            k_dev.add_(1)
            return g

        def bookkeeping() -> None:
            g = record()
            v_next = solver.step(state, v, fv, g)
            if proj is not None and cfg.method != "none":
                v_next[:, x_part] = proj(v_next[:, x_part])
            v.copy_(v_next)

        def evaluate() -> None:
            new_v, c = aug(v, k_dev)
            fv.copy_(new_v)
            cost_now.copy_(c)

        def iteration() -> None:
            evaluate()
            bookkeeping()

        mode = graph_mode(cfg.cuda_graph, v.device)
        full = mode == "full"
        runner = StepRunner(iteration if full else bookkeeping, mode != "off", v.device)
        for k in range(cfg.max_iter):
            if k + 1 == cfg.max_iter:
                evaluate()
                record()
            else:
                if not full:
                    evaluate()
                runner()
            if hook is not None:  # tracing only (Figure 3): the hook may synchronise the device
                hook(k, cost_now)
        z_star, mu_star, x_star = (t.clone() for t in aug.split(best_v))

    result = JIIOResult(
        z=zspec.unflatten(z_star),
        x=xspec.unflatten(x_star),
        mu=zspec.unflatten(mu_star),
        cost=best_cost,
        residual=best_res,
        best_iteration=best_iter,
        nfe=cfg.max_iter,
        trace_residual=trace_res,
        trace_cost=trace_cost,
        info={"config": cfg},
    )
    if not grad_on:
        return result
    x_const = xspec.unflatten(aug.per_sample(x_star))

    def f_z(z_flat_: Tensor) -> Tensor:
        return zspec.flatten(f(zspec.unflatten(z_flat_), x_const))

    if cfg.backward != "none":
        result.z = zspec.unflatten(_attach(f_z, cost, zspec, z_star, mu_star, cfg))
    if cfg.jac_reg is not None:
        if cfg.jac_reg == "trajectory":
            jz, jx = jac_z, jac_x
        else:
            jz, jx = z_star, aug.per_sample(x_star)
        result.jac_loss = hutchinson_jacobian_loss(
            lambda zz: zspec.flatten(f(zspec.unflatten(zz), xspec.unflatten(jx))), jz, cfg.jac_reg_probes
        )
    return result


def _attach(
    f_z: Callable[[Tensor], Tensor],
    cost: CostFn,
    zspec: StateSpec,
    z_star: Tensor,
    mu_star: Tensor,
    cfg: JIIOConfig,
) -> Tensor:
    """Attach z* to the graph of f(z*, x*) so that backward uses mu* (eq. 19) or an IFT solve.

    The incoming gradient g of each sample is matched to the inner cost's
    gradient d = dl/dz(z*) by the scale s = <g, d> / <d, d>, so the outer loss
    may be any per-sample multiple of the cost (sum, mean, or -l as in
    adversarial training, eq. 26); then w = s mu*.  For other outer losses use
    ``backward="ift"``, which solves w = J^T w + g warm started from s mu*.
    """

    def scaled_mu(grad: Tensor) -> Tensor:
        with torch.enable_grad():
            z_req = z_star.detach().requires_grad_()
            (d,) = torch.autograd.grad(cost(zspec.unflatten(z_req)).sum(), z_req)
        scale = (grad * d).sum(1, keepdim=True) / ((d * d).sum(1, keepdim=True) + torch.finfo(d.dtype).tiny)
        return scale * mu_star

    if cfg.backward == "mu":
        fz = f_z(z_star)
        return _ImplicitGradient.apply(fz, z_star, scaled_mu)
    bcfg = BackwardConfig.build("ift", cfg.backward_options)
    return attach_gradient(f_z, z_star, bcfg, adjoint_init=scaled_mu)
