"""Table 3 at small size: Adam-40 vs JIIO-40 reconstruction with the MDEQ generator (per example).

Settings come from params.yaml's ``jiio_generative`` block: the ``paper`` profile on
CUDA (CelebA64 generator, 4 branches [32, 64, 128, 256], latent 128, 64x64x3,
batch 48), the ``embedded`` profile's small generator on the CPU.  Untrained
weights: both methods run fixed iteration counts, so their cost does not depend
on the weights.  Compare ``ms per call / batch`` for ms per example.
"""

from __future__ import annotations

from pathlib import Path

import torch

from deqbench.experiments.config import load_profile
from deqbench.tasks.jiio_generative import TASK
from deqbench.tasks.jiio_generative.methods import adam_reconstruct_deq, build_model, jiio_reconstruct
from tests.benchmarks.conftest import expect_ratio, run_benchmark

PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"


def _setup(device: str):
    job = TASK.settings(load_profile(PARAMS, "paper" if device == "cuda" else "embedded")).timing()
    batch = 48 if device == "cuda" else 4
    channels = 3 if device == "cuda" else 1
    size = job.arch.image_size
    torch.manual_seed(0)
    model = build_model(job.arch, channels).to(device).eval()
    target = torch.rand(batch, channels, size, size, device=device) * 2 - 1
    return job, model, target, f"table3 mdeq-generator B{batch} {size}x{size} {device} (ms per call / {batch})"


def test_table3_adam40(benchmark, device):
    job, model, target, group = _setup(device)
    run_benchmark(benchmark, group, "adam-40", lambda: adam_reconstruct_deq(model, target, None, job.adam), device,
                  rounds=3 if device == "cuda" else 2)


def test_table3_jiio40(benchmark, device):
    job, model, target, group = _setup(device)
    expect_ratio(group, "adam-40", "jiio-40", method="jiio-40")

    def run():
        with torch.no_grad():
            return jiio_reconstruct(model, target, None, job.jiio40)

    run_benchmark(benchmark, group, "jiio-40", run, device, rounds=5 if device == "cuda" else 2)
