"""Reliability R3 (issue 13), library level: a NaN in f mid-solve is seen, named by its iteration, and stops training
with no output written; the fault-injection hook that the pipeline-level test uses."""

from __future__ import annotations

import pytest
import torch

from deqbench.core.solvers import solve
from deqbench.core.watch import first_nonfinite_iteration, watch_solves
from deqbench.experiments import faults


def _contraction(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x + 1.0  # fixed point 2


def test_first_nonfinite_iteration_ignores_iterations_not_run() -> None:
    trace = torch.tensor([[0.5, 0.2, float("nan"), float("nan")],
                          [0.5, float("inf"), 0.1, float("nan")],
                          [0.5, 0.2, 0.1, float("nan")]])
    assert first_nonfinite_iteration(trace, 3).tolist() == [2, 1, -1]


def test_a_finite_solve_reports_no_fault() -> None:
    with watch_solves() as watch:
        result = solve(_contraction, torch.zeros(3, 4), method="anderson", max_iter=10, tol=0.0)
    assert result.nonfinite_iteration.tolist() == [-1, -1, -1]
    assert watch.verdict().tolist() == [-1, -1]


@pytest.mark.parametrize("method", ["forward", "anderson", "broyden"])
def test_nan_injected_mid_solve_is_reported_with_its_iteration(method: str) -> None:
    with watch_solves() as watch:
        solve(_contraction, torch.zeros(2, 4), method=method, max_iter=10, tol=0.0)  # solve 0: clean
    with watch_solves(nan_from=4) as poisoned:
        result = solve(_contraction, torch.zeros(2, 4), method=method, max_iter=10, tol=0.0)
    assert watch.verdict().tolist() == [-1, -1]
    assert result.nonfinite_iteration.tolist() == [3, 3]  # the 4th evaluation is trace index 3
    assert torch.isfinite(result.z).all()  # the solve alone hides it: it returns its best finite iterate
    assert poisoned.verdict().tolist() == [0, 3]


def test_verdict_names_the_first_solve_that_met_a_nan() -> None:
    with watch_solves(nan_from=30) as watch:  # only solves longer than 29 evaluations are hit
        solve(_contraction, torch.zeros(1, 2), max_iter=10, tol=0.0)
        solve(_contraction, torch.zeros(1, 2), max_iter=40, tol=0.0)
    assert watch.verdict().tolist() == [1, 29]


def test_watch_rejects_bad_injection_and_fault_spec(monkeypatch) -> None:
    with pytest.raises(ValueError, match="nan_from"):
        with watch_solves(nan_from=0):
            pass
    monkeypatch.setenv(faults.ENV, "nan:3")
    with pytest.raises(ValueError, match="nan:K:I"):
        faults.nan_from(3)
    monkeypatch.setenv(faults.ENV, "nan:3:7")
    assert faults.nan_from(3) == 7 and faults.nan_from(2) is None


def test_training_stops_naming_the_job_step_solve_and_iteration(tmp_path, monkeypatch) -> None:
    """The shared trainer reads the watch with its health check: a NaN in f at evaluation 3 of the solve in step 2
    stops the run with an error naming all of it, and neither the final nor a partial checkpoint is written."""
    from deqbench.core.deq import fixed_point
    from deqbench.experiments.runtime import DivergenceError
    from deqbench.experiments.trainer import LoopSettings, StepOutput, fit

    model = torch.nn.Linear(4, 4)
    torch.nn.init.normal_(model.weight, std=0.1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    inputs = torch.randn(8, 4)

    def step_fn(step: int) -> StepOutput:
        z = fixed_point(lambda z: torch.tanh(model(z)) + inputs, torch.zeros_like(inputs), max_iter=12, tol=0.0)
        loss = z.pow(2).mean()
        return StepOutput(loss, {})

    monkeypatch.setenv(faults.ENV, "nan:2:3")
    out, partial = tmp_path / "final.pt", tmp_path / "partial.pt"
    with pytest.raises(DivergenceError, match="toy/run: f returned non-finite values at iteration 3 of fixed-point "
                                               "solve 1 in training step 2 .*no output is written"):
        fit(key="toy/run", model=model, optimizer=optimizer, step_fn=step_fn,
            loop=LoopSettings(steps=4, checkpoint_every=1, log_every=1, lr=0.01), out_path=out, partial_path=partial,
            settings_hash="h", device=torch.device("cpu"), summary={}, checkpoint_meta={}, progress=False)
    assert not out.exists()
    monkeypatch.delenv(faults.ENV)
    result = fit(key="toy/run", model=model, optimizer=optimizer, step_fn=step_fn,
                 loop=LoopSettings(steps=4, checkpoint_every=1, log_every=1, lr=0.01), out_path=out,
                 partial_path=partial, settings_hash="h", device=torch.device("cpu"), summary={}, checkpoint_meta={},
                 progress=False)
    assert result["steps"] == 4 and out.exists()  # unpoisoned, the same loop trains (resuming after step 1)


@pytest.mark.parametrize("grad_clip", [None, 0.5, 1000.0])
def test_trainer_clips_the_global_gradient_norm(tmp_path, grad_clip) -> None:
    """LoopSettings.grad_clip: one SGD step (lr 1) on the loss 100 * sum(w) of 4 weights moves every weight by
    grad_clip / 2 when the gradient's norm (200) exceeds it, and by the whole gradient (100) otherwise."""
    from deqbench.experiments.trainer import LoopSettings, StepOutput, fit

    model = torch.nn.Linear(4, 1, bias=False)
    before = model.weight.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    fit(key="toy/clip", model=model, optimizer=optimizer, step_fn=lambda step: StepOutput(100 * model.weight.sum(), {}),
        loop=LoopSettings(steps=1, checkpoint_every=1, log_every=1, lr=1.0, grad_clip=grad_clip),
        out_path=tmp_path / "final.pt", partial_path=tmp_path / "partial.pt", settings_hash="h",
        device=torch.device("cpu"), summary={}, checkpoint_meta={}, progress=False)
    moved = 100.0 if grad_clip is None or grad_clip > 200 else grad_clip / 2
    torch.testing.assert_close(before - model.weight.detach(), torch.full_like(before, moved))
