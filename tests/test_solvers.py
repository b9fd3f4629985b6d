"""Fixed-point solvers: closed-form fixed points, batching, dtypes, NaN isolation, no host syncs."""

from __future__ import annotations

import math

import pytest
import torch

from deqbench.core.solvers import SOLVERS, solve
from tests.conftest import forbid_host_sync
from tests.linear_problems import affine_problem, relative_error

METHODS = [
    ("forward", {}),
    ("forward", {"tau": 0.7}),
    ("anderson", {"m": 5, "kind": "II"}),
    ("anderson", {"m": 5, "kind": "I"}),
    ("anderson", {"m": 5, "beta": 0.8}),
    ("broyden", {"memory": 10}),
    ("broyden", {"memory": 10, "when_full": "overwrite"}),
]


@pytest.mark.parametrize("method,options", METHODS)
@pytest.mark.parametrize("dtype,bound", [(torch.float64, 1e-5), (torch.float32, 1e-4)])
def test_affine_contraction_reaches_closed_form(method, options, dtype, bound):
    problem = affine_problem(batch=4, dim=20, radius=0.9, dtype=dtype)
    tol = 1e-10 if dtype == torch.float64 else 1e-6
    result = solve(problem.f, torch.zeros_like(problem.b), method=method, max_iter=400, tol=tol, **options)
    assert relative_error(result.z, problem.solution()) < bound
    assert result.converged.all()
    assert result.z.dtype == dtype and result.z.shape == problem.b.shape


def test_accelerated_solvers_beat_forward_iteration_on_hard_problem():
    torch.manual_seed(1)
    B, D = 3, 60
    Q, _ = torch.linalg.qr(torch.randn(B, D, D, dtype=torch.float64))
    eig = torch.rand(B, D, dtype=torch.float64) * 1.96 - 0.98
    A = Q @ torch.diag_embed(eig) @ Q.transpose(1, 2)
    b = torch.randn(B, D, dtype=torch.float64)

    def f(z):
        return torch.bmm(A, z.unsqueeze(2)).squeeze(2) + b

    nfe = {}
    for method, opts in [("forward", {}), ("anderson", {"m": 20}), ("broyden", {"memory": 40})]:
        nfe[method] = solve(f, torch.zeros_like(b), method=method, max_iter=2000, tol=1e-8, check_every=1, **opts).nfe
    assert nfe["anderson"] < nfe["forward"] / 3
    assert nfe["broyden"] < nfe["forward"] / 3


def test_tol_zero_runs_exactly_max_iter_and_trace_is_full():
    problem = affine_problem(dtype=torch.float64)
    result = solve(problem.f, torch.zeros_like(problem.b), method="anderson", max_iter=37, tol=0)
    assert result.nfe == 37
    assert result.trace.shape == (4, 37)
    assert torch.isfinite(result.trace).all()
    # The reported residual is the lowest one in the trace.
    assert torch.allclose(result.residual, result.trace.min(dim=1).values)


def test_early_stop_only_at_check_points():
    problem = affine_problem(dtype=torch.float64, radius=0.5)
    result = solve(problem.f, torch.zeros_like(problem.b), method="forward", max_iter=500, tol=1e-6, check_every=7)
    assert result.nfe % 7 == 0 and result.nfe < 500
    assert torch.isnan(result.trace[:, result.nfe :]).all()


@pytest.mark.parametrize("method", sorted(SOLVERS))
def test_no_host_sync_inside_iteration(method):
    problem = affine_problem(dtype=torch.float32)
    z0 = torch.zeros_like(problem.b)
    with forbid_host_sync():
        solve(problem.f, z0, method=method, max_iter=25, tol=0)


@pytest.mark.parametrize("method", sorted(SOLVERS))
def test_diverging_sample_does_not_change_others(method):
    problem = affine_problem(batch=4, dtype=torch.float64)
    clean = solve(problem.f, torch.zeros_like(problem.b), method=method, max_iter=60, tol=0)

    def f_with_nan(z):
        out = problem.f(z)
        out[2] = float("nan")
        return out

    poisoned = solve(f_with_nan, torch.zeros_like(problem.b), method=method, max_iter=60, tol=0)
    keep = [0, 1, 3]
    assert torch.equal(poisoned.z[keep], clean.z[keep])
    assert torch.equal(poisoned.residual[keep], clean.residual[keep])
    assert not poisoned.converged[2]
    assert math.isinf(float(poisoned.residual[2])) or math.isnan(float(poisoned.residual[2]))
    assert torch.isfinite(poisoned.z[2]).all()  # the best iterate stays the finite initial point


def test_best_iterate_is_kept_when_a_sample_blows_up_later():
    torch.manual_seed(3)
    b = torch.randn(2, 5, dtype=torch.float64)
    calls = {"n": 0}

    def f(z):
        calls["n"] += 1
        out = 0.5 * z + b
        if calls["n"] > 10:
            out = out.clone()
            out[1] = float("inf")
        return out

    result = solve(f, torch.zeros_like(b), method="forward", max_iter=20, tol=0)
    assert torch.isfinite(result.z).all()
    assert int(result.best_iteration[1]) == 9


