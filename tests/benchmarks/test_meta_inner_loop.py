"""Table 7 (JIIO paper; spec B.7): the meta inner loop, Adam-20 vs JIIO-100, on the same FiLM-MDEQ, the same batch of
tasks and the same device, in one group so the ratio Adam-20 / JIIO-100 is printed side by side.

* JIIO-100: :func:`deqbench.meta.jiio_deq.adapt_task_vectors` at the paper settings (100 iterations, Anderson-I
  memory 10, damping (0.8, 0.6, 0.04) -> 0.01 after 65, task_l2 1), graph-free as at test time.
* Adam-20: :func:`deqbench.meta.jiio_deq.adam_task_vectors`, lr 0.1, 20 steps, each a Broyden-20 forward solve plus
  a Broyden-20 IFT backward on the support images (the reference's threshold 20, spec B.7).

Only the inner loop is timed (not the query solve and head, which the reference's timer also wrapped and which
are the same for both methods).  Sizes: CUDA = the paper model (channels [64, 128], task dim 400) at 5-way 1-shot
with 20 tasks per batch (the reference's per-GPU test batch), 28x28 images; CPU = channels [8, 16], expansion 2,
4 tasks, 14x14 images, so a JIIO round stays near a second on one thread.  Images are random (timing only; no data
set needed).  Each benchmark's extra_info holds ms per task and the f-evaluation / VJP
counts.
"""

from __future__ import annotations

import torch

from deqbench.meta.jiio_deq import JIIODEQConfig, adam_task_vectors, inner_loop
from deqbench.models.mdeq import MDEQClassifier, MDEQConfig
from tests.benchmarks.conftest import expect_ratio, run_benchmark

N_WAY, K_SHOT, TASK_DIM = 5, 1, 400


def _setup(device: str) -> tuple[MDEQClassifier, torch.Tensor, torch.Tensor, int, str]:
    if device == "cuda":
        tasks, size = 20, 28
        config = MDEQConfig(in_channels=1, num_classes=N_WAY, channels=(64, 128), expansion=5, block_groups=8,
                            fuse_groups=8, post_fuse_groups=4, head_channels=(32, 64), final_channels=512,
                            task_dim=TASK_DIM)
    else:
        tasks, size = 4, 14
        config = MDEQConfig(in_channels=1, num_classes=N_WAY, channels=(8, 16), expansion=2, block_groups=4,
                            fuse_groups=4, post_fuse_groups=4, head_channels=(4, 8), final_channels=64,
                            task_dim=TASK_DIM)
    torch.manual_seed(0)
    model = MDEQClassifier(config).to(device).eval()
    with torch.no_grad():  # move FiLM off its zero init so x matters, as after some meta-training
        for block in model.blocks:
            block.film.weight.normal_(0.0, 0.05)
    g = torch.Generator().manual_seed(1)
    images = torch.rand(tasks * N_WAY * K_SHOT, 1, size, size, generator=g).to(device)
    labels = torch.arange(N_WAY).repeat_interleave(K_SHOT).repeat(tasks).to(device)
    c = config.channels
    label = f"meta inner loop {N_WAY}w{K_SHOT}s T{tasks} C{c[0]}-{c[1]} {size}px {device}"
    return model, images, labels, tasks, label


def _record(benchmark, tasks: int, f_evals: int, vjps: int) -> None:
    """Per-batch counts and the median per task (Table 7 reports ms per batch of tasks, spec B.7)."""
    benchmark.extra_info.update(tasks=tasks, f_evals=f_evals, vjps=vjps)
    stats = getattr(getattr(benchmark, "stats", None), "stats", None)
    if stats is not None:
        benchmark.extra_info["ms_per_batch"] = stats.median * 1e3
        benchmark.extra_info["ms_per_task"] = stats.median * 1e3 / tasks


def test_adam20_task_vectors(benchmark, device):
    model, images, labels, tasks, group = _setup(device)
    config = JIIODEQConfig()

    def run():
        return adam_task_vectors(model, images, labels, tasks, config, steps=20, lr=0.1)

    out = run_benchmark(benchmark, group, "adam-20", run, device, rounds=3 if device == "cuda" else 2)
    _record(benchmark, tasks, out.f_evals, out.vjps)
    assert out.x.shape == (tasks, TASK_DIM)


def test_jiio100_task_vectors(benchmark, device):
    model, images, labels, tasks, group = _setup(device)
    expect_ratio(group, "adam-20", "jiio-100", method="jiio-100")
    config = JIIODEQConfig()

    def run():
        with torch.no_grad():
            return inner_loop(model, images, labels, tasks, config)

    out = run_benchmark(benchmark, group, "jiio-100", run, device, rounds=5 if device == "cuda" else 3)
    _record(benchmark, tasks, out.f_evals, out.vjps)
    assert out.x.shape == (tasks, TASK_DIM)
