"""(Implicit)^2 speed: one training step (forward, backward, Adam) of explicit 4L, the amortised implicit 1L and a DEQ
1L that solves from zero every step, at the same width (spec C.2 / C.6: O(L) vs O(1) vs O(M)).

CUDA: the paper's 256 width on the 65,536 train pixels of a 512 px image; CPU: width 64 on 4,096 pixels (the
embedded profile's 128 px image).  The DEQ solves with forward iteration to the spec's relative tolerance 1e-2.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from deqbench.data.implicit2 import coordinate_grid
from deqbench.models.implicit_repr import AmortizedFixedPoint, ImplicitReprConfig, ImplicitRepresentation
from tests.benchmarks.conftest import expect_ratio, run_benchmark


def _setup(device: str, what: str):
    width, resolution = (256, 512) if device == "cuda" else (64, 128)
    size = f"4L-{width}D" if what == "explicit_4L" else f"1L-{width}D"
    config = ImplicitReprConfig(filter="fourier", implicit=what != "explicit_4L", size=size,
                                input_scale=resolution / 4, solver="forward", max_iter=100, tol=1e-2,
                                amortize_iters=0 if what == "deq_1L_full_solve" else 1)
    torch.manual_seed(0)
    model = ImplicitRepresentation(config).to(device)
    x = coordinate_grid(resolution)[::2, ::2].reshape(-1, 2).to(device)
    y = torch.rand(x.shape[0], 3, device=device) * 2 - 1
    forward = AmortizedFixedPoint(model) if config.implicit else model
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step():
        optimizer.zero_grad(set_to_none=True)
        F.mse_loss(forward(x), y).backward()
        optimizer.step()

    step()  # the amortised model's step-0 solve
    return step, width, x.shape[0]


@pytest.mark.parametrize("what", ["explicit_4L", "implicit_1L_amortized", "deq_1L_full_solve"])
def test_training_step(benchmark, device, what):
    step, width, n = _setup(device, what)
    group = f"implicit2 training step (width {width}, {n} px) {device}"
    expect_ratio(group, "explicit_4L", "implicit_1L_amortized", method="implicit_1L_amortized")
    expect_ratio(group, "deq_1L_full_solve", "implicit_1L_amortized", method="implicit_1L_amortized")
    run_benchmark(benchmark, group, what, step, device, rounds=20 if device == "cuda" else 5, warmup=1)
