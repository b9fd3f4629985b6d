"""fixed_point: gradients by IFT, phantom and Neumann against closed forms."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from deqbench.core.deq import fixed_point
from tests.conftest import forbid_host_sync

DT = torch.float64


def _problem(radius: float = 0.5, batch: int = 3, dim: int = 8):
    W = torch.randn(dim, dim, dtype=DT)
    W = (radius * W / torch.linalg.matrix_norm(W, ord=2)).requires_grad_()
    x = torch.randn(batch, dim, dtype=DT, requires_grad=True)
    c = torch.randn(batch, dim, dtype=DT)

    def f(z):
        return z @ W.T + x

    def loss(z):
        return (z * c).sum() + z.pow(2).sum()

    z_closed = torch.linalg.solve(torch.eye(dim, dtype=DT) - W, x.T).T
    reference = torch.autograd.grad(loss(z_closed), [W, x])
    return f, loss, W, x, reference


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("solver", ["anderson", "broyden", "forward"])
@pytest.mark.parametrize("adjoint_method", ["anderson", "broyden", "forward"])
def test_ift_gradient_matches_closed_form(solver, adjoint_method):
    f, loss, W, x, (gW, gx) = _problem()
    z = fixed_point(
        f, torch.zeros_like(x), solver=solver, max_iter=200, tol=1e-12,
        backward="ift", backward_options={"method": adjoint_method, "max_iter": 200, "tol": 1e-12},
    )
    dW, dx = torch.autograd.grad(loss(z), [W, x])
    assert _rel(dW, gW) < 1e-4 and _rel(dx, gx) < 1e-4


def test_value_is_the_fixed_point_in_every_mode():
    f, loss, W, x, _ = _problem()
    reference = fixed_point(f, torch.zeros_like(x), max_iter=100, tol=1e-12, backward="none")
    for mode, opts in [("ift", {}), ("phantom", {"steps": 3}), ("neumann", {"order": 2})]:
        z = fixed_point(f, torch.zeros_like(x), max_iter=100, tol=1e-12, backward=mode, backward_options=opts)
        assert torch.equal(z.detach(), reference)


def test_phantom_gradient_approaches_ift_as_k_grows():
    errors = []
    for steps in (1, 4, 16, 64):
        torch.manual_seed(0)
        f, loss, W, x, (gW, gx) = _problem(radius=0.5)
        z = fixed_point(f, torch.zeros_like(x), max_iter=100, tol=1e-12, backward="phantom", backward_options={"steps": steps, "tau": 1.0})
        dW, dx = torch.autograd.grad(loss(z), [W, x])
        errors.append(_rel(dW, gW) + _rel(dx, gx))
    assert errors == sorted(errors, reverse=True)
    assert errors[-1] < 1e-8


def test_neumann_gradient_approaches_ift_as_order_grows():
    errors = []
    for order in (0, 1, 4, 16, 60):
        torch.manual_seed(0)
        f, loss, W, x, (gW, gx) = _problem(radius=0.5)
        z = fixed_point(f, torch.zeros_like(x), max_iter=100, tol=1e-12, backward="neumann", backward_options={"order": order})
        dW, dx = torch.autograd.grad(loss(z), [W, x])
        errors.append(_rel(dW, gW) + _rel(dx, gx))
    assert errors == sorted(errors, reverse=True)
    assert errors[-1] < 1e-10


def test_neumann_order_one_is_identity_plus_transpose_jacobian():
    """T = 1 is (Implicit)^2's one-step backward: dL/dx = (I + J^T) g for f = W z + x."""
    f, loss, W, x, _ = _problem()
    z = fixed_point(f, torch.zeros_like(x), max_iter=100, tol=1e-12, backward="neumann", backward_options={"order": 1})
    g = torch.autograd.grad(loss(z), z, retain_graph=True)[0]
    (dx,) = torch.autograd.grad(loss(z), x)
    assert torch.allclose(dx, g + g @ W.detach(), atol=1e-10)


