"""Table 2 at small size: PGD-20 vs JIIO-80 adversarial examples of an MDEQ classifier.

Settings come from the ``paper`` profile's ``jiio_adversarial`` block (solver iterations,
PGD step, JIO alpha/memory/schedule); on the CPU the model and batch are
shrunk so the benchmark takes seconds, on CUDA it is the paper's MDEQ-SMALL
at batch 96 with MNIST-shaped inputs.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from deqbench.experiments.config import load_profile
from deqbench.tasks.jiio_adversarial import TASK
from deqbench.tasks.jiio_adversarial.task import build_model, jio_attack, pgd_perturbation
from tests.benchmarks.conftest import expect_ratio, run_benchmark

PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"


def _setup(device: str):
    job = TASK.settings(load_profile(PARAMS, "paper")).timing()
    batch, size = (96, 28) if device == "cuda" else (8, 12)
    net = job.net
    if device != "cuda":
        small = dataclasses.replace(net.model, channels=(8, 8), expansion=2, fuse_groups=4, head_channels=(4, 8),
                                    final_channels=32)
        net = dataclasses.replace(net, model=small)
    torch.manual_seed(0)
    model = build_model(net, 1, 10).to(device).eval()
    images = torch.rand(batch, 1, size, size, device=device)
    labels = torch.randint(0, 10, (batch,), device=device)
    return net, job.attack, model, images, labels, f"table2 mdeq B{batch} {size}x{size} {device}"


def test_table2_pgd20(benchmark, device):
    net, attack, model, images, labels, group = _setup(device)
    run_benchmark(benchmark, group, "pgd-20", lambda: pgd_perturbation(model, images, labels, net, attack.pgd, 1.0), device,
                  rounds=5 if device == "cuda" else 2)


def test_table2_jiio80(benchmark, device):
    net, attack, model, images, labels, group = _setup(device)
    expect_ratio(group, "pgd-20", "jiio-80", method="jiio-80")

    def run():
        with torch.no_grad():
            return jio_attack(model, images, labels, net, attack.jio, 1.0)

    run_benchmark(benchmark, group, "jiio-80", run, device, rounds=10 if device == "cuda" else 2)
