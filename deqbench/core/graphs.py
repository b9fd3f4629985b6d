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
"""

from __future__ import annotations

from typing import Callable, Literal

import torch

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
