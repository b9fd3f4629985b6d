"""Input optimisation speed: PGD-20 vs JIIO-80 (Table 2) and Adam-40 vs JIIO-40 (Table 3) on small DEQs.

Each baseline step is a full forward solve plus an implicit backward; JIIO
runs its augmented solve.  Solver settings follow the paper's Table 9 and
appendix C.3 (forward 18 / backward 20 Broyden steps; JIIO Anderson memory 20
for the adversarial and 40 for the generative setting).
"""

from __future__ import annotations

import torch

from deqbench.inputopt.baselines import adam, pgd
from deqbench.inputopt.jiio import jiio
from deqbench.models.small import SmallDEQClassifier, SmallDEQGenerator
from tests.benchmarks.conftest import expect_ratio, run_benchmark

FORWARD = {"solver": "broyden", "max_iter": 18, "tol": 0.0}
BACKWARD = {"method": "broyden", "max_iter": 20, "tol": 0.0}


def _classifier(device: str):
    batch, channels, size = (96, 24, 28) if device == "cuda" else (8, 8, 14)
    model = SmallDEQClassifier(in_channels=1, channels=channels).to(device).eval()
    images = torch.rand(batch, 1, size, size, device=device)
    labels = torch.randint(0, 10, (batch,), device=device)
    return model, images, labels, f"cls B{batch} C{channels} {size}x{size} {device}"


def test_pgd20(benchmark, device):
    model, images, labels, label = _classifier(device)
    group = f"adversarial {label}"

    def run():
        return pgd(model.layer_fn(images), model.cost_fn(labels), model.z0(images), torch.zeros_like(images),
                   steps=20, step_size=0.2, eps=1.0, forward=FORWARD, backward_options=BACKWARD)

    run_benchmark(benchmark, group, "pgd-20", run, device, rounds=5 if device == "cuda" else 2)


def test_jiio80_adversarial(benchmark, device):
    model, images, labels, label = _classifier(device)
    group = f"adversarial {label}"
    expect_ratio(group, "pgd-20", "jiio-80", method="jiio-80")

    def run():
        with torch.no_grad():
            return jiio(model.layer_fn(images), model.cost_fn(labels), model.z0(images), torch.zeros_like(images),
                        max_iter=80, alpha=(0.8, 0.6, 0.6), alpha_x_late=0.2, alpha_x_switch=65,
                        solver_options={"m": 20, "kind": "I"}, projection="l2", eps=1.0, normalized_step=True)

    run_benchmark(benchmark, group, "jiio-80", run, device, rounds=10 if device == "cuda" else 2)


def _generator(device: str):
    batch, latent, channels, size = (48, 64, 32, 32) if device == "cuda" else (4, 16, 8, 16)
    model = SmallDEQGenerator(latent_dim=latent, channels=channels, size=size, out_channels=3).to(device).eval()
    target = torch.rand(batch, 3, size, size, device=device) * 2 - 1
    z0 = model.z0(torch.zeros(batch, latent, device=device))
    return model, target, z0, torch.zeros(batch, latent, device=device), f"gen B{batch} C{channels} {size}x{size} {device}"


def test_adam40(benchmark, device):
    model, target, z0, x0, label = _generator(device)
    group = f"generative {label}"

    def run():
        return adam(model.f, model.cost_fn(target), z0, x0, steps=40, lr=0.1, forward=FORWARD, backward_options=BACKWARD)

    run_benchmark(benchmark, group, "adam-40", run, device, rounds=5 if device == "cuda" else 2)


def test_jiio40_generative(benchmark, device):
    model, target, z0, x0, label = _generator(device)
    group = f"generative {label}"
    expect_ratio(group, "adam-40", "jiio-40", method="jiio-40")

    def run():
        with torch.no_grad():
            return jiio(model.f, model.cost_fn(target), z0, x0, max_iter=40, alpha=(0.8, 0.6, 0.01),
                        solver_options={"m": 40, "kind": "I"})

    run_benchmark(benchmark, group, "jiio-40", run, device, rounds=10 if device == "cuda" else 2)
