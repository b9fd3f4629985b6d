"""JIIO: closed-form optimum on a linear DEQ, eq. (19) gradients, projections, policies."""

from __future__ import annotations

import pytest
import torch

from deqbench.inputopt.jiio import SELECTION_POLICIES, jiio
from tests.conftest import forbid_host_sync
from tests.linear_problems import linear_deq_cost, relative_error

DT = torch.float64


def _run(problem, **kw):
    B = problem.t.shape[0]
    options = dict(max_iter=300, alpha=(0.8, 0.6, 0.05), solver_options={"m": 20, "kind": "I"})
    options.update(kw)
    return jiio(problem.f, problem.cost, torch.zeros(B, problem.A.shape[0], dtype=DT), torch.zeros(B, problem.B.shape[1], dtype=DT), **options)


@pytest.mark.parametrize(
    "method,solver_options",
    [("anderson", {"m": 20, "kind": "I"}), ("anderson", {"m": 20, "kind": "II"}), ("broyden", {"memory": 60})],
)
def test_optimal_input_matches_least_squares(method, solver_options):
    problem = linear_deq_cost()
    with torch.no_grad():
        result = _run(problem, method=method, solver_options=solver_options)
    assert relative_error(result.x, problem.optimal_x()) < 1e-3
    assert relative_error(result.z, problem.z_of_x(problem.optimal_x())) < 1e-3
    # mu* solves the adjoint system (I - A)^T mu = C^T (C z* - t).
    z = result.z
    grad_l = (z @ problem.C.T - problem.t) @ problem.C
    eye = torch.eye(problem.A.shape[0], dtype=DT)
    mu_closed = torch.linalg.solve(eye - problem.A.T, grad_l.T).T
    assert relative_error(result.mu, mu_closed) < 1e-3


def _closed_form_param_grads(problem, x_star, scale):
    params = [p.detach().clone().requires_grad_() for p in (problem.A, problem.B, problem.b, problem.C)]
    A, Bm, b, C = params
    eye = torch.eye(A.shape[0], dtype=DT)
    z = torch.linalg.solve(eye - A, (x_star @ Bm.T + b).T).T
    loss = scale * 0.5 * (z @ C.T - problem.t).pow(2).sum(1)
    return torch.autograd.grad(loss.sum(), params)


@pytest.mark.parametrize("backward", ["mu", "ift"])
@pytest.mark.parametrize("scale", [1.0, -1.0 / 4])  # sum of costs; -mean (the adversarial sign, eq. 26)
def test_eq19_parameter_gradient_matches_closed_form(backward, scale):
    problem = linear_deq_cost()
    for name in ("A", "B", "b", "C"):
        getattr(problem, name).requires_grad_()
    result = _run(problem, backward=backward, backward_options={"max_iter": 50} if backward == "ift" else {})
    got = torch.autograd.grad((scale * problem.cost(result.z)).sum(), [problem.A, problem.B, problem.b, problem.C])
    ref = _closed_form_param_grads(problem, result.x.detach(), scale)
    for g, r in zip(got, ref):
        assert float((g - r).norm() / r.norm()) < 1e-4


def test_ift_backward_handles_an_outer_loss_that_is_not_the_cost():
    problem = linear_deq_cost()
    problem.A.requires_grad_()
    result = _run(problem, backward="ift", backward_options={"max_iter": 60, "tol": 1e-12})
    got = torch.autograd.grad(result.z.pow(3).sum(), problem.A)[0]
    A = problem.A.detach().clone().requires_grad_()
    eye = torch.eye(A.shape[0], dtype=DT)
    z = torch.linalg.solve(eye - A, (result.x.detach() @ problem.B.T + problem.b).T).T
    ref = torch.autograd.grad(z.pow(3).sum(), A)[0]
    assert float((got - ref).norm() / ref.norm()) < 1e-6


@pytest.mark.parametrize("projection,eps", [("l2", 0.3), ("linf", 0.05)])
@pytest.mark.parametrize("normalized_step", [False, True])
def test_projection_keeps_input_in_the_ball(projection, eps, normalized_step):
    problem = linear_deq_cost()
    with torch.no_grad():
        result = _run(problem, max_iter=60, projection=projection, eps=eps, normalized_step=normalized_step)
    x = result.x
    norms = x.norm(dim=1) if projection == "l2" else x.abs().amax(dim=1)
    assert (norms <= eps * (1 + 1e-9)).all()
    # The unconstrained optimum lies outside these balls, so the constraint is active.
    assert (norms >= 0.5 * eps).all()


