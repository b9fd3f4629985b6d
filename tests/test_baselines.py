"""PGD and Adam input-optimisation baselines; projections."""

from __future__ import annotations

import pytest
import torch

from deqbench.inputopt.baselines import adam, pgd
from deqbench.inputopt.projections import L2Ball, LinfBall, make_projection
from tests.conftest import forbid_host_sync
from tests.linear_problems import linear_deq_cost, relative_error

DT = torch.float64
FAST = {"forward": {"solver": "anderson", "max_iter": 40}, "backward_options": {"method": "anderson", "max_iter": 40}}


def _zeros(problem):
    B = problem.t.shape[0]
    return torch.zeros(B, problem.A.shape[0], dtype=DT), torch.zeros(B, problem.B.shape[1], dtype=DT)


def test_adam_reaches_the_least_squares_optimum():
    problem = linear_deq_cost()
    z0, x0 = _zeros(problem)
    result = adam(problem.f, problem.cost, z0, x0, steps=400, lr=0.1, **FAST)
    assert relative_error(result.x, problem.optimal_x()) < 1e-3
    assert result.nfe == 400 * 40


def test_pgd_stays_in_the_ball_and_lowers_the_cost():
    problem = linear_deq_cost()
    z0, x0 = _zeros(problem)
    result = pgd(problem.f, problem.cost, z0, x0, steps=20, step_size=0.1, eps=0.5, **FAST)
    assert (result.x.norm(dim=1) <= 0.5 + 1e-9).all()
    assert (result.cost < result.trace_cost[:, 0]).all()
    # The returned triple is consistent: z is the equilibrium at x and cost = l(z).
    assert relative_error(result.z, problem.z_of_x(result.x)) < 1e-6
    assert torch.allclose(result.cost, problem.cost(result.z))


def test_pgd_linf_uses_sign_steps():
    problem = linear_deq_cost()
    z0, x0 = _zeros(problem)
    result = pgd(problem.f, problem.cost, z0, x0, steps=2, step_size=0.01, projection="linf", eps=1.0, **FAST)
    # A small sign step lowers the cost, so the second iterate is kept; every coordinate moved by the step.
    assert (result.best_iteration == 1).all()
    assert torch.allclose(result.x.abs(), torch.full_like(result.x, 0.01))


def test_baselines_have_no_host_sync():
    problem = linear_deq_cost()
    z0, x0 = _zeros(problem)
    with forbid_host_sync():
        pgd(problem.f, problem.cost, z0, x0, steps=3, **FAST)
        adam(problem.f, problem.cost, z0, x0, steps=3, **FAST)


def test_projection_properties():
    x = torch.randn(5, 7, dtype=DT) * 3
    l2 = L2Ball(1.0)
    p = l2(x)
    assert torch.allclose(p.norm(dim=1), torch.ones(5, dtype=DT))
    inside = 0.1 * x / x.norm(dim=1, keepdim=True)
    assert torch.equal(l2(inside), inside)
    assert torch.allclose(l2.steepest_direction(x).norm(dim=1), torch.ones(5, dtype=DT))
    linf = LinfBall(0.5)
    assert linf(x).abs().max() <= 0.5
    assert torch.equal(linf.steepest_direction(x), torch.sign(x))
    # image-shaped inputs are projected per sample
    imgs = torch.randn(3, 1, 4, 4, dtype=DT) * 5
    assert torch.allclose(l2(imgs).flatten(1).norm(dim=1), torch.ones(3, dtype=DT))


def test_projection_errors():
    with pytest.raises(ValueError, match="unknown projection 'l1'"):
        make_projection("l1", 1.0)
    with pytest.raises(ValueError, match="eps must be a number > 0"):
        make_projection("l2", -1.0)
    problem = linear_deq_cost()
    z0, x0 = _zeros(problem)
    with pytest.raises(ValueError, match=r"unknown forward option\(s\) \['iters'\]"):
        pgd(problem.f, problem.cost, z0, x0, forward={"iters": 3})
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        adam(problem.f, problem.cost, z0, x0, steps=0)
