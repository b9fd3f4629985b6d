"""Per-iteration tracing of input-optimisation solves (JIIO paper Figure 3: cost against wall-clock time).

JIIO (:func:`deqbench.inputopt.jiio.jiio`) and the PGD / Adam baselines (:mod:`deqbench.inputopt.baselines`) call
an optional hook ``hook(k, cost)`` after iteration ``k`` (0-based) with the per-sample cost of that iteration:
JIIO's cost l(z_k) at its current iterate, a baseline's cost l(z*(x_k)) at the equilibrium of its current input
(``cost`` may be a buffer the solve overwrites later: a hook that keeps it copies it).
The hook is passed as ``on_iteration=`` or, for callers that build the solve elsewhere, installed for a block with
:func:`iteration_hook`.  Without a hook nothing changes: no device synchronisation, no host read.

:class:`IterationClock` is the hook Figure 3 uses: it synchronises the device and records ``time.perf_counter()``
after every iteration, so a traced run is slower than an untimed one; trace in a run separate from the timed one.
"""

from __future__ import annotations

import contextlib
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from torch import Tensor

IterationHook = Callable[[int, Tensor], None]

_HOOK: ContextVar[IterationHook | None] = ContextVar("deqbench_iteration_hook", default=None)


@contextlib.contextmanager
def iteration_hook(hook: IterationHook) -> Iterator[IterationHook]:
    """Within the block, every JIIO / PGD / Adam solve that gets no explicit ``on_iteration`` calls ``hook``."""
    token = _HOOK.set(hook)
    try:
        yield hook
    finally:
        _HOOK.reset(token)


def active_hook(explicit: IterationHook | None) -> IterationHook | None:
    """The hook a solve uses: the explicit one, else the one :func:`iteration_hook` installed, else None."""
    return explicit if explicit is not None else _HOOK.get()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class IterationClock:
    """Synchronised wall-clock seconds since :meth:`start` at the end of each iteration, and that iteration's cost.

    The time the hook itself spends after taking its timestamp (copying the cost) is excluded from later stamps.
    """

    device: torch.device
    seconds: list[float] = field(default_factory=list)
    costs: list[Tensor] = field(default_factory=list)  # per iteration, (B,) on the device
    _t0: float | None = None
    _paused: float = 0.0

    def start(self) -> None:
        """Clear the record and start the clock once queued device work is done."""
        self.seconds.clear()
        self.costs.clear()
        self._paused = 0.0
        _sync(self.device)
        self._t0 = time.perf_counter()

    def __call__(self, k: int, cost: Tensor) -> None:
        if self._t0 is None:
            raise RuntimeError("IterationClock: call start() before the solve")
        _sync(self.device)
        now = time.perf_counter()
        self.seconds.append(now - self._t0 - self._paused)
        self.costs.append(cost.detach().clone())
        self._paused += time.perf_counter() - now

    def cost_matrix(self) -> Tensor:
        """(B, iterations) costs on the CPU."""
        return torch.stack(self.costs, dim=1).cpu()
