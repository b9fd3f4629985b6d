"""GPU checks (skipped without CUDA): graph replay equals eager execution, and no host syncs."""

from __future__ import annotations

import pytest
import torch

from deqbench.core.deq import fixed_point
from deqbench.inputopt.jiio import jiio
from deqbench.models.small import ConvLayer, SmallDEQClassifier
from deqbench.core.solvers import solve

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
    graph = solve(f, z0, method=method, max_iter=25, tol=0, cuda_graph="auto", **options)
    full = solve(f, z0, method=method, max_iter=25, tol=0, cuda_graph="full", **options)
    assert torch.allclose(full.z, eager.z, rtol=1e-4, atol=1e-5)
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
            graph = jiio(model.layer_fn(images), model.cost_fn(labels), model.z0(images), torch.zeros_like(images), cuda_graph="auto", **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert torch.allclose(graph.x, eager.x, rtol=1e-3, atol=1e-4)
    assert torch.allclose(graph.cost, eager.cost, rtol=1e-3, atol=1e-4)


def test_full_capture_matches_eager_for_mdeq_solve_and_jiio():
    from deqbench.models.mdeq import MDEQClassifier, MDEQConfig

    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    model = MDEQClassifier(MDEQConfig(channels=(8, 8), expansion=2, fuse_groups=4, head_channels=(4, 8), final_channels=32)).cuda().eval()
    images = torch.rand(6, 1, 12, 12, device="cuda")
    labels = torch.randint(0, 10, (6,), device="cuda")
    with torch.no_grad():
        inj = model.inject(images)
        results = [solve(lambda z: model.layer(z, inj), model.z0(images), method="broyden", max_iter=12, tol=0, cuda_graph=m) for m in ("off", "full")]
    for a, b in zip(results[0].z, results[1].z):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)
    kwargs = dict(max_iter=20, alpha=(0.8, 0.6, 0.6), alpha_x_late=0.2, alpha_x_switch=10, solver_options={"m": 8, "kind": "I"},
                  projection="l2", eps=1.0, normalized_step=True)
    with torch.no_grad():
        eager = jiio(model.layer_fn(images), model.cost_fn(labels), model.z0(images), torch.zeros_like(images), cuda_graph="off", **kwargs)
        full = jiio(model.layer_fn(images), model.cost_fn(labels), model.z0(images), torch.zeros_like(images), cuda_graph="full", **kwargs)
    assert torch.allclose(full.x, eager.x, rtol=1e-3, atol=1e-4)
    assert torch.allclose(full.trace_cost, eager.trace_cost, rtol=1e-3, atol=1e-4)


def test_repeated_graph_solves_do_not_leak_memory():
    f, z0 = _conv_problem()
    for _ in range(3):
        solve(f, z0, method="anderson", max_iter=10, tol=0, cuda_graph="full", m=5)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated(), torch.cuda.memory_reserved()
    for _ in range(50):
        solve(f, z0, method="anderson", max_iter=10, tol=0, cuda_graph="full", m=5)
        solve(f, z0, method="broyden", max_iter=10, tol=0, cuda_graph="auto", memory=5)
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() - before[0] < 64 * 2**20
    assert torch.cuda.memory_reserved() - before[1] < 64 * 2**20


