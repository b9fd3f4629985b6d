"""JIIO vs Adam latent optimisation time (JIIO paper Table 3, Figure 3) and memory (appendix C.6).

Table 3: Adam-40, JIIO-40 and JIIO-100 reconstruct the same test images with the same generator, interleaved call
by call in one process with device synchronisation.  As in section 4.1 ("averaged over 200 examples") each call
takes the next batch of distinct test images, up to ``timing.distinct_examples`` images; the time per example is
the mean (and std) over calls.  Figure 3's curves come from a separate tracing run afterwards
(:class:`~deqbench.inputopt.tracing.IterationClock`: synchronised timestamps after every iteration), so tracing
does not enter Table 3.  The peak-memory comparison comes from the same job.  Method names carry the iteration
counts actually run.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from deqbench.experiments.config import ConfigError
from deqbench.experiments.io import atomic_write_json, load_artifact
from deqbench.experiments.memory import peak_memory, probe_in_child
from deqbench.experiments.registry import Job
from deqbench.experiments.runtime import data_source_label, seed_everything, sync
from deqbench.inputopt.tracing import IterationClock, iteration_hook
from deqbench.models.mdeq_generator import MDEQGenerator
from deqbench.tasks.jiio_generative.methods import adam_reconstruct_deq, build_model, jiio_reconstruct, to_model_range
from deqbench.tasks.jiio_generative.settings import AdamSolve, JIIOSolve, TimingJob
from deqbench.tasks.jiio_generative.task import load_model, test_images

Methods = dict[str, AdamSolve | JIIOSolve]


def timing_model(job: TimingJob, checkpoint: str | None, channels: int, device: torch.device
                 ) -> tuple[MDEQGenerator, dict[str, Any]]:
    """The trained JIIO-MDEQ of ``checkpoint``, or (None) a freshly initialised one (seed 0): Adam and JIIO run
    fixed iteration counts, so their time and memory do not depend on the weights (Figure 3's costs do)."""
    if checkpoint is not None:
        return load_model(job.arch, checkpoint, device)
    seed_everything(0)
    return build_model(job.arch, channels).to(device).eval(), {"name": "jiio40", "summary": {"key": "untrained", "seed": 0}}


def batch_of(test: Tensor, batch: int, device: torch.device) -> Tensor:
    """The first ``batch`` test images in the model range, repeated when the test set is smaller."""
    clean = to_model_range(test[:batch], device)
    if clean.shape[0] < batch:
        clean = clean.repeat((batch + clean.shape[0] - 1) // clean.shape[0], 1, 1, 1)[:batch]
    return clean


def distinct_batches(test: Tensor, batch: int, limit: int, device: torch.device) -> tuple[list[Tensor], int]:
    """Consecutive whole batches of distinct test images, at most ``limit`` images in all, and how many distinct
    images they hold (Table 3 times each call on the next batch); fewer than ``batch`` test images give one batch
    with repeats."""
    n = min(limit, test.shape[0])
    if n < batch:
        return [batch_of(test[:n], batch, device)], n
    starts = range(0, n - batch + 1, batch)
    return [to_model_range(test[i:i + batch], device) for i in starts], len(starts) * batch


def _run(model: MDEQGenerator, clean: Tensor, solve: AdamSolve | JIIOSolve) -> tuple[Tensor, Tensor]:
    with torch.no_grad():
        if isinstance(solve, JIIOSolve):
            res = jiio_reconstruct(model, clean, None, solve)
        else:
            res = adam_reconstruct_deq(model, clean, None, solve)
    return res.trace_cost, res.cost


def time_side_by_side(model: MDEQGenerator, clean: Tensor | Sequence[Tensor], job: TimingJob, methods: Methods,
                      device: torch.device, progress: bool, desc: str) -> dict[str, dict[str, Any]]:
    """Time per call of each method, interleaved call by call: call i of every method reconstructs batch
    i mod len(batches) of ``clean`` (one tensor: the same batch every call); max(timing.repeats, len(batches))
    calls, so every distinct batch is visited once.  Per method: the call times (``samples``), their mean, std and
    median, and the cost trace and returned cost over the distinct batches (first visit of each)."""
    batches = [clean] if isinstance(clean, Tensor) else list(clean)
    out: dict[str, dict[str, Any]] = {m: {"samples": [], "traces": [], "returns": []} for m in methods}
    for _ in range(job.timing.warmup):
        for solve in methods.values():
            _run(model, batches[0], solve)
    calls = max(job.timing.repeats, len(batches))
    for i in tqdm(range(calls), desc=desc, disable=not progress):
        images = batches[i % len(batches)]
        for name, solve in methods.items():
            sync(device)
            t0 = time.perf_counter()
            trace, returned = _run(model, images, solve)
            sync(device)
            out[name]["samples"].append(time.perf_counter() - t0)
            if i < len(batches):
                out[name]["traces"].append(trace)
                out[name]["returns"].append(returned)
    for r in out.values():
        samples = np.asarray(r["samples"])
        r["median"], r["mean"] = float(np.median(samples)), float(samples.mean())
        r["std"] = float(samples.std(ddof=1)) if samples.size > 1 else 0.0
        r["trace"], r["returned"] = torch.cat(r.pop("traces")), torch.cat(r.pop("returns"))
    return out


def _iterations(solve: AdamSolve | JIIOSolve) -> int:
    return solve.iterations if isinstance(solve, JIIOSolve) else solve.steps


def trace_run(model: MDEQGenerator, clean: Tensor, solve: AdamSolve | JIIOSolve,
              device: torch.device) -> IterationClock:
    """One reconstruction with synchronised timestamps after every iteration (Figure 3): Adam's cost at
    z*(x_k), JIIO's at its iterate z_k.  Slower than an untraced call; never used for Table 3."""
    clock = IterationClock(device)
    with iteration_hook(clock):
        clock.start()
        _run(model, clean, solve)
    return clock


def figure3_panel(panel: str, model: MDEQGenerator, clean: Tensor, methods: Methods, job: TimingJob,
                  device: torch.device) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Figure 3 curves of one panel from a tracing run (after ``timing.warmup`` untraced calls of each method):
    iteration k at its synchronised timestamp, with the mean cost over the batch; and each traced run's total."""
    for _ in range(job.timing.warmup):
        for solve in methods.values():
            _run(model, clean, solve)
    curves, runs = [], []
    for name, solve in methods.items():
        clock = trace_run(model, clean, solve, device)
        cost = clock.cost_matrix().mean(0)
        curves += [{"panel": panel, "method": name, "iteration": k + 1, "seconds": t, "cost_mean": float(c),
                    "batch_size": clean.shape[0]} for k, (t, c) in enumerate(zip(clock.seconds, cost))]
        runs.append({"panel": panel, "method": name, "batch_size": clean.shape[0], "iterations": len(clock.seconds),
                     "traced_seconds": clock.seconds[-1]})
    return curves, runs


def time_methods(job: TimingJob, checkpoint: str | None, data: dict[str, Any], device: torch.device, progress: bool,
                 checkpoint100: str | None = None) -> dict[str, Any]:
    """Adam-40 vs JIIO-40 vs JIIO-100 per batch size over distinct test images (Table 3), then Figure 3's two
    panels from tracing runs: Adam vs JIIO-40 on the model trained with 40 JIIO iterations and
    (``checkpoint100``) Adam vs JIIO-100 on the one trained with 100."""
    model, state = timing_model(job, checkpoint, data["test"].shape[1], device)
    test = test_images(data, job.eval_limit)
    adam_name, test_name = f"adam{job.adam.steps}", f"jiio{job.jiio_test.iterations}"
    methods: Methods = {adam_name: job.adam, "jiio40": job.jiio40, test_name: job.jiio_test}
    rows = []
    for batch in job.timing.batch_sizes:
        batches, distinct = distinct_batches(test, batch, job.timing.distinct_examples, device)
        result = time_side_by_side(model, batches, job, methods, device, progress, f"timing batch {batch}")
        for name, solve in methods.items():
            r = result[name]
            rows.append({"method": name, "iterations": _iterations(solve), "batch_size": batch,
                         "ms_per_call": 1e3 * r["mean"], "ms_per_example": 1e3 * r["mean"] / batch,
                         "ms_per_example_std": 1e3 * r["std"] / batch,
                         "ms_per_example_median": 1e3 * r["median"] / batch,
                         "calls": len(r["samples"]), "distinct_examples": distinct,
                         "samples_ms": [1e3 * t for t in r["samples"]],
                         "returned_cost_mean": float(r["returned"].mean()),
                         "last_iterate_cost_mean": float(r["trace"][:, -1].mean()),
                         "adam_over_this": result[adam_name]["mean"] / r["mean"]})
    trace_clean = batch_of(test, job.timing.trace_batch, device)
    curves, runs = figure3_panel("model trained with JIIO-40", model, trace_clean,
                                 {k: methods[k] for k in (adam_name, "jiio40")}, job, device)
    if checkpoint100 is not None:
        model100, _ = load_model(dataclasses.replace(job.arch, kind="jiio100"), checkpoint100, device)
        more = figure3_panel("model trained with JIIO-100", model100, trace_clean,
                             {adam_name: job.adam, test_name: job.jiio_test}, job, device)
        curves, runs = curves + more[0], runs + more[1]
    return {"rows": rows, "figure3": curves, "figure3_runs": runs, "model": state["name"], "train": state["summary"],
            "seed": state["summary"]["seed"]}


# ----------------------------------------------------------------------------- memory (appendix C.6)


def memory_probe(job: TimingJob, checkpoint: str | None, data_path: str, method: str, device: torch.device,
                 adam_steps: int | None = None) -> dict[str, Any]:
    """Peak memory of one reconstruction at ``timing.memory_batch`` (CUDA: peak allocation above the pre-call
    level; CPU: peak RSS above it); ``adam_steps`` shortens Adam (its peak is reached in the first step)."""
    adam_name = f"adam{job.adam.steps}"
    if method not in ("jiio40", adam_name):
        raise ConfigError(f"memory probe --method must be jiio40 or {adam_name}, got {method!r}")
    batch = job.timing.memory_batch
    test = test_images(load_artifact(data_path), job.eval_limit)
    model, _ = timing_model(job, checkpoint, test.shape[1], device)
    clean = batch_of(test, batch, device)
    model.prepare()
    adam = job.adam if adam_steps is None else AdamSolve(adam_steps, job.adam.lr, job.adam.solver, job.adam.cuda_graph)
    measured = peak_memory(lambda: _run(model, clean, job.jiio40 if method == "jiio40" else adam), device)
    return {"method": method, "batch_size": batch, **measured, "adam_steps": adam.steps}


def measure_memory(job: Job, checkpoint: str | None, data_path: str) -> list[dict[str, Any]]:
    """JIIO-40 vs Adam peak memory: on CUDA in this process, on the CPU each in a fresh child process (the RSS
    high-water mark belongs to the process), which reads the same resolved settings as this job."""
    methods = ("jiio40", f"adam{job.settings.adam.steps}")
    if job.device.type == "cuda":
        return [memory_probe(job.settings, checkpoint, data_path, m, job.device) for m in methods]
    return [probe_in_child(job, "jiio_generative", "memory-probe",
                           ["--data", data_path, "--method", m, *(["--checkpoint", checkpoint] if checkpoint else [])])
            for m in methods]


# ----------------------------------------------------------------------------- stages


def run_timing(job: Job) -> None:
    a = job.args
    data = load_artifact(a.data)
    out = time_methods(job.settings, a.checkpoint, data, job.device, job.progress, a.checkpoint100)
    out["memory"] = measure_memory(job, a.checkpoint, a.data)
    out["data_source"] = data_source_label(data["meta"])
    out["provenance"] = job.provenance(seeds=[out["seed"]])
    atomic_write_json(a.out, out)
    for row in out["rows"]:
        print(f"{row['method']} batch {row['batch_size']}: {row['ms_per_example']:.2f} +- "
              f"{row['ms_per_example_std']:.2f} ms/example ({row['calls']} calls, {row['distinct_examples']} "
              f"distinct test images)")


def run_memory_probe(job: Job) -> None:
    a = job.args
    print(json.dumps(memory_probe(job.settings, a.checkpoint, a.data, a.method, job.device, a.adam_steps)))
