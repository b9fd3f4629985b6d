"""Benchmark plumbing: device/size selection, synchronised timing and side-by-side ratios.

Every benchmark records its median under (group, name).  At the end of the
session the ratios within each group are printed (and written as JSON to
``$DEQBENCH_BENCH_JSON`` if set), so the speed claims are always ratios of
timings taken in the same process on the same device.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from typing import Any, Callable

import pytest
import torch

RESULTS: dict[str, dict[str, float]] = defaultdict(dict)
RATIOS: list[tuple[str, str, str]] = []  # (group, numerator, denominator)


def devices() -> list[str]:
    found = ["cpu"]
    if torch.cuda.is_available():
        found.append("cuda")
    requested = os.environ.get("DEQBENCH_BENCH_DEVICES")
    if requested:
        found = [d for d in requested.split(",") if d in found]
    return found


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


@pytest.fixture(params=devices())
def device(request) -> str:
    if request.param == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = True
    return request.param


def expect_ratio(group: str, numerator: str, denominator: str) -> None:
    if (group, numerator, denominator) not in RATIOS:
        RATIOS.append((group, numerator, denominator))


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
    if stats is not None and getattr(stats, "stats", None) is not None:
        RESULTS[group][name] = stats.stats.median
    return out


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    rows = []
    for group, num, den in RATIOS:
        if num in RESULTS[group] and den in RESULTS[group]:
            a, b = RESULTS[group][num], RESULTS[group][den]
            rows.append({"group": group, "numerator": num, "denominator": den, "numerator_ms": a * 1e3, "denominator_ms": b * 1e3, "ratio": a / b})
    if not rows:
        return
    terminalreporter.section("deqbench ratios (same process, same device)")
    for r in rows:
        terminalreporter.write_line(
            f"{r['group']:<42} {r['numerator']:>14} / {r['denominator']:<14} = {r['ratio']:7.2f}x"
            f"   ({r['numerator_ms']:.2f} ms / {r['denominator_ms']:.2f} ms)"
        )
    out = os.environ.get("DEQBENCH_BENCH_JSON")
    if out:
        info = {"torch": torch.__version__, "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
        with open(out, "w") as fh:
            json.dump({"environment": info, "ratios": rows, "medians_s": RESULTS}, fh, indent=2)