def test_full_capture_in_pgd_with_implicit_backward():
    from deqbench.inputopt.baselines import pgd
    from deqbench.models.mdeq import MDEQClassifier, MDEQConfig

    model = MDEQClassifier(MDEQConfig(channels=(8, 8), expansion=2, fuse_groups=4, head_channels=(4, 8), final_channels=32)).cuda().eval()
    images = torch.rand(6, 1, 12, 12, device="cuda")
    labels = torch.randint(0, 10, (6,), device="cuda")
    out = {}
    for mode in ("off", "full"):
        fwd = {"solver": "broyden", "max_iter": 8, "tol": 0.0, "cuda_graph": mode}
        bwd = {"method": "broyden", "max_iter": 8, "tol": 0.0, "cuda_graph": mode}
        out[mode] = pgd(model.layer_fn(images), model.cost_fn(labels), model.z0(images), torch.zeros_like(images),
                        steps=3, forward=fwd, backward_options=bwd)
    assert torch.allclose(out["full"].x, out["off"].x, rtol=1e-3, atol=1e-4)
    assert torch.allclose(out["full"].cost, out["off"].cost, rtol=1e-3, atol=1e-4)
    # the forward graph (f included, reading the static injection) and the adjoint's bookkeeping graph are each
    # captured once and replayed in the two later steps
    info = out["full"].info
    assert info["split_injection"] and (info["graph_workspaces"], info["graph_reuses"]) == (2, 4)


@pytest.mark.parametrize("mode", ["auto", "full"])
def test_graph_cache_replays_match_fresh_solves_without_syncs(mode):
    from deqbench.core.graphs import GraphCache

    torch.backends.cudnn.deterministic = True
    layer = ConvLayer(16, expansion=2).cuda()
    cache = GraphCache()
    injection = cache.static("injection", torch.randn(6, 16, 12, 12, device="cuda"))

    def f(z):  # one callable reading the static injection: a "full" graph of it may be replayed
        return layer(z, injection)

    fresh, cached = [], []
    for seed in range(3):
        new_injection = torch.randn(6, 16, 12, 12, device="cuda", generator=torch.Generator("cuda").manual_seed(seed))
        z0 = torch.zeros_like(new_injection)
        fresh.append(solve(lambda z: layer(z, new_injection), z0, method="anderson", max_iter=12, tol=0,
                           cuda_graph="off", m=5))
        cache.static("injection", new_injection)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            cached.append(solve(f, z0, method="anderson", max_iter=12, tol=0, cuda_graph=mode, graph_cache=cache, m=5))
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert (cache.captures, cache.reuses) == (1, 2)
    for a, b in zip(cached, fresh):
        assert torch.allclose(a.z, b.z, rtol=1e-4, atol=1e-5)
        assert torch.equal(a.best_iteration, b.best_iteration)


def test_full_graph_of_another_f_is_not_replayed():
    from deqbench.core.graphs import GraphCache

    torch.backends.cudnn.deterministic = True
    f1, z0 = _conv_problem()
    f2, _ = _conv_problem()
    cache = GraphCache()
    first = solve(f1, z0, method="broyden", max_iter=10, tol=0, cuda_graph="full", graph_cache=cache, memory=5)
    second = solve(f2, z0, method="broyden", max_iter=10, tol=0, cuda_graph="full", graph_cache=cache, memory=5)
    expected = solve(f2, z0, method="broyden", max_iter=10, tol=0, cuda_graph="off", memory=5)
    assert (cache.captures, cache.reuses) == (2, 0)
    assert torch.allclose(second.z, expected.z, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(first.z, second.z)


def test_graph_cache_solves_do_not_leak_memory():
    from deqbench.core.graphs import GraphCache

    f, z0 = _conv_problem()
    cache = GraphCache()
    for _ in range(3):
        solve(f, z0, method="anderson", max_iter=10, tol=0, cuda_graph="full", graph_cache=cache, m=5)
        solve(f, z0, method="broyden", max_iter=10, tol=0, cuda_graph="auto", graph_cache=cache, memory=5)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated(), torch.cuda.memory_reserved()
    for _ in range(50):
        solve(f, z0, method="anderson", max_iter=10, tol=0, cuda_graph="full", graph_cache=cache, m=5)
        solve(f, z0, method="broyden", max_iter=10, tol=0, cuda_graph="auto", graph_cache=cache, memory=5)
    torch.cuda.synchronize()
    assert cache.captures == 2
    assert torch.cuda.memory_allocated() - before[0] < 16 * 2**20
    assert torch.cuda.memory_reserved() - before[1] < 16 * 2**20
