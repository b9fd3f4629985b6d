"""Solver overhead: an N-iteration solve against N bare evaluations of the same f."""

from __future__ import annotations

import pytest
import torch

from deqbench.models.small import ConvLayer, MLPLayer
from deqbench.core.solvers import solve
from tests.benchmarks.conftest import expect_ratio, run_benchmark

N_ITER = 30


def _mlp(device: str):
    batch, dim = (256, 1024) if device == "cuda" else (64, 256)
    layer = MLPLayer(dim, dim).to(device)
    x = torch.randn(batch, dim, device=device)
    injection = layer.U(x)
    W = layer.W
    f = lambda z: torch.tanh(W(z) + injection)  # noqa: E731
    return f, torch.zeros(batch, dim, device=device), f"mlp B{batch} D{dim}"


def _conv(device: str):
    batch, channels, size = (96, 24, 28) if device == "cuda" else (8, 16, 14)
    layer = ConvLayer(channels, expansion=5, groups=4).to(device)
    injection = torch.randn(batch, channels, size, size, device=device)
    f = lambda z: layer(z, injection)  # noqa: E731
    return f, torch.zeros_like(injection), f"conv B{batch} C{channels} {size}x{size}"


PROBLEMS = {"mlp": _mlp, "conv": _conv}
METHODS = {"forward": {}, "anderson": {"m": 6}, "broyden": {"memory": 30}}


@pytest.mark.parametrize("problem", sorted(PROBLEMS))
@pytest.mark.parametrize("method", ["bare"] + sorted(METHODS))
def test_solver_overhead(benchmark, device, problem, method):
    f, z0, label = PROBLEMS[problem](device)
    group = f"overhead {label} {device} x{N_ITER}"
    if method == "bare":

        def run():
            with torch.no_grad():
                z = z0
                for _ in range(N_ITER):
                    z = f(z)
            return z

    else:
        expect_ratio(group, method, "bare")

        def run():
            return solve(f, z0, method=method, max_iter=N_ITER, tol=0, **METHODS[method])

    rounds = 20 if device == "cuda" else 5
    run_benchmark(benchmark, group, method, run, device, rounds=rounds, warmup=2)
