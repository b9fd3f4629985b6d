"""Replay of a solver iteration as a CUDA graph.

A solve alternates f with bookkeeping: residuals, best-iterate tracking, the
accelerator's history update and its small linear solve.  Both are dozens of
small kernels whose launch cost, not their arithmetic, dominates on a GPU.
Because the solvers run entirely on the device, in place on buffers that live
for the whole solve, with the iteration counter kept on the device, the same
kernel sequence is valid at every iteration.  :class:`StepRunner` therefore
runs an iteration eagerly once (the warm-up: lazy initialisation, cuDNN
autotuning, library workspaces), captures the second one into a CUDA graph
and replays that graph from then on.

Modes (``cuda_graph=``):

* ``"auto"`` (default): capture the solver's bookkeeping only; f runs eagerly,
  so any f works.
* ``"full"``: capture f (and, for JIIO, its VJP) as well.  f must then be
  capturable: no host syncs, no data-dependent Python control flow, and the
  tensors it closes over must not be replaced during the solve.  The models
  in :mod:`deqbench.models` satisfy this.
* ``"off"``: everything eager.

All captures and their warm-ups run on one side stream per device, so library
workspaces (cuBLAS, cuSOLVER) are allocated once, outside any graph's pool.
All graphs share one memory pool per device: a solve's graph lives only for
that solve and solves never overlap in time (a solve nested inside another's
f runs eagerly during capture), so each capture reuses the memory of the dead
ones.  With a private pool per graph, PyTorch keeps every dead graph's
segments reserved: 20 PGD steps reserved 9 GiB on an H100 and training ran
out of memory.

Reuse across solves (:class:`GraphCache`): a caller that runs many solves of
the same shapes (PGD: one forward and one adjoint solve per step) passes one
cache to all of them.  The first solve of each signature allocates a
workspace (iterate, image, solver state, residual tracker) and captures its
graph; every later solve with that signature resets the workspace in place
and replays the same graph, so a 20-step PGD attack captures twice instead of
40 times, as JIIO's single solve captures once.  The cache keeps its graphs
alive, so they stay valid while later captures share the pool: every buffer a
graph reads or writes outside its own temporaries lives in a workspace
allocated outside any capture.
"""

from __future__ import annotations

from typing import Any, Callable, Hashable, Literal, Sequence, Union

import torch
from torch import Tensor

GraphMode = Literal["auto", "full", "off"]
GRAPH_MODES = ("auto", "full", "off")

_SIDE_STREAMS: dict[int, "torch.cuda.Stream"] = {}
_POOLS: dict[int, tuple[int, int]] = {}
# The first graph captured in a device's pool is kept (never replayed again) so that the pool outlives every
# later graph: PyTorch frees a pool when its last graph dies and a freed pool's handle cannot be reused.
_POOL_ANCHORS: dict[int, "torch.cuda.CUDAGraph"] = {}


def graph_mode(mode: GraphMode | bool, device: torch.device) -> str:
    """Effective mode on ``device``: ``"off"`` on the CPU or inside another capture."""
    if isinstance(mode, bool):
        mode = "auto" if mode else "off"
    if mode not in GRAPH_MODES:
        raise ValueError(f"cuda_graph must be one of {GRAPH_MODES} or a bool, got {mode!r}")
    if device.type != "cuda" or torch.cuda.is_current_stream_capturing():
        return "off"
    return mode


def _side_stream(device: torch.device) -> "torch.cuda.Stream":
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SIDE_STREAMS:
        _SIDE_STREAMS[index] = torch.cuda.Stream(device=index)
        _POOLS[index] = torch.cuda.graph_pool_handle()
    return _SIDE_STREAMS[index]


def _device_index(stream: "torch.cuda.Stream") -> int:
    return stream.device.index if stream.device.index is not None else torch.cuda.current_device()


class StepRunner:
    """Calls ``step`` (no arguments; it only mutates preallocated tensors).

    On CUDA with ``use_graph`` the first call runs eagerly on the side stream,
    the second is captured and every call from then on replays the graph.
    """

    def __init__(self, step: Callable[[], None], use_graph: bool, device: torch.device | None = None):
        self.step = step
        self.use_graph = use_graph
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.stream = _side_stream(device) if use_graph and device is not None else None
        if use_graph and self.stream is None:
            self.stream = _side_stream(torch.device("cuda"))

    def __call__(self) -> None:
        self.calls += 1
        if not self.use_graph:
            self.step()
            return
        if self.graph is not None:
            self.graph.replay()
            return
        main = torch.cuda.current_stream()
        self.stream.wait_stream(main)
        with torch.cuda.stream(self.stream):
            if self.calls == 1:
                self.step()
            else:
                graph = torch.cuda.CUDAGraph()
                index = _device_index(self.stream)
                graph.capture_begin(pool=_POOLS[index], capture_error_mode="thread_local")
                try:
                    self.step()
                finally:
                    graph.capture_end()
                self.graph = graph
                _POOL_ANCHORS.setdefault(index, graph)
        main.wait_stream(self.stream)
        if self.graph is not None:
            self.graph.replay()


StaticValue = Union[Tensor, Sequence[Tensor]]


class GraphCache:
    """Solve workspaces and their captured graphs, kept for later solves of the same signature.

    :func:`deqbench.core.solvers.solve` looks a workspace up by its signature: the solver and its options, the
    iterate's shape, dtype and device, the iteration count, the stop mode and the graph mode; in ``"full"`` mode
    also the function f itself (held, so its identity stays unique), because f is then part of the graph.  Reuse
    in ``"full"`` mode therefore needs the *same* callable, reading every per-solve input from buffers made by
    :meth:`static` and refreshed in place before each solve.  ``captures`` counts workspaces built, ``reuses``
    solves that replayed an existing one.  A cache belongs to one sequence of solves that never overlap in time
    (a solve nested in another's f gets a fresh workspace).
    """

    def __init__(self) -> None:
        self.workspaces: dict[Hashable, Any] = {}
        self.statics: dict[str, StaticValue] = {}
        self.captures = 0
        self.reuses = 0

    def static(self, name: str, value: StaticValue) -> StaticValue:
        """A persistent copy of ``value`` (a tensor or a tuple of tensors) under ``name``: allocated on the first
        call, overwritten in place on later ones, so a graph that reads it stays valid.  A later value of another
        structure, shape, dtype or device raises ValueError naming ``name``."""
        parts = (value,) if isinstance(value, Tensor) else tuple(value)
        held = self.statics.get(name)
        if held is None:
            copies = tuple(p.detach().clone() for p in parts)
            self.statics[name] = copies[0] if isinstance(value, Tensor) else copies
            return self.statics[name]
        held_parts = (held,) if isinstance(held, Tensor) else tuple(held)
        same = len(held_parts) == len(parts) and all(
            h.shape == p.shape and h.dtype == p.dtype and h.device == p.device for h, p in zip(held_parts, parts))
        if not same:
            raise ValueError(f"graph-cache static input {name!r} changed structure, shape, dtype or device "
                             "between solves; use a new GraphCache for new shapes")
        for h, p in zip(held_parts, parts):
            h.copy_(p.detach())
        return held
