"""JIIO vs Adam latent optimisation time (JIIO paper Table 3, Figure 3) and memory (appendix C.6).

Adam-40, JIIO-40 and JIIO-100 reconstruct the same test images with the same generator, interleaved repeat by
repeat in one process with device synchronisation; Figure 3's curves and the peak-memory comparison come from the
same job.  Method names carry the iteration counts actually run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from deqbench.experiments.config import ConfigError
from deqbench.experiments.io import atomic_write_json, load_artifact
from deqbench.experiments.registry import Job
from deqbench.experiments.runtime import data_source_label, seed_everything, sync
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


def _run(model: MDEQGenerator, clean: Tensor, solve: AdamSolve | JIIOSolve) -> tuple[Tensor, Tensor]:
    with torch.no_grad():
        if isinstance(solve, JIIOSolve):
            res = jiio_reconstruct(model, clean, None, solve)
        else:
            res = adam_reconstruct_deq(model, clean, None, solve)
    return res.trace_cost, res.cost


def time_side_by_side(model: MDEQGenerator, clean: Tensor, job: TimingJob, methods: Methods, device: torch.device,
                      progress: bool, desc: str) -> dict[str, dict[str, Any]]:
    """Median time, cost trace and returned cost of each method, interleaved repeat by repeat."""
    out: dict[str, dict[str, Any]] = {m: {"samples": []} for m in methods}
    for _ in range(job.timing.warmup):
        for solve in methods.values():
            _run(model, clean, solve)
    for _ in tqdm(range(job.timing.repeats), desc=desc, disable=not progress):
        for name, solve in methods.items():
            sync(device)
            t0 = time.perf_counter()
            out[name]["trace"], out[name]["returned"] = _run(model, clean, solve)
            sync(device)
            out[name]["samples"].append(time.perf_counter() - t0)
    for name in methods:
        out[name]["median"] = float(np.median(out[name]["samples"]))
    return out


def _iterations(solve: AdamSolve | JIIOSolve) -> int:
    return solve.iterations if isinstance(solve, JIIOSolve) else solve.steps


def _curves(panel: str, result: dict[str, dict[str, Any]], methods: Methods, batch: int) -> list[dict[str, Any]]:
    """Figure 3: iteration k of a method at (k + 1) / K of its median run time (every iteration does equal work)."""
    curves = []
    for name, solve in methods.items():
        cost = result[name]["trace"].mean(0).cpu()
        iters = _iterations(solve)
        for k in range(iters):
            curves.append({"panel": panel, "method": name, "iteration": k + 1,
                           "seconds": result[name]["median"] * (k + 1) / iters, "cost_mean": float(cost[k]),
                           "batch_size": batch})
    return curves


def time_methods(job: TimingJob, checkpoint: str | None, data: dict[str, Any], device: torch.device, progress: bool,
                 checkpoint100: str | None = None) -> dict[str, Any]:
    """Adam-40 vs JIIO-40 vs JIIO-100 per batch size (Table 3) and Figure 3's two panels: Adam vs JIIO-40 on the
    model trained with 40 JIIO iterations and (``checkpoint100``) Adam vs JIIO-100 on the one trained with 100."""
    model, state = timing_model(job, checkpoint, data["test"].shape[1], device)
    test = test_images(data, job.eval_limit)
    adam_name, test_name = f"adam{job.adam.steps}", f"jiio{job.jiio_test.iterations}"
    methods: Methods = {adam_name: job.adam, "jiio40": job.jiio40, test_name: job.jiio_test}
    rows, curves = [], []
    for batch in job.timing.batch_sizes:
        result = time_side_by_side(model, batch_of(test, batch, device), job, methods, device, progress,
                                   f"timing batch {batch}")
        for name, solve in methods.items():
            r = result[name]
            rows.append({"method": name, "iterations": _iterations(solve), "batch_size": batch,
                         "ms_per_call": 1e3 * r["median"], "ms_per_example": 1e3 * r["median"] / batch,
                         "repeats": job.timing.repeats, "samples_ms": [1e3 * t for t in r["samples"]],
                         "returned_cost_mean": float(r["returned"].mean()),
                         "last_iterate_cost_mean": float(r["trace"][:, -1].mean()),
                         "adam_over_this": result[adam_name]["median"] / r["median"]})
        if batch == job.timing.trace_batch:
            panel = {k: methods[k] for k in (adam_name, "jiio40")}
            curves += _curves("model trained with JIIO-40", result, panel, batch)
    if checkpoint100 is not None:
        model100, _ = load_model(dataclasses.replace(job.arch, kind="jiio100"), checkpoint100, device)
        panel = {adam_name: job.adam, test_name: job.jiio_test}
        result = time_side_by_side(model100, batch_of(test, job.timing.trace_batch, device), job, panel, device,
                                   progress, "figure 3, model trained with JIIO-100")
        curves += _curves("model trained with JIIO-100", result, panel, job.timing.trace_batch)
    return {"rows": rows, "figure3": curves, "model": state["name"], "train": state["summary"],
            "seed": state["summary"]["seed"]}


# ----------------------------------------------------------------------------- memory (appendix C.6)


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux >= 4.0: write 5 to /proc/self/clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _rss_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


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
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        hwm_reset = _reset_peak_rss()
        before = _rss_bytes("VmRSS") if hwm_reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    adam = job.adam if adam_steps is None else AdamSolve(adam_steps, job.adam.lr, job.adam.solver, job.adam.cuda_graph)
    _run(model, clean, job.jiio40 if method == "jiio40" else adam)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak, kind = torch.cuda.max_memory_allocated(device) - before, "cuda peak allocated above pre-call"
    elif hwm_reset:
        peak, kind = _rss_bytes("VmHWM") - before, "cpu peak RSS above pre-call (child process, VmHWM reset)"
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
        kind = "cpu growth of the process's peak RSS (child process; no VmHWM reset on this OS, underestimates)"
    return {"method": method, "batch_size": batch, "peak_bytes": int(peak), "peak_gib": peak / 2**30, "measure": kind,
            "adam_steps": adam.steps}


def measure_memory(job: Job, checkpoint: str | None, data_path: str) -> list[dict[str, Any]]:
    """JIIO-40 vs Adam peak memory: on CUDA in this process, on the CPU each in a fresh child process (the RSS
    high-water mark belongs to the process), which reads the same resolved settings as this job."""
    rows = []
    if job.resolved_path:
        settings = ["--resolved", job.resolved_path]
    else:
        settings = ["--params", job.args.params, *(["--profile", job.args.profile] if job.args.profile else [])]
        settings += [arg for item in job.args.set for arg in ("--set", item)]
    settings += ["--expect-hash", job.hash]  # the child must measure exactly this job's settings
    for method in ("jiio40", f"adam{job.settings.adam.steps}"):
        if job.device.type == "cuda":
            rows.append(memory_probe(job.settings, checkpoint, data_path, method, job.device))
            continue
        cmd = [sys.executable, "-m", "deqbench", *settings, "--threads", str(torch.get_num_threads()), "--no-progress",
               "jiio_generative", "memory-probe", "--data", data_path, "--method", method]
        cmd += ["--checkpoint", checkpoint] if checkpoint is not None else []
        out = subprocess.run(cmd, capture_output=True, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())})
        if out.returncode != 0:
            raise RuntimeError(f"memory probe for {method} failed (exit {out.returncode}):\n{out.stderr[-2000:]}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return rows


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
        print(f"{row['method']} batch {row['batch_size']}: {row['ms_per_example']:.2f} ms/example")


def run_memory_probe(job: Job) -> None:
    a = job.args
    print(json.dumps(memory_probe(job.settings, a.checkpoint, a.data, a.method, job.device, a.adam_steps)))