@pytest.mark.parametrize("method", sorted(SOLVERS))
def test_tuple_state(method):
    torch.manual_seed(2)
    A1 = 0.3 * torch.randn(6, 6, dtype=torch.float64) / 6**0.5
    A2 = 0.3 * torch.randn(4 * 3, 6, dtype=torch.float64) / 6**0.5
    b1, b2 = torch.randn(3, 6, dtype=torch.float64), torch.randn(3, 4, 3, dtype=torch.float64)

    def f(state):
        z1, z2 = state
        return (torch.tanh(z1 @ A1.T + 0.1 * z2.flatten(1)[:, :6] + b1), torch.tanh((z1 @ A2.T).view(3, 4, 3) + b2))

    z0 = (torch.zeros(3, 6, dtype=torch.float64), torch.zeros(3, 4, 3, dtype=torch.float64))
    result = solve(f, z0, method=method, max_iter=200, tol=1e-10)
    assert isinstance(result.z, tuple) and result.z[0].shape == (3, 6) and result.z[1].shape == (3, 4, 3)
    fz = f(result.z)
    for part, image in zip(result.z, fz):
        assert torch.allclose(part, image, atol=1e-8)


def test_list_state_keeps_list_type():
    z0 = [torch.zeros(2, 3), torch.zeros(2, 2)]
    result = solve(lambda s: [0.5 * s[0] + 1, 0.5 * s[1] - 1], z0, method="anderson", max_iter=30, tol=1e-6)
    assert isinstance(result.z, list)
    assert torch.allclose(result.z[0], torch.full((2, 3), 2.0), atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind", ["I", "II"])
def test_low_precision_state_runs_anderson(dtype, kind):
    problem = affine_problem(batch=3, dim=16, radius=0.5, dtype=torch.float32)
    A, b = problem.A.to(dtype), problem.b.to(dtype)

    def f(z):
        return torch.bmm(A, z.unsqueeze(2)).squeeze(2) + b

    result = solve(f, torch.zeros_like(b), method="anderson", max_iter=30, tol=0, m=5, kind=kind)
    assert result.z.dtype == dtype
    assert relative_error(result.z.float(), problem.solution()) < 0.05


@pytest.mark.parametrize("kind", ["I", "II"])
def test_bf16_history_keeps_float32_iterates_and_converges(kind):
    problem = affine_problem(batch=3, dim=64, radius=0.5, dtype=torch.float32)
    exact = solve(problem.f, torch.zeros_like(problem.b), method="anderson", max_iter=30, tol=0, m=5, kind=kind)
    low = solve(problem.f, torch.zeros_like(problem.b), method="anderson", max_iter=30, tol=0, m=5, kind=kind,
                history_dtype="bfloat16")
    assert low.z.dtype == torch.float32
    assert relative_error(exact.z, problem.solution()) < 1e-4
    # bf16 rounding of the stored images bounds the accuracy near 2^-8.
    assert relative_error(low.z, problem.solution()) < 1e-2
    with pytest.raises(ValueError, match="history_dtype"):
        solve(problem.f, torch.zeros_like(problem.b), method="anderson", history_dtype="float16")


def test_unknown_method_and_options_are_named():
    f = lambda z: 0.5 * z  # noqa: E731
    z0 = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="unknown solver method 'andersen'"):
        solve(f, z0, method="andersen")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['mem'\] for solver 'anderson'"):
        solve(f, z0, method="anderson", mem=5)
    with pytest.raises(ValueError, match="m must be a positive integer"):
        solve(f, z0, method="anderson", m=0)
    with pytest.raises(ValueError, match="beta must be in"):
        solve(f, z0, method="anderson", beta=1.5)
    with pytest.raises(ValueError, match="kind must be 'I' or 'II'"):
        solve(f, z0, method="anderson", kind="III")
    with pytest.raises(ValueError, match="max_iter must be a positive integer"):
        solve(f, z0, max_iter=0)
    with pytest.raises(ValueError, match="tol must be a number >= 0"):
        solve(f, z0, tol=-1)
    with pytest.raises(ValueError, match="stop_mode"):
        solve(f, z0, stop_mode="relative")
    with pytest.raises(TypeError, match="state must be a tensor"):
        solve(f, 3.0)


def test_abs_stop_mode_reports_absolute_residual():
    problem = affine_problem(dtype=torch.float64)
    result = solve(problem.f, torch.zeros_like(problem.b), method="forward", max_iter=1, tol=0, stop_mode="abs")
    assert torch.allclose(result.residual, problem.b.norm(dim=1))


def test_sync_guard_detects_the_convergence_check():
    """The guard used above is real: a solve with tol > 0 reads one flag per check."""
    problem = affine_problem(dtype=torch.float32)
    with pytest.raises(AssertionError, match="host sync"):
        with forbid_host_sync():
            solve(problem.f, torch.zeros_like(problem.b), method="forward", max_iter=20, tol=1e-3, check_every=4)
