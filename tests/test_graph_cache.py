"""Workspace reuse across solves (deqbench.core.graphs.GraphCache): same results as fresh solves, no aliasing.

On the CPU no graph is captured, but the cache still reuses the workspace buffers, so these tests check the part
that decides correctness on a GPU too: the in-place restart of iterate, solver state and residual tracker.
The graph replay itself is checked in tests/test_cuda.py.
"""

from __future__ import annotations

import pytest
import torch

from deqbench.core.deq import fixed_point
from deqbench.core.graphs import GraphCache
from deqbench.core.solvers import solve
from deqbench.inputopt.baselines import SplitLayerFn, pgd
from deqbench.models.mdeq import MDEQClassifier, MDEQConfig, InjectedLayer


def _contraction(dim: int = 12, batch: int = 4, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(dim, dim, generator=gen, dtype=torch.float64)
    weight = 0.6 * weight / torch.linalg.matrix_norm(weight, ord=2)
    bias = torch.randn(batch, dim, generator=gen, dtype=torch.float64)
    return lambda z: torch.tanh(z @ weight.T + bias), weight, bias


@pytest.mark.parametrize("method,options", [("forward", {"tau": 0.8}), ("anderson", {"m": 4}),
                                            ("anderson", {"m": 3, "kind": "I"}), ("broyden", {"memory": 5})])
def test_cached_solves_equal_fresh_solves_and_do_not_alias(method, options):
    f, _, _ = _contraction()
    starts = [torch.randn(4, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(s)) for s in range(3)]
    cache = GraphCache()
    cached = [solve(f, z0, method=method, max_iter=9, tol=0, graph_cache=cache, **options) for z0 in starts]
    fresh = [solve(f, z0, method=method, max_iter=9, tol=0, **options) for z0 in starts]
    assert (cache.captures, cache.reuses) == (1, 2)
    for a, b in zip(cached, fresh):  # bitwise: the restart leaves no trace of the previous solve
        assert torch.equal(a.z, b.z)
        assert torch.allclose(a.trace, b.trace, equal_nan=True, rtol=0, atol=0)
        assert torch.equal(a.best_iteration, b.best_iteration)
    assert not torch.equal(cached[0].z, cached[2].z)  # the first result was not overwritten by the later solves


def test_cache_separates_signatures_and_gives_nested_solves_their_own_workspace():
    f, _, _ = _contraction()
    cache = GraphCache()
    z0 = torch.zeros(4, 12, dtype=torch.float64)
    solve(f, z0, method="anderson", max_iter=6, tol=0, graph_cache=cache, m=3)
    solve(f, z0, method="anderson", max_iter=7, tol=0, graph_cache=cache, m=3)  # other iteration count
    solve(f, z0, method="anderson", max_iter=6, tol=0, graph_cache=cache, m=4)  # other solver options
    f2, _, _ = _contraction(batch=2)
    solve(f2, z0[:2], method="anderson", max_iter=6, tol=0, graph_cache=cache, m=3)  # other shape
    assert (cache.captures, cache.reuses) == (4, 0)

    inner_f, _, _ = _contraction(seed=1)

    def outer(z):  # f that itself runs a solve of the same signature with the same cache
        return 0.5 * solve(inner_f, z, method="anderson", max_iter=6, tol=0, graph_cache=cache, m=3).z

    nested = solve(outer, z0, method="anderson", max_iter=6, tol=0, graph_cache=cache, m=3)
    plain = solve(lambda z: 0.5 * solve(inner_f, z, method="anderson", max_iter=6, tol=0, m=3).z, z0,
                  method="anderson", max_iter=6, tol=0, m=3)
    assert torch.equal(nested.z, plain.z)


def test_static_buffers_are_updated_in_place_and_refuse_other_shapes():
    cache = GraphCache()
    first = cache.static("injection", (torch.ones(2, 3), torch.zeros(2, 5)))
    second = cache.static("injection", (torch.full((2, 3), 2.0), torch.ones(2, 5)))
    assert all(a is b for a, b in zip(first, second))
    assert torch.equal(first[0], torch.full((2, 3), 2.0))
    with pytest.raises(ValueError, match="'injection'"):
        cache.static("injection", (torch.ones(3, 3), torch.zeros(3, 5)))
    single = cache.static("x", torch.ones(4))
    assert cache.static("x", torch.zeros(4)) is single and single.sum() == 0


def test_fixed_point_with_cache_and_forward_fn_gives_the_same_gradient():
    f_plain, weight, bias = _contraction()
    bias = bias.clone().requires_grad_()
    cache = GraphCache()
    bias_static = cache.static("bias", bias)

    def f(z):
        return torch.tanh(z @ weight.T + bias)

    def forward_fn(z):  # the same map, reading the bias from the cache's static buffer
        return torch.tanh(z @ weight.T + bias_static)

    grads = []
    for kwargs in ({}, {"graph_cache": cache, "forward_fn": forward_fn}):
        z = fixed_point(f, torch.zeros(4, 12, dtype=torch.float64), solver="anderson", max_iter=40, tol=0,
                        backward_options={"max_iter": 40, "tol": 0}, **kwargs)
        (g,) = torch.autograd.grad(z.square().sum(), bias)
        grads.append(g)
    assert torch.allclose(grads[0], grads[1], rtol=1e-10, atol=1e-12)
    assert cache.captures == 1  # the forward and the adjoint solve share one signature and run one after the other


def test_injected_layer_is_a_split_layer_and_pgd_reuses_its_workspaces():
    torch.manual_seed(0)
    model = MDEQClassifier(MDEQConfig(channels=(4, 4), expansion=2, fuse_groups=2, head_channels=(2, 4),
                                      final_channels=8)).eval()
    images, labels = torch.rand(3, 1, 10, 10), torch.randint(0, 10, (3,))
    layer = model.layer_fn(images)
    assert isinstance(layer, InjectedLayer) and isinstance(layer, SplitLayerFn)
    fwd = {"solver": "broyden", "max_iter": 5, "tol": 0.0}
    result = pgd(layer, model.cost_fn(labels), model.z0(images), torch.zeros_like(images), steps=4, forward=fwd,
                 backward_options={"method": "broyden", "max_iter": 6, "tol": 0.0})
    # one workspace for the forward and one for the adjoint solves, each reused in the three later steps
    assert (result.info["graph_workspaces"], result.info["graph_reuses"]) == (2, 6)
    assert torch.isfinite(result.cost).all()
