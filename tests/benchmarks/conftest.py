"""Benchmark plumbing: device/size selection, synchronised timing and side-by-side ratios.

Every benchmark records its median under (group, name) and declares the ratios it takes part in with
:func:`expect_ratio`.  A ratio is known once both members ran; it is then written into both members'
``extra_info["ratios"]`` (so pytest-benchmark's ``--benchmark-json`` / ``--benchmark-autosave`` files hold it).  At
the end of the session the ratios are printed (and written as JSON to ``$DEQBENCH_BENCH_JSON`` if set), so the
speed claims are always ratios of timings taken in the same process on the same device.  The bookkeeping, the
report and the check against ``bench/ratio_baseline.json`` (``--benchmark-compare-ratios``,
``--benchmark-save-ratios``) live in :mod:`tests.benchmarks.ratio_plugin`.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import pytest
import torch

from tests.benchmarks import ratio_plugin


def devices() -> list[str]:
    """The devices to benchmark: the CPU, CUDA when present, narrowed by $DEQBENCH_BENCH_DEVICES (e.g. "cuda")."""
    found = ["cpu"]
    if torch.cuda.is_available():
        found.append("cuda")
    requested = os.environ.get("DEQBENCH_BENCH_DEVICES")
    if requested:
        found = [d for d in requested.split(",") if d in found]
    return found


def sync(device: str) -> None:
    """Wait for queued CUDA work, so a timed call includes it."""
    if device == "cuda":
        torch.cuda.synchronize()


@pytest.fixture(params=devices())
def device(request) -> str:
    """Each benchmark once per device; on CUDA without TF32 (the numbers are FP32) and with cuDNN autotuning."""
    if request.param == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = True
    return request.param


def expect_ratio(group: str, numerator: str, denominator: str, method: str | None = None) -> None:
    """Declare the ratio ``numerator / denominator`` of two benchmarks of ``group``.

    ``method`` is the side the ratio is about (default: the numerator, as in ``anderson / bare``); name the
    denominator where the claim is that it is the faster one (``pgd-20 / jiio-80``, method ``jiio-80``).  The
    baseline check calls a ratio regressed when it moves the way that makes the method slower.
    """
    ratio_plugin.current().declare(group, numerator, denominator, method)


def run_benchmark(benchmark, group: str, name: str, fn: Callable[[], Any], device: str, rounds: int, warmup: int = 1) -> Any:
    """Time ``fn`` with device synchronisation and record its median as ``group/name``."""

    def timed() -> Any:
        out = fn()
        sync(device)
        return out

    benchmark.group = group
    benchmark.extra_info["device"] = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    out = benchmark.pedantic(timed, rounds=rounds, warmup_rounds=warmup, iterations=1)
    stats = getattr(benchmark, "stats", None)
    if stats is not None and getattr(stats, "stats", None) is not None:  # None under --benchmark-disable
        device_class = "cuda" if device.startswith("cuda") else "cpu"
        ratio_plugin.current().record(group, name, stats.stats.median, device_class, benchmark.extra_info)
    return out


def pytest_addoption(parser: pytest.Parser, pluginmanager: pytest.PytestPluginManager) -> None:
    """Register the ratio plugin (its options, report and baseline check) unless it is registered already.

    A top-level conftest may list it in ``pytest_plugins`` (needed for its options to be accepted by a bare
    ``pytest`` run from the repository root, where this conftest is loaded only after the command line is parsed);
    ``pytest tests/benchmarks ...`` loads this conftest early enough.
    """
    if not pluginmanager.has_plugin(ratio_plugin.__name__):
        pluginmanager.register(ratio_plugin, ratio_plugin.__name__)
