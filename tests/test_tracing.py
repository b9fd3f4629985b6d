"""Per-iteration tracing of JIIO and the Adam / PGD baselines (Figure 3's timestamps): the hook sees every iteration
in order, its timestamps increase, and a traced solve returns exactly what an untraced one does."""

from __future__ import annotations

import pytest
import torch

from deqbench.inputopt.baselines import adam, pgd
from deqbench.inputopt.jiio import jiio
from deqbench.inputopt.tracing import IterationClock, active_hook, iteration_hook
from tests.linear_problems import linear_deq_cost

DT = torch.float64
CPU = torch.device("cpu")
FAST = {"forward": {"solver": "anderson", "max_iter": 20}, "backward_options": {"method": "anderson", "max_iter": 20}}


def _zeros(problem):
    B = problem.t.shape[0]
    return torch.zeros(B, problem.A.shape[0], dtype=DT), torch.zeros(B, problem.B.shape[1], dtype=DT)


def _jiio(problem, **kw):
    options = {"max_iter": 25, "alpha": (0.8, 0.6, 0.05), "solver_options": {"m": 10, "kind": "I"}, **kw}
    with torch.no_grad():
        return jiio(problem.f, problem.cost, *_zeros(problem), **options)


def _assert_monotone(clock: IterationClock, iterations: int) -> None:
    assert len(clock.seconds) == len(clock.costs) == iterations
    assert clock.seconds[0] > 0 and all(b > a for a, b in zip(clock.seconds, clock.seconds[1:]))


@pytest.mark.parametrize("method,solver_options", [("anderson", {"m": 10, "kind": "I"}), ("broyden", {"memory": 10})])
def test_traced_jiio_matches_untraced_and_stamps_every_iteration(method, solver_options):
    problem = linear_deq_cost()
    plain = _jiio(problem, method=method, solver_options=solver_options)
    clock = IterationClock(CPU)
    clock.start()
    traced = _jiio(problem, method=method, solver_options=solver_options, on_iteration=clock)
    _assert_monotone(clock, 25)
    for name in ("x", "z", "mu", "cost", "residual", "best_iteration", "trace_cost", "trace_residual"):
        assert torch.equal(getattr(plain, name), getattr(traced, name)), name
    # The hook's cost of iteration k is JIIO's cost at its k-th iterate.
    assert torch.equal(clock.cost_matrix(), plain.trace_cost)


def test_hook_installed_for_a_block_reaches_solves_built_elsewhere():
    problem = linear_deq_cost()
    plain = _jiio(problem)
    clock = IterationClock(CPU)
    with iteration_hook(clock):
        assert active_hook(None) is clock
        clock.start()
        traced = _jiio(problem)
    assert active_hook(None) is None  # the block's hook does not leak
    _assert_monotone(clock, 25)
    assert torch.equal(plain.x, traced.x) and torch.equal(plain.trace_cost, traced.trace_cost)
    clock.start()  # a restarted clock forgets the previous run
    assert clock.seconds == [] and clock.costs == []


@pytest.mark.parametrize("baseline", ["adam", "pgd"])
def test_traced_baseline_matches_untraced_with_cost_at_the_equilibrium(baseline):
    problem = linear_deq_cost()
    z0, x0 = _zeros(problem)
    run = (lambda **kw: adam(problem.f, problem.cost, z0, x0, steps=6, lr=0.1, **FAST, **kw)) if baseline == "adam" \
        else (lambda **kw: pgd(problem.f, problem.cost, z0, x0, steps=6, step_size=0.1, eps=0.5, **FAST, **kw))
    plain = run()
    clock = IterationClock(CPU)
    clock.start()
    traced = run(on_iteration=clock)
    _assert_monotone(clock, 6)
    for name in ("x", "z", "cost", "best_iteration", "trace_cost"):
        assert torch.equal(getattr(plain, name), getattr(traced, name)), name
    assert torch.equal(clock.cost_matrix(), plain.trace_cost)  # l(z*(x_k)) of each step


def test_clock_refuses_to_run_unstarted():
    with pytest.raises(RuntimeError, match="start"):
        IterationClock(CPU)(0, torch.zeros(2))
