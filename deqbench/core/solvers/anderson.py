"""Anderson acceleration, Type-I and Type-II, with incrementally updated Gram matrices.

Both variants pick mixing weights ``alpha`` (summing to one) over the last
``m`` iterates X_i with images F_i and residuals G_i = F_i - X_i, from the
bordered system

    [[0, 1^T], [1, H + lam*s*I]] [nu, alpha] = [1, 0],

and move to ``x+ = sum_i alpha_i (X_i + beta G_i)``.

* Type-II (least squares, the usual DEQ choice): H_ij = G_i . G_j.
* Type-I (Petrov-Galerkin, the JIIO paper's choice, appendix A.2):
  H_ij = X_i . G_j, i.e. the combined residual is orthogonal to the
  differences of the iterates.

``s`` is the mean of |G_i|^2 over the memory, so ``lam`` is scale free.  The small
system is always solved in at least float32 with ``solve_ex`` (no error
check, so no host sync); a sample whose system is singular falls back to a
plain damped step for that iteration.  The history holds F and G (X = F - G),
so Type-II reads the history twice per step and Type-I three times.

``history_dtype="bfloat16"`` stores F and G in bf16 (half the memory of the
dominant buffers) while the Gram matrix and the small system stay in float32;
the mixed iterate inherits bf16's rounding of F (about 3 significant digits),
so residuals floor near 1e-3.  On CUDA the dot products and the mixing read the bf16
history directly with float32 accumulation and output (``bmm(..., out_dtype=)``,
the weights split into a bf16 high and low part); elsewhere (the CPU, or a
PyTorch without that overload) the history is upcast per step, which is exact but saves no memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor

from deqbench.core.solvers.base import FixedPointSolver, check_positive_int, check_range, register_solver


@dataclass
class AndersonState:
    F: Tensor  # (B, m, D) images, in the compute dtype
    G: Tensor  # (B, m, D) residuals
    H: Tensor  # (B, m, m) Gram matrix (float32 or float64)
    gg: Tensor  # (B, m) squared residual norms |G_i|^2, the scale of the Tikhonov term
    valid: Tensor  # (m,) which slots are filled, in the compute dtype
    count: Tensor  # () long: iterations seen
    slots: Tensor  # (m,) long: 0..m-1
    bordered: Tensor  # (B, m+1, m+1) workspace
    rhs: Tensor  # (B, m+1, 1)


@register_solver
@dataclass
class Anderson(FixedPointSolver):
    """Anderson acceleration with memory ``m``, mixing ``beta`` and Tikhonov ``lam``."""

    name: ClassVar[str] = "anderson"
    m: int = 5
    beta: float = 1.0
    lam: float = 1e-4
    kind: Literal["I", "II"] = "II"
    history_dtype: Literal["float32", "bfloat16"] | None = None  # None: the iterate's (compute) dtype

    def __post_init__(self) -> None:
        check_positive_int("m", self.m)
        check_range("beta", self.beta, 0.0, 1.0, low_open=True)
        check_range("lam", self.lam, 0.0, 1.0)
        if self.kind not in ("I", "II"):
            raise ValueError(f"kind must be 'I' or 'II', got {self.kind!r}")
        if self.history_dtype not in (None, "float32", "bfloat16"):
            raise ValueError(f"history_dtype must be None, 'float32' or 'bfloat16', got {self.history_dtype!r}")

    def init(self, x0: Tensor) -> AndersonState:
        batch, dim = x0.shape
        compute = torch.promote_types(x0.dtype, torch.float32)
        m = self.m
        opts = dict(dtype=compute, device=x0.device)
        stored = dict(opts, dtype=getattr(torch, self.history_dtype)) if self.history_dtype else opts
        rhs = torch.zeros(batch, m + 1, 1, **opts)
        rhs[:, 0] = 1.0
        return AndersonState(
            F=torch.zeros(batch, m, dim, **stored),
            G=torch.zeros(batch, m, dim, **stored),
            H=torch.zeros(batch, m, m, **opts),
            gg=torch.zeros(batch, m, **opts),
            valid=torch.zeros(m, **opts),
            count=torch.zeros((), dtype=torch.long, device=x0.device),
            slots=torch.arange(m, device=x0.device),
            bordered=torch.zeros(batch, m + 1, m + 1, **opts),
            rhs=rhs,
        )

    def step(self, state: AndersonState, x: Tensor, fx: Tensor, g: Tensor) -> Tensor:
        compute = state.H.dtype
        xc, fc, gc = x.to(compute), fx.to(compute), g.to(compute)
        slot = state.count.remainder(self.m).view(1)
        state.F.index_copy_(1, slot, fc.to(state.F.dtype).unsqueeze(1))
        state.G.index_copy_(1, slot, gc.to(state.G.dtype).unsqueeze(1))
        state.valid.index_fill_(0, slot, 1.0)
        if self.kind == "II":
            col = _history_bmm(state.G, gc.unsqueeze(2), compute)  # (B, m, 1): G_i . g
            state.H.index_copy_(1, slot, col.transpose(1, 2))
            state.H.index_copy_(2, slot, col)
            state.gg.index_copy_(1, slot, col.index_select(1, slot).squeeze(2))
        else:
            # H_ij = X_i . G_j with X_i = F_i - G_i.
            # One matrix-vector product per dot (not one (m x D) @ (D x 2) product): cuBLAS runs the latter as a
            # GEMM tiled over the tiny m x 2 output, which reads the history 6-12x slower than two GEMVs (H100).
            g_dot_x = _history_bmm(state.G, xc.unsqueeze(2), compute)  # (B, m, 1): G_i . x
            g_dot_g = _history_bmm(state.G, gc.unsqueeze(2), compute)  # (B, m, 1): G_i . g
            f_dot_g = _history_bmm(state.F, gc.unsqueeze(2), compute)  # (B, m, 1): F_i . g
            state.H.index_copy_(1, slot, g_dot_x.transpose(1, 2))  # row: x . G_j
            state.H.index_copy_(2, slot, f_dot_g - g_dot_g)  # column: X_i . g
            state.gg.index_copy_(1, slot, g_dot_g.index_select(1, slot).squeeze(2))
        alpha = self._weights(state, slot)
        state.count.add_(1)
        mixed = _weights_bmm(alpha.unsqueeze(1), state.F, compute).squeeze(1)
        if self.beta != 1.0:
            mixed = mixed - (1.0 - self.beta) * _weights_bmm(alpha.unsqueeze(1), state.G, compute).squeeze(1)
        return mixed.to(x.dtype)

    def _weights(self, state: AndersonState, slot: Tensor) -> Tensor:
        valid = state.valid
        scale = (state.gg * valid).sum(1, keepdim=True) / valid.sum() + torch.finfo(state.H.dtype).tiny
        ridge = (1.0 - valid) + valid * (self.lam * scale)  # (B, m): unit diagonal on empty slots
        A = state.bordered
        A[:, 1:, 1:] = state.H * (valid.unsqueeze(0) * valid.unsqueeze(1)) + torch.diag_embed(ridge)
        A[:, 0, 1:] = valid
        A[:, 1:, 0] = valid
        solution = _small_solve(A, state.rhs)
        alpha = solution[:, 1:, 0]
        newest = (state.slots == slot).to(alpha.dtype)  # fallback: a plain damped step
        ok = torch.isfinite(alpha).all(dim=1, keepdim=True)
        return torch.where(ok, alpha, newest)


_OUT_DTYPE_BMM: dict[int, bool] = {}


def _reads_low_precision(history: Tensor) -> bool:
    """Whether this CUDA device's ``bmm`` takes ``out_dtype`` (PyTorch >= 2.8); probed once per device, eagerly
    (a solver's first step always runs before any CUDA-graph capture)."""
    if not history.is_cuda:
        return False
    index = history.device.index if history.device.index is not None else torch.cuda.current_device()
    if index not in _OUT_DTYPE_BMM:
        probe = torch.zeros(1, 1, 1, dtype=torch.bfloat16, device=history.device)
        try:
            torch.bmm(probe, probe, out_dtype=torch.float32)
            _OUT_DTYPE_BMM[index] = True
        except (TypeError, RuntimeError):
            _OUT_DTYPE_BMM[index] = False
    return _OUT_DTYPE_BMM[index]


def _history_bmm(history: Tensor, vectors: Tensor, compute: torch.dtype) -> Tensor:
    """history (B, m, D) @ vectors (B, D, k) in ``compute`` precision, reading a low-precision history in place."""
    if history.dtype == compute:
        return torch.bmm(history, vectors)
    if _reads_low_precision(history):
        return torch.bmm(history, vectors.to(history.dtype), out_dtype=compute)
    return torch.bmm(history.to(compute), vectors)


def _weights_bmm(weights: Tensor, history: Tensor, compute: torch.dtype) -> Tensor:
    """weights (B, 1, m) @ history (B, m, D) in ``compute`` precision.  For a bf16 history on CUDA the float32
    weights are split into bf16 high and low parts (16 significant bits), two products with float32 output."""
    if history.dtype == compute:
        return torch.bmm(weights, history)
    if _reads_low_precision(history):
        high = weights.to(history.dtype)
        low = (weights - high.to(compute)).to(history.dtype)
        return (torch.bmm(high, history, out_dtype=compute)
                + torch.bmm(low, history, out_dtype=compute))
    return torch.bmm(weights, history.to(compute))


def _small_solve(A: Tensor, rhs: Tensor) -> Tensor:
    """Batched LU solve with no error check (no host sync).

    On CUDA the cuSOLVER/cuBLAS batched path is forced: PyTorch's default
    heuristic sends systems larger than 16x16 to MAGMA, which cannot be
    captured in a CUDA graph.
    """
    if A.device.type != "cuda":
        return torch.linalg.solve_ex(A, rhs)[0]
    previous = torch.backends.cuda.preferred_linalg_library()
    torch.backends.cuda.preferred_linalg_library("cusolver")
    try:
        return torch.linalg.solve_ex(A, rhs)[0]
    finally:
        torch.backends.cuda.preferred_linalg_library(previous)
