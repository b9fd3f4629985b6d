"""Replay of a solver's per-iteration bookkeeping as a CUDA graph.

A solve alternates f (user code, run eagerly) with bookkeeping: residuals,
best-iterate tracking, the accelerator's history update and its small linear
solve.  The bookkeeping is dozens of tiny kernels whose launch cost, not
their arithmetic, dominates on a GPU.  Because it is written to run entirely
on the device, in place on buffers that live for the whole solve, and with
the iteration counter kept on the device, the same kernel sequence is valid
at every iteration: :class:`StepRunner` runs it eagerly once (warm-up),
captures it into a CUDA graph on the second call and replays that graph from
then on.  On the CPU, or with ``enabled=False``, it simply calls the step.
"""

from __future__ import annotations

from typing import Callable, Literal

import torch

GraphMode = Literal["auto", "on", "off"]


def want_graph(mode: GraphMode | bool, device: torch.device) -> bool:
    """Whether to capture: ``auto`` captures on CUDA unless a capture is already running."""
    if isinstance(mode, bool):
        mode = "on" if mode else "off"
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"cuda_graph must be 'auto', 'on', 'off' or a bool, got {mode!r}")
    if mode == "off" or device.type != "cuda":
        if mode == "on" and device.type != "cuda":
            raise ValueError("cuda_graph='on' needs CUDA tensors")
        return False
    return not torch.cuda.is_current_stream_capturing()


class StepRunner:
    """Calls ``step`` (a function of no arguments that only mutates preallocated
    tensors); on CUDA the calls after the first replay one captured graph."""

    def __init__(self, step: Callable[[], None], use_graph: bool):
        self.step = step
        self.use_graph = use_graph
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None

    def __call__(self) -> None:
        self.calls += 1
        if not self.use_graph or self.calls == 1:
            self.step()
            return
        if self.graph is None:
            self.graph = self._capture()
        self.graph.replay()

    def _capture(self) -> "torch.cuda.CUDAGraph":
        graph = torch.cuda.CUDAGraph()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            graph.capture_begin(capture_error_mode="thread_local")
            try:
                self.step()
            finally:
                graph.capture_end()
        torch.cuda.current_stream().wait_stream(side)
        return graph
