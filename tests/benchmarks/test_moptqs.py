"""MOptEqs speed: one forward solve of the single-view model, and the HH&D module against a plain convolution of the
same width (the module's cost per evaluation: two C x C Gram matrices and two (N x C)(C x C) products per branch)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from deqbench.models.moptqs import MOptEqs, MOptEqsConfig
from tests.benchmarks.conftest import expect_ratio, run_benchmark


def _model(device: str) -> tuple[MOptEqs, torch.Tensor]:
    """The paper's single-view model (3 x 32 channels, 32 px) on CUDA; 8 channels at 16 px on the CPU."""
    channels, size, batch = (32, 32, 128) if device == "cuda" else (8, 16, 32)
    torch.manual_seed(0)
    model = MOptEqs(MOptEqsConfig(image_size=size, channels=channels, lam=0.01, pe_eps=0.0)).to(device).eval()
    return model, torch.rand(batch, 3, size, size, device=device)


def test_moptqs_forward_solve(benchmark, device):
    model, images = _model(device)
    group = f"moptqs forward solve {device}"

    def run():
        with torch.no_grad():
            return model(images, solver="anderson", max_iter=30, tol=0.0, solver_options={"m": 5}, backward="none")

    run_benchmark(benchmark, group, "anderson x30", run, device, rounds=10 if device == "cuda" else 3, warmup=1)


@pytest.mark.parametrize("what", ["hhd", "conv3x3"])
def test_hhd_module_against_a_convolution(benchmark, device, what):
    model, images = _model(device)
    with torch.no_grad():
        z = tuple(torch.randn_like(t) for t in model.z0(images))
        weight = model.normalized_weights()[0][0]
    group = f"moptqs HH&D vs conv3x3 ({z[0].shape[1]} ch, {z[0].shape[-1]} px, 3 branches) {device}"
    if what == "hhd":
        expect_ratio(group, "hhd", "conv3x3")

        def run():
            with torch.no_grad():
                return model.hhd(z)
    else:

        def run():
            with torch.no_grad():
                return tuple(F.conv2d(t, weight, padding=1) for t in z)

    run_benchmark(benchmark, group, what, run, device, rounds=50 if device == "cuda" else 20, warmup=2)