def test_gradient_attaches_by_grad_mode_not_training_flag():
    layer = nn.Linear(5, 5).double()
    with torch.no_grad():
        layer.weight.mul_(0.3)
    layer.eval()
    x = torch.randn(2, 5, dtype=DT)
    z = fixed_point(lambda z: torch.tanh(layer(z) + x), torch.zeros_like(x))
    assert z.requires_grad
    z.sum().backward()
    assert layer.weight.grad is not None and torch.isfinite(layer.weight.grad).all()
    with torch.no_grad():
        z = fixed_point(lambda z: torch.tanh(layer(z) + x), torch.zeros_like(x))
    assert not z.requires_grad


def test_tuple_state_gradients_match_unrolled_autograd():
    torch.manual_seed(4)
    A = (0.2 * torch.randn(4, 4, dtype=DT)).requires_grad_()
    Bm = (0.2 * torch.randn(3, 4, dtype=DT)).requires_grad_()
    x = torch.randn(2, 4, dtype=DT, requires_grad=True)

    def f(state):
        a, b = state
        return (torch.tanh(a @ A.T + 0.1 * b.sum(1, keepdim=True) + x), torch.tanh(a @ Bm.T))

    z0 = (torch.zeros(2, 4, dtype=DT), torch.zeros(2, 3, dtype=DT))
    za, zb = fixed_point(f, z0, max_iter=100, tol=1e-13, backward_options={"tol": 1e-13, "max_iter": 100})
    got = torch.autograd.grad(za.pow(2).sum() + zb.sum(), [A, Bm, x])
    state = z0
    for _ in range(200):  # unrolled reference: autograd through a converged forward iteration
        state = f(state)
    ref = torch.autograd.grad(state[0].pow(2).sum() + state[1].sum(), [A, Bm, x])
    for g, r in zip(got, ref):
        assert _rel(g, r) < 1e-6


def test_adjoint_warm_start_from_solution_needs_fewer_iterations():
    f, loss, W, x, _ = _problem(radius=0.8)
    cold, warm = {}, {}
    z = fixed_point(f, torch.zeros_like(x), max_iter=100, tol=1e-12, backward_options={"tol": 1e-10, "max_iter": 200, "check_every": 1}, stats=cold)
    g = torch.autograd.grad(loss(z), z, retain_graph=True)[0]
    torch.autograd.grad(loss(z), [W, x])
    adjoint = torch.linalg.solve(torch.eye(8, dtype=DT) - W.detach().T, g.T).T
    z = fixed_point(f, torch.zeros_like(x), max_iter=100, tol=1e-12, backward_options={"tol": 1e-10, "max_iter": 200, "check_every": 1}, adjoint_init=adjoint, stats=warm)
    torch.autograd.grad(loss(z), [W, x])
    assert warm["backward"].nfe < cold["backward"].nfe
    assert warm["forward"].converged.all()


def test_backward_solve_has_no_host_sync_with_fixed_iterations():
    f, loss, W, x, _ = _problem()
    with forbid_host_sync():
        z = fixed_point(f, torch.zeros_like(x), max_iter=30, tol=0, backward_options={"max_iter": 30, "tol": 0})
        torch.autograd.grad(loss(z), [W, x])


def test_backward_option_errors_name_the_key():
    f = lambda z: 0.5 * z  # noqa: E731
    z0 = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="backward must be"):
        fixed_point(f, z0, backward="adjoint")
    with pytest.raises(ValueError, match=r"unknown backward option\(s\) \['order'\] for backward='phantom'"):
        fixed_point(f, z0, backward="phantom", backward_options={"order": 2})
    with pytest.raises(ValueError, match="neumann order"):
        fixed_point(f, z0, backward="neumann", backward_options={"order": -1})
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['mem'\] for solver 'anderson'"):
        fixed_point(f, z0, backward_options={"mem": 3})
