"""GPU checks (skipped without CUDA): graph replay equals eager execution, and no host syncs."""

from __future__ import annotations

import pytest
import torch

from deqbench.deq import fixed_point
from deqbench.jiio import jiio
from deqbench.models.small import ConvLayer, SmallDEQClassifier
from deqbench.solvers import solve

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _conv_problem():
    layer = ConvLayer(16, expansion=2).cuda()
    injection = torch.randn(6, 16, 12, 12, device="cuda")
    return (lambda z: layer(z, injection)), torch.zeros_like(injection)


@pytest.mark.parametrize(
    "method,options",
    [("forward", {}), ("anderson", {"m": 5}), ("anderson", {"m": 20, "kind": "I"}), ("anderson", {"m": 40, "kind": "II"}), ("broyden", {"memory": 8})],
)
def test_graph_replay_matches_eager(method, options):
    torch.backends.cudnn.deterministic = True
    f, z0 = _conv_problem()
    eager = solve(f, z0, method=method, max_iter=25, tol=0, cuda_graph="off", **options)
    graph = solve(f, z0, method=method, max_iter=25, tol=0, cuda_graph="on", **options)
    assert torch.allclose(graph.z, eager.z, rtol=1e-4, atol=1e-5)
    assert torch.allclose(graph.trace, eager.trace, rtol=1e-3, atol=1e-6)
    assert torch.equal(graph.best_iteration, eager.best_iteration)


def test_no_sync_in_solve_and_backward():
    f, z0 = _conv_problem()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.enable_grad():
            z = fixed_point(f, z0.requires_grad_(False), max_iter=20, tol=0, backward_options={"max_iter": 20, "tol": 0})
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert z.shape == z0.shape


def test_jiio_graph_matches_eager_and_does_not_sync():
    torch.backends.cudnn.deterministic = True
    model = SmallDEQClassifier(channels=8).cuda()
    images = torch.rand(5, 1, 14, 14, device="cuda")
    labels = torch.randint(0, 10, (5,), device="cuda")
    kwargs = dict(max_iter=30, alpha=(0.8, 0.6, 0.6), alpha_x_late=0.2, alpha_x_switch=20, solver_options={"m": 10, "kind": "I"},
                  projection="l2", eps=1.0, normalized_step=True)
    with torch.no_grad():
        eager = jiio(model.layer_fn(images), model.cost_fn(labels), model.z0(images), torch.zeros_like(images), cuda_graph="off", **kwargs)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            graph = jiio(model.layer_fn(images), model.cost_fn(labels), model.z0(images), torch.zeros_like(images), cuda_graph="on", **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert torch.allclose(graph.x, eager.x, rtol=1e-3, atol=1e-4)
    assert torch.allclose(graph.cost, eager.cost, rtol=1e-3, atol=1e-4)