def test_diverging_sample_does_not_change_the_others():
    problem = linear_deq_cost(batch=4)
    with torch.no_grad():
        clean = _run(problem, max_iter=40)

        def f_nan(z, x):
            out = problem.f(z, x)
            out[1] = float("nan")
            return out

        poisoned = jiio(f_nan, problem.cost, torch.zeros(4, 12, dtype=DT), torch.zeros(4, 3, dtype=DT),
                        max_iter=40, alpha=(0.8, 0.6, 0.05), solver_options={"m": 20, "kind": "I"})
    keep = [0, 2, 3]
    assert torch.equal(poisoned.x[keep], clean.x[keep])
    assert torch.equal(poisoned.cost[keep], clean.cost[keep])
    assert torch.isfinite(poisoned.x).all()


def test_tuple_latent_and_state():
    problem = linear_deq_cost(batch=2)

    def f(z, x):
        za, zb = z
        out = problem.f(torch.cat((za, zb), 1), x[0])
        return out[:, :5], out[:, 5:]

    def cost(z):
        return problem.cost(torch.cat(z, 1))

    z0 = (torch.zeros(2, 5, dtype=DT), torch.zeros(2, 7, dtype=DT))
    with torch.no_grad():
        result = jiio(f, cost, z0, (torch.zeros(2, 3, dtype=DT),), max_iter=300, alpha=(0.8, 0.6, 0.05), solver_options={"m": 20, "kind": "I"})
    assert isinstance(result.z, tuple) and isinstance(result.x, tuple)
    assert relative_error(result.x[0], problem.optimal_x()) < 1e-3


@pytest.mark.parametrize("policy", sorted(SELECTION_POLICIES))
def test_selection_policies_return_recorded_iterates(policy):
    problem = linear_deq_cost()
    with torch.no_grad():
        result = _run(problem, max_iter=50, selection=policy)
    idx = result.best_iteration
    assert torch.equal(result.cost, result.trace_cost.gather(1, idx.unsqueeze(1)).squeeze(1))
    assert torch.equal(result.residual, result.trace_residual.gather(1, idx.unsqueeze(1)).squeeze(1))
    if policy == "lowest_cost":
        assert torch.equal(result.cost, result.trace_cost.min(1).values)
    if policy == "lowest_residual":
        assert torch.equal(result.residual, result.trace_residual.min(1).values)
    if policy == "last":
        assert (idx == 49).all()


def test_alpha_x_schedule_switches_step_size():
    problem = linear_deq_cost()
    with torch.no_grad():
        result = _run(problem, max_iter=10, method="none", alpha=(0.8, 0.6, 1e-3), alpha_x_late=0.5, alpha_x_switch=5)
    cfg = result.info["config"]
    assert [cfg.alpha_x_at(k) for k in (0, 4, 5, 9)] == [1e-3, 1e-3, 0.5, 0.5]


@pytest.mark.parametrize("where", ["trajectory", "final"])
def test_jacobian_regularisation_is_a_differentiable_estimate(where):
    problem = linear_deq_cost()
    problem.A.requires_grad_()
    torch.manual_seed(0)
    result = _run(problem, max_iter=30, jac_reg=where, jac_reg_probes=400)
    # For f = A z + ..., ||J||_F^2 / numel = ||A||_F^2 / Dz.
    expected = problem.A.detach().pow(2).sum() / problem.A.shape[0]
    assert result.jac_loss is not None and result.jac_loss.requires_grad
    assert abs(float(result.jac_loss.detach()) - float(expected)) < 0.15 * float(expected)
    (grad,) = torch.autograd.grad(result.jac_loss, problem.A)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_no_host_sync_inside_jiio_loop():
    problem = linear_deq_cost()
    with forbid_host_sync(), torch.no_grad():
        _run(problem, max_iter=20, projection="l2", eps=0.5, normalized_step=True, jac_reg=None)


def test_bad_options_are_named():
    problem = linear_deq_cost()
    with pytest.raises(ValueError, match="alpha a_z"):
        _run(problem, alpha=(1.5, 0.6, 0.1))
    with pytest.raises(ValueError, match="unknown selection policy 'best'"):
        _run(problem, selection="best")
    with pytest.raises(ValueError, match="alpha_x_late and alpha_x_switch"):
        _run(problem, alpha_x_late=0.1)
    with pytest.raises(ValueError, match="projection 'l2' needs eps"):
        _run(problem, projection="l2")
    with pytest.raises(ValueError, match="bad JIIO option"):
        _run(problem, memory=3)
    with pytest.raises(ValueError, match="method must be"):
        _run(problem, method="lbfgs")
