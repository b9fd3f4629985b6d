"""Divergence watch over fixed-point solves (issue 13, R3).

A solve keeps the lowest-residual iterate of each sample, so one that meets a NaN in f mid-way still returns a
finite answer and the run would go on silently.  Inside ``watch_solves()`` every solve reports, as device tensors
and without any host read, the first iteration at which f gave non-finite values; the caller (the trainer) reads
the verdict once per training step together with its own health check.

``watch_solves(nan_from=K)`` is the fault-injection hook of the reliability tests: f returns NaN from its K-th
evaluation (1-based) of every watched solve on.  It counts evaluations on the host, so it is meant for eager runs
(a whole-iteration CUDA graph replays f without calling it).
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from torch import Tensor

NO_FAULT = -1


@dataclass
class SolveWatch:
    """What the watched solves saw: their count and the first non-finite iteration, per solve, on the device."""

    nan_from: int | None = None
    first_nonfinite: list[Tensor] = field(default_factory=list)  # one () long tensor per solve, -1: all finite

    def observe(self, nonfinite_iteration: Tensor) -> None:
        """Record one solve's per-sample first non-finite iteration (-1 where none)."""
        self.first_nonfinite.append(nonfinite_iteration.max())

    def poison(self, fn: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
        """``fn`` itself, or (fault injection) ``fn`` returning NaN from evaluation ``nan_from`` on."""
        if self.nan_from is None:
            return fn
        calls = 0
        start = self.nan_from

        def poisoned(x: Tensor) -> Tensor:
            nonlocal calls
            calls += 1
            out = fn(x)
            return out * float("nan") if calls >= start else out

        return poisoned

    def verdict(self) -> Tensor:
        """(2,) long on the device: (index of the first solve that met a non-finite f value, its iteration), or
        (-1, -1) when every watched solve stayed finite."""
        if not self.first_nonfinite:
            return torch.full((2,), NO_FAULT, dtype=torch.long)
        per_solve = torch.stack(self.first_nonfinite)
        bad = per_solve >= 0
        solve_index = torch.where(bad.any(), bad.long().argmax(), torch.tensor(NO_FAULT, device=per_solve.device))
        iteration = torch.where(bad.any(), per_solve[solve_index.clamp(min=0)], solve_index)
        return torch.stack([solve_index, iteration])


_ACTIVE: ContextVar[SolveWatch | None] = ContextVar("deqbench_solve_watch", default=None)


def active_watch() -> SolveWatch | None:
    """The watch of the enclosing ``watch_solves()`` block, if any."""
    return _ACTIVE.get()


@contextlib.contextmanager
def watch_solves(nan_from: int | None = None) -> Iterator[SolveWatch]:
    """Collect the non-finite iterations of every solve run inside the block (see the module docstring)."""
    if nan_from is not None and (not isinstance(nan_from, int) or nan_from < 1):
        raise ValueError(f"nan_from must be a positive integer, got {nan_from!r}")
    watch = SolveWatch(nan_from=nan_from)
    token = _ACTIVE.set(watch)
    try:
        yield watch
    finally:
        _ACTIVE.reset(token)


def first_nonfinite_iteration(trace: Tensor, iterations_run: int) -> Tensor:
    """(B,) long: per sample, the first of the ``iterations_run`` recorded residuals that is not finite, or -1.

    The trace is NaN past the iterations run, so only its first ``iterations_run`` columns count."""
    bad = ~torch.isfinite(trace[:, :iterations_run])
    return torch.where(bad.any(dim=1), bad.long().argmax(dim=1), torch.full_like(bad[:, 0], NO_FAULT, dtype=torch.long))
