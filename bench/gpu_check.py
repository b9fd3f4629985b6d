#!/usr/bin/env python
"""One prepared GPU check (issue 14): paper-size speed and memory of the JIIO tables, side by side in one process.

Runs every measurement the GPU issue lists that exists in the library today, each section under its own time
budget, and writes after every section (so a run cut short keeps what it measured):

* ``gpu_check.json``: environment (device, torch, git revision), each section's raw numbers;
* ``gpu_check.csv``: one row per headline number with its target and whether it was met.

Sections (``--sections``, in this order):

``table2``   MDEQ-SMALL at the paper's settings on the digits28 stand-in: PGD-20 vs JIIO-80 per example at batch
             96 and 1, eager (``cuda_graph=off``), bookkeeping graphed (``auto``) and whole iterations graphed
             (``full``), both methods in the same mode; nominal f / VJP counts from the settings.
``table3``   the paper-size MDEQ generator (3 x 64 x 64, untrained, fixed iteration counts): Adam-40 vs JIIO-40 vs
             JIIO-100 at batch 48 and 1; targets are images the generator itself makes from random latents, so the
             returned costs say how far each method got.
``memory``   peak CUDA allocation at batch 48: Adam-40 against JIIO-40 with the paper's Anderson memory (40) in
             float32 and bf16 history and with memory 20 / 10, each with its returned reconstruction cost.
``attack_memory``  appendix C.6 for adversarial training: peak memory of one PGD-20 and one JIO-80 attack on a
             fresh MDEQ-SMALL in the CIFAR-10 setting (sample-patches32 at 32 px) at batch 96 (paper: 2.19 vs 2.15 GB).
``profile``  where JIIO's time goes: the kernel time of one eager call (total and the top kernels) against the
             graphed wall time, Table 2 at batch 96 and Table 3 at batch 48 (and the
             latter once with TF32, to show how far arithmetic bounds it).
``overhead`` ``tests/benchmarks/test_solver_overhead.py`` under pytest-benchmark on CUDA (Anderson 30 / bare 30).
``torchdeq`` ``tests/benchmarks/compare_torchdeq.py`` on CUDA (needs the torchdeq wheel, see ``gpu_check.sh``).
``train``    a few optimisation steps of each task on the ``paper-standin`` profile (paper-size models, stand-in
             data) through the ``deqbench`` command line, to prove the GPU training paths run.

``--tiny`` shrinks every size so the whole script runs in a minute on a CPU (for testing the script, not for
numbers).  Usage: ``python bench/gpu_check.py --out results/gpu`` (``bench/gpu_check.sh`` wraps it for the device).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from deqbench.experiments.config import load_profile  # noqa: E402
from deqbench.experiments.runtime import seed_everything, sync  # noqa: E402

PARAMS = REPO / "params.yaml"
ADAM_COST = True  # --no-adam-cost: skip the full Adam-40 run that gives its cost in the memory section
PROFILE = "paper-standin"

# Targets of issue 14 (ms per example, ratios); None: reported, no target.
TARGETS = {
    "table2 jiio-80 ms/example batch 96": ("<=", 2.5),
    "table2 jiio-80 ms/example batch 1": ("<=", 100.0),
    "table3 jiio-40 ms/example batch 48": ("<=", 15.0),
    "table3 jiio-40 ms/example batch 1": ("<=", 200.0),
    "table3 adam-40 / jiio-40 batch 48": (">=", 9.0),
    "memory jiio-40 / adam-40 batch 48": ("<=", 1.5),
    "overhead anderson / bare conv": ("<=", 1.5),
    "torchdeq anderson / ours": (">=", 2.0),
}


class Report:
    """Collects sections and headline rows; rewrites both files atomically after every section."""

    def __init__(self, out: Path, environment: dict[str, Any]):
        self.out, self.data, self.rows = out, {"environment": environment, "sections": {}}, []
        out.mkdir(parents=True, exist_ok=True)

    def headline(self, name: str, value: float, unit: str, note: str = "") -> None:
        op, target = TARGETS.get(name, (None, None))
        met = "" if target is None else str(value <= target if op == "<=" else value >= target).lower()
        self.rows.append({"measurement": name, "value": round(value, 4), "unit": unit,
                          "target": "" if target is None else f"{op} {target}", "met": met, "note": note})
        print(f"  {name}: {value:.4g} {unit}" + (f"  (target {op} {target}: {met})" if target is not None else ""),
              flush=True)

    def section(self, name: str, content: dict[str, Any]) -> None:
        self.data["sections"][name] = content
        self.data["headlines"] = self.rows
        self._write("gpu_check.json", json.dumps(self.data, indent=2, default=str))
        with tempfile.NamedTemporaryFile("w", dir=self.out, delete=False, newline="") as fh:
            writer = csv.DictWriter(fh, ["measurement", "value", "unit", "target", "met", "note"])
            writer.writeheader()
            writer.writerows(self.rows)
        os.replace(fh.name, self.out / "gpu_check.csv")

    def _write(self, name: str, text: str) -> None:
        with tempfile.NamedTemporaryFile("w", dir=self.out, delete=False) as fh:
            fh.write(text)
        os.replace(fh.name, self.out / name)


def environment() -> dict[str, Any]:
    rev = os.environ.get("DEQBENCH_GIT_REV")
    if not rev:
        try:
            rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                                 check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            rev = "unknown"
    cuda = torch.cuda.is_available()
    return {"device": torch.cuda.get_device_name() if cuda else f"cpu ({platform.processor() or platform.machine()})",
            "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
            "git_revision": rev, "tf32": False, "dtype": "float32",
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


# ----------------------------------------------------------------------------- Table 2


def section_table2(report: Report, device: torch.device, tiny: bool) -> dict[str, Any]:
    from deqbench.tasks.jiio_adversarial import TASK
    from deqbench.tasks.jiio_adversarial.task import prepare_dataset, time_attacks

    settings = TASK.settings(load_profile(PARAMS, PROFILE))
    job = settings.timing()
    data = prepare_dataset(settings.prepare(job.timing.dataset))
    net = job.net
    batches, repeats = ((8, 1), 1) if tiny else ((96, 1), 5)
    if tiny:
        net = dataclasses.replace(net, model=dataclasses.replace(
            net.model, channels=(8, 8), expansion=2, fuse_groups=4, head_channels=(4, 8), final_channels=32))
    fwd, bwd = net.solver.forward.max_iter, net.solver.backward.max_iter
    counts = {"pgd": {"f": job.attack.pgd.steps * fwd, "vjp": job.attack.pgd.steps * bwd,
                      "note": "per step: forward Broyden solve + backward Broyden solve + one loss gradient"},
              "jio": {"f": job.attack.jio.iterations, "vjp": job.attack.jio.iterations,
                      "note": "per iteration: one f and one VJP of the augmented map (eq. 11)"}}
    out: dict[str, Any] = {"profile": PROFILE, "data": "digits28 stand-in at 28 px", "nominal_counts": counts,
                           "modes": {}}
    # time_attacks times both methods eager and at the net's cuda_graph mode, side by side (equal engineering).
    timed = dataclasses.replace(job, net=dataclasses.replace(net, cuda_graph="full"),
                                timing=dataclasses.replace(job.timing, batch_sizes=batches, repeats=repeats))
    rows = time_attacks(timed, data, device, progress=False)
    out["modes"]["full"] = rows
    for row in rows:
        print(f"  [{row.get('engineering')}] {row['method']}-{row['iterations']} batch {row['batch_size']}: "
              f"{row['ms_per_example']:.2f} ms/example", flush=True)
    table2_headlines(report, out)
    return out


def table2_headlines(report: Report, content: dict[str, Any]) -> None:
    """Headline rows of the Table 2 section: JIIO-80 ms/example and PGD-20 / JIIO-80, graphed and eager (rows
    without an ``engineering`` field come from runs before it existed: mode ``full`` graphed, ``off`` eager)."""
    modes = content["modes"]
    graphed = [r for r in modes.get("full", []) if r.get("engineering", "graphed") == "graphed"]
    eager = [r for r in modes.get("full", []) if r.get("engineering") == "eager"] or modes.get("off", [])
    for row in graphed:
        if row["method"] == "jio":
            report.headline(f"table2 jiio-80 ms/example batch {row['batch_size']}", row["ms_per_example"], "ms",
                            "cuda_graph=full")
            report.headline(f"table2 pgd-20 / jiio-80 batch {row['batch_size']}", row["pgd_over_jio"], "x",
                            "both cuda_graph=full")
    for row in eager:
        if row["method"] == "jio":
            report.headline(f"table2 jiio-80 ms/example batch {row['batch_size']} eager", row["ms_per_example"],
                            "ms", "cuda_graph=off")
            report.headline(f"table2 pgd-20 / jiio-80 batch {row['batch_size']} eager", row["pgd_over_jio"], "x",
                            "both cuda_graph=off")


# ----------------------------------------------------------------------------- Table 3 and memory


def _generator_setup(device: torch.device, tiny: bool, batch: int):
    from deqbench.tasks.jiio_generative import TASK
    from deqbench.tasks.jiio_generative.methods import build_model

    profile = "embedded" if tiny else PROFILE
    job = TASK.settings(load_profile(PARAMS, profile)).timing()
    seed_everything(0)
    model = build_model(job.arch, 3).to(device).eval()
    with torch.no_grad():
        latent = torch.randn(batch, job.arch.latent_dim, device=device)
        targets = model(latent, forward={"max_iter": 30}).clamp(-1, 1)
    return job, model, targets


def section_table3(report: Report, device: torch.device, tiny: bool) -> dict[str, Any]:
    from deqbench.tasks.jiio_generative.timing import time_side_by_side

    out: dict[str, Any] = {"profile": PROFILE, "channels": 3, "weights": "untrained (seed 0)",
                           "targets": "the generator's own images of random latents", "batches": {}}
    for batch in ((4, 1) if tiny else (48, 1)):
        job, model, targets = _generator_setup(device, tiny, batch)
        out["parameters"] = model.num_parameters()
        methods = {f"adam{job.adam.steps}": job.adam, "jiio40": job.jiio40,
                   f"jiio{job.jiio_test.iterations}": job.jiio_test}
        timed = dataclasses.replace(job, timing=dataclasses.replace(job.timing, repeats=1 if tiny else 2, warmup=1))
        result = time_side_by_side(model, targets, timed, methods, device, False, f"table3 batch {batch}")
        rows = {}
        for name, r in result.items():
            rows[name] = {"ms_per_call": 1e3 * r["median"], "ms_per_example": 1e3 * r["median"] / batch,
                          "samples_ms": [1e3 * s for s in r["samples"]],
                          "returned_cost_mean": float(r["returned"].mean())}
            print(f"  batch {batch} {name}: {rows[name]['ms_per_example']:.2f} ms/example, "
                  f"cost {rows[name]['returned_cost_mean']:.4g}", flush=True)
        out["batches"][batch] = rows
        adam = rows[f"adam{job.adam.steps}"]["ms_per_call"]
        report.headline(f"table3 jiio-40 ms/example batch {batch}",
                        rows["jiio40"]["ms_per_example"], "ms")
        report.headline(f"table3 adam-40 / jiio-40 batch {batch}", adam / rows["jiio40"]["ms_per_call"], "x")
        del model, targets
        torch.cuda.empty_cache() if device.type == "cuda" else None
    print(f"  generator parameters: {out['parameters'] / 1e6:.2f} M (paper 40.8 M)", flush=True)
    report.headline("table3 generator parameters", out["parameters"] / 1e6, "M", "paper: 40.8 M")
    return out


def section_memory(report: Report, device: torch.device, tiny: bool) -> dict[str, Any]:
    from deqbench.tasks.jiio_generative.methods import adam_reconstruct_deq, jiio_reconstruct

    batch = 4 if tiny else 48
    job, model, targets = _generator_setup(device, tiny, batch)
    model.prepare()

    def peak(fn: Callable[[], Any]) -> tuple[float, Any]:
        if device.type != "cuda":
            return float("nan"), fn()
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        with torch.no_grad():
            result = fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**30, result

    variants = {"jiio40 m40 float32": (job.jiio40, None), "jiio40 m40 bf16 history": (job.jiio40, "bfloat16"),
                "jiio40 m20 float32": (dataclasses.replace(job.jiio40, memory=20), None),
                "jiio40 m10 float32": (dataclasses.replace(job.jiio40, memory=10), None),
                "jiio40 m30 bf16 history": (dataclasses.replace(job.jiio40, memory=30), "bfloat16"),
                "jiio40 m20 bf16 history": (dataclasses.replace(job.jiio40, memory=20), "bfloat16")}
    rows = {}
    adam_short = dataclasses.replace(job.adam, steps=2)  # Adam's peak is reached in its first step
    with torch.no_grad():  # untimed warm-up: cuDNN autotuning workspaces would otherwise count in the first peak
        adam_reconstruct_deq(model, targets, None, adam_short)
        jiio_reconstruct(model, targets, None, job.jiio40)
    gib, res = peak(lambda: adam_reconstruct_deq(model, targets, None, adam_short))
    rows["adam40"] = {"peak_gib": gib, "note": "2 steps (the peak is reached in the first)"}
    if ADAM_COST:
        adam_full = adam_reconstruct_deq(model, targets, None, job.adam) if not tiny else res
        rows["adam40"]["returned_cost_mean"] = float(adam_full.cost.mean())
    else:
        rows["adam40"]["returned_cost_mean"] = float("nan")
    for name, (solve, history) in variants.items():
        gib, res = peak(lambda: jiio_reconstruct(model, targets, None, solve, history_dtype=history))
        rows[name] = {"peak_gib": gib, "memory": solve.memory, "history_dtype": history or "float32",
                      "returned_cost_mean": float(res.cost.mean()),
                      "last_iterate_cost_mean": float(res.trace_cost[:, -1].mean())}
    for name, r in rows.items():
        ratio = r["peak_gib"] / rows["adam40"]["peak_gib"] if rows["adam40"]["peak_gib"] else float("nan")
        r["over_adam"] = ratio
        print(f"  {name}: {r['peak_gib']:.3f} GiB ({ratio:.2f}x Adam), cost {r['returned_cost_mean']:.4g}", flush=True)
    report.headline("memory jiio-40 / adam-40 batch 48", rows["jiio40 m40 float32"]["over_adam"], "x",
                    "Anderson memory 40, float32 history (paper settings)")
    report.headline("memory jiio-40 bf16 history / adam-40 batch 48", rows["jiio40 m40 bf16 history"]["over_adam"],
                    "x", "Anderson memory 40, bf16 history")
    report.headline("memory jiio-40 m20 / adam-40 batch 48", rows["jiio40 m20 float32"]["over_adam"], "x",
                    "Anderson memory 20")
    report.headline("memory jiio-40 m20 bf16 history / adam-40 batch 48", rows["jiio40 m20 bf16 history"]["over_adam"],
                    "x", "Anderson memory 20, bf16 history")
    return {"batch": batch, "measure": "torch.cuda.max_memory_allocated above the pre-call level", "rows": rows}


def section_attack_memory(report: Report, device: torch.device, tiny: bool) -> dict[str, Any]:
    from deqbench.tasks.jiio_adversarial import TASK
    from deqbench.tasks.jiio_adversarial.task import MEMORY_METHODS, attack_memory, prepare_dataset

    settings = TASK.settings(load_profile(PARAMS, PROFILE))
    job = settings.memory()
    data = prepare_dataset(settings.prepare(job.memory.dataset))
    if tiny:
        job = dataclasses.replace(job, memory=dataclasses.replace(job.memory, batch_size=8), net=dataclasses.replace(
            job.net, model=dataclasses.replace(job.net.model, channels=(8, 8), expansion=2, fuse_groups=4,
                                               head_channels=(4, 8), final_channels=32)))
    rows = {}
    for method in MEMORY_METHODS:
        if device.type == "cuda":
            torch.cuda.empty_cache()
        rows[method] = attack_memory(job, data, method, device)
        print(f"  {method}-{rows[method]['iterations']}: {rows[method]['peak_gib']:.3f} GiB", flush=True)
    ratio = rows["jio"]["peak_bytes"] / max(rows["pgd"]["peak_bytes"], 1)
    report.headline(f"memory jio-80 / pgd-20 batch {job.memory.batch_size}", ratio, "x",
                    "one attack each on a fresh MDEQ-SMALL, CIFAR-10 setting (paper 2.19 / 2.15 GB = 1.02x)")
    return {"batch": job.memory.batch_size, "rows": rows, "jio_over_pgd": ratio}


# ----------------------------------------------------------------------------- where the time goes


def _device_time_us(event: Any) -> float:
    for attr in ("device_time_total", "cuda_time_total"):
        if hasattr(event, attr):
            return float(getattr(event, attr))
    return 0.0


def _self_device_time_us(event: Any) -> float:
    for attr in ("self_device_time_total", "self_cuda_time_total"):
        if hasattr(event, attr):
            return float(getattr(event, attr))
    return 0.0


def _attributed_profile(run: Callable[[], Any], layer_owner: Any, device: torch.device) -> dict[str, Any]:
    """Kernel time of one eager call, split by annotated ranges: f (the DEQ layer), cost (the inner cost), the
    augmented map as a whole (f + cost + their joint VJP) and the Anderson step; the VJP is augmented - f - cost."""
    from torch.profiler import ProfilerActivity, profile, record_function

    from deqbench.core.solvers.anderson import Anderson
    from deqbench.inputopt import jiio as jiio_module

    def annotate(fn: Callable[..., Any], label: str) -> Callable[..., Any]:
        def wrapped(*a: Any, **k: Any) -> Any:
            with record_function(label):
                return fn(*a, **k)
        return wrapped

    originals = {"aug": jiio_module._Augmented.__call__, "step": Anderson.step,
                 "layer_fn": getattr(layer_owner, "layer_fn", None), "layer": getattr(layer_owner, "layer", None),
                 "cost_fn": layer_owner.cost_fn}
    jiio_module._Augmented.__call__ = annotate(originals["aug"], "bench::augmented")
    Anderson.step = annotate(originals["step"], "bench::anderson_step")
    if originals["layer_fn"] is not None:  # classifier: layer_fn(images) -> f(z, x)
        layer_owner.layer_fn = lambda images: annotate(originals["layer_fn"](images), "bench::f")
    else:  # generator: f(z, x) is the bound method ``layer``
        layer_owner.layer = annotate(originals["layer"], "bench::f")
    layer_owner.cost_fn = lambda *a: annotate(originals["cost_fn"](*a), "bench::cost")
    try:
        run()  # warm-up (cuDNN autotuning) outside the profile
        sync(device)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        t0 = time.perf_counter()
        with profile(activities=activities) as prof:
            run()
            sync(device)
        wall = time.perf_counter() - t0
    finally:
        jiio_module._Augmented.__call__ = originals["aug"]
        Anderson.step = originals["step"]
        for name in ("layer_fn", "layer", "cost_fn"):
            if name in layer_owner.__dict__:
                del layer_owner.__dict__[name]
    events = prof.key_averages()
    # On the CPU (testing the script) the ranges' CPU time stands in for kernel time.
    range_time = _device_time_us if device.type == "cuda" else (lambda e: float(e.cpu_time_total))
    ranges = {e.key: range_time(e) / 1e3 for e in events if e.key.startswith("bench::")}
    kernels = [e for e in events if not e.key.startswith("bench::") and _self_device_time_us(e) > 0
               and not e.key.startswith("aten::")]
    kernel_ms = sum(_self_device_time_us(e) for e in kernels) / 1e3
    launches = sum(e.count for e in kernels)
    top = sorted(kernels, key=_self_device_time_us, reverse=True)[:15]
    aug, f, cost = (ranges.get(f"bench::{k}", 0.0) for k in ("augmented", "f", "cost"))
    # A range's device time is the span from its first to its last kernel (idle gaps of the eager run included), so
    # these are upper bounds per stage, not a partition of kernel_ms; the top kernels are the reliable attribution.
    split = {"f_ms": f, "cost_ms": cost, "joint_vjp_ms": aug - f - cost, "anderson_step_ms": ranges.get(
        "bench::anderson_step", 0.0)}
    return {"eager_wall_ms_profiled": 1e3 * wall, "kernel_ms": kernel_ms, "kernel_launches": launches,
            "range_span_ms": split, "top_kernels": [{"name": e.key[:120], "count": e.count,
                                                "ms": _self_device_time_us(e) / 1e3} for e in top]}


def section_profile(report: Report, device: torch.device, tiny: bool) -> dict[str, Any]:
    """Where JIIO's time goes (issue 14: a missed target is profiled): kernel time by stage in an eager call, against
    the graphed wall time of the same call, for Table 2 (MDEQ-SMALL, batch 96) and Table 3 (generator, batch 48)."""
    from deqbench.tasks.jiio_adversarial import TASK as ADV
    from deqbench.tasks.jiio_adversarial.task import build_model as build_classifier, jio_attack, prepare_dataset
    from deqbench.tasks.jiio_generative.methods import jiio_reconstruct

    out: dict[str, Any] = {}
    settings = ADV.settings(load_profile(PARAMS, PROFILE))
    job = settings.timing()
    data = prepare_dataset(settings.prepare(job.timing.dataset))
    net = job.net
    batch = 8 if tiny else 96
    if tiny:
        net = dataclasses.replace(net, model=dataclasses.replace(
            net.model, channels=(8, 8), expansion=2, fuse_groups=4, head_channels=(4, 8), final_channels=32))
    seed_everything(0)
    model = build_classifier(net, 1, 10).to(device).eval()
    from deqbench.core.norms import reset_norms
    reset_norms(model)
    images = data["test"]["images"][:batch].to(device)
    labels = data["test"]["labels"][:batch].to(device)

    def attack(mode: str) -> Callable[[], Any]:
        n = dataclasses.replace(net, cuda_graph=mode)
        return lambda: jio_attack(model, images, labels, n, job.attack.jio, job.timing.eps)

    def graphed_ms(fn: Callable[[], Any], repeats: int = 3) -> float:
        with torch.no_grad():
            fn()
            samples = []
            for _ in range(repeats):
                sync(device)
                t0 = time.perf_counter()
                fn()
                sync(device)
                samples.append(time.perf_counter() - t0)
        return 1e3 * sorted(samples)[len(samples) // 2]

    with torch.no_grad():
        prof = _attributed_profile(attack("off"), model, device)
    prof["graphed_wall_ms"] = graphed_ms(attack("full"))
    prof["iterations"], prof["batch"] = job.attack.jio.iterations, batch
    out["table2_jiio80"] = prof
    report.headline("profile table2 jiio-80 kernel ms/example batch 96", prof["kernel_ms"] / batch, "ms",
                    f"graphed wall {prof['graphed_wall_ms'] / batch:.2f} ms/example")
    print(f"  table2: {json.dumps({k: v for k, v in prof.items() if k != 'top_kernels'})}", flush=True)

    gbatch = 4 if tiny else 48
    gjob, gen, targets = _generator_setup(device, tiny, gbatch)
    solve = gjob.jiio40

    def reconstruct(mode: str) -> Callable[[], Any]:
        s = dataclasses.replace(solve, cuda_graph=mode)
        return lambda: jiio_reconstruct(gen, targets, None, s)

    with torch.no_grad():
        gprof = _attributed_profile(reconstruct("off"), gen, device)
    gprof["graphed_wall_ms"] = graphed_ms(reconstruct("full"))
    if device.type == "cuda":  # is the generator arithmetic-bound?  the same call with TF32 convolutions / matmuls
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        try:
            gprof["graphed_wall_ms_tf32"] = graphed_ms(reconstruct("full"))
        finally:
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    gprof["iterations"], gprof["batch"] = solve.iterations, gbatch
    out["table3_jiio40"] = gprof
    report.headline("profile table3 jiio-40 kernel ms/example batch 48", gprof["kernel_ms"] / gbatch, "ms",
                    f"graphed wall {gprof['graphed_wall_ms'] / gbatch:.2f} ms/example")
    if "graphed_wall_ms_tf32" in gprof:
        report.headline("profile table3 jiio-40 ms/example batch 48 with TF32", gprof["graphed_wall_ms_tf32"] / gbatch,
                        "ms", "not the fp32 measurement: shows how far arithmetic bounds it")
    print(f"  table3: {json.dumps({k: v for k, v in gprof.items() if k != 'top_kernels'})}", flush=True)
    return out


# ----------------------------------------------------------------------------- pytest benchmarks and torchdeq


def _run(cmd: list[str], timeout: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    print("  $ " + " ".join(cmd), flush=True)
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def section_overhead(report: Report, device: torch.device, tiny: bool, out_dir: Path) -> dict[str, Any]:
    path = out_dir / "overhead_benchmarks.json"
    proc = _run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--benchmark-only",
                 "tests/benchmarks/test_solver_overhead.py", "-k", "not broyden"], 240,
                {"DEQBENCH_BENCH_DEVICES": device.type, "DEQBENCH_BENCH_JSON": str(path)})
    print(proc.stdout[-1500:], flush=True)
    if proc.returncode != 0:
        raise RuntimeError(f"pytest exit {proc.returncode}: {proc.stderr[-1000:]}")
    data = json.loads(path.read_text())
    for r in data["ratios"]:
        if r["numerator"] == "anderson":
            kind = "conv" if "conv" in r["group"] else "mlp"
            report.headline(f"overhead anderson / bare {kind}", r["ratio"], "x", r["group"])
    return data


def section_torchdeq(report: Report, device: torch.device, tiny: bool, out_dir: Path) -> dict[str, Any]:
    path = out_dir / "torchdeq.json"
    cmd = [sys.executable, "tests/benchmarks/compare_torchdeq.py", "--device", device.type, "--out", str(path)]
    cmd += ["--quick"] if tiny else ["--repeats", "10", "--warmup", "3"]
    proc = _run(cmd, 240)
    print(proc.stdout[-2500:], flush=True)
    if proc.returncode != 0:
        raise RuntimeError(f"compare_torchdeq exit {proc.returncode}: {proc.stderr[-1000:]}")
    data = json.loads(path.read_text())
    return data


# ----------------------------------------------------------------------------- training smoke


def _run_jobs(jobs: list[tuple[str, list[str]]], stop_on_failure: bool = False) -> list[dict[str, Any]]:
    """Run command-line jobs one after another; exit status, wall time and output tail of each."""
    results = []
    for name, cmd in jobs:
        t0 = time.perf_counter()
        proc = _run(cmd, 240)
        wall = time.perf_counter() - t0
        tail = (proc.stdout + proc.stderr)[-600:]
        results.append({"job": name, "exit": proc.returncode, "wall_s": wall, "output_tail": tail})
        print(f"  {name}: exit {proc.returncode}, {wall:.1f} s\n    " + tail.strip().replace("\n", "\n    "),
              flush=True)
        if stop_on_failure and proc.returncode != 0:
            raise RuntimeError(f"{name}: exit {proc.returncode}")
    return results


def section_train(report: Report, device: torch.device, tiny: bool, out_dir: Path) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="deqbench-gpu-train-"))
    base = [sys.executable, "-m", "deqbench", "--profile", "smoke" if tiny else PROFILE, "--no-progress"]
    steps = "2" if tiny else "4"
    adv = ["--set", f"jiio_adversarial.train.max_steps={steps}", "--set", "jiio_adversarial.train.log_every=1",
           "--set", "jiio_adversarial.train.checkpoint_every=2"]
    gen = ["--set", f"jiio_generative.train.steps={steps}", "--set", f"jiio_generative.train.inverse_steps={steps}",
           "--set", "jiio_generative.train.log_every=1", "--set", "jiio_generative.train.checkpoint_every=2"]
    jobs = [("jiio_adversarial prepare", base + ["jiio_adversarial", "prepare", "--dataset", "mnist",
                                                 "--out", str(work / "digits.pt")])]
    for method in ("clean", "pgd", "jio"):
        jobs.append((f"jiio_adversarial train {method}", base + adv + [
            "jiio_adversarial", "train", "--data", str(work / "digits.pt"), "--dataset", "mnist", "--method", method,
            "--eps", "0" if method == "clean" else "1", "--seed", "0", "--out", str(work / f"adv_{method}.pt"),
            "--partial", str(work / f"adv_{method}.partial")]))
    jobs.append(("jiio_generative prepare", base + ["jiio_generative", "prepare", "--out", str(work / "faces.pt")]))
    for model, problem in (("jiio40", "reconstruct"), ("mdeq_vae", "reconstruct"), ("jiio40", "inpaint20")):
        jobs.append((f"jiio_generative train {model} {problem}", base + gen + [
            "jiio_generative", "train", "--data", str(work / "faces.pt"), "--model", model, "--problem", problem,
            "--seed", "0", "--out", str(work / f"gen_{model}_{problem}.pt"),
            "--partial", str(work / f"gen_{model}_{problem}.partial")]))
    results = _run_jobs(jobs)
    ok = sum(r["exit"] == 0 for r in results)
    report.headline("train smoke jobs passing", ok, f"of {len(results)}", f"profile {PROFILE}, {steps} steps each")
    return {"profile": PROFILE, "steps": int(steps), "jobs": results}


# ----------------------------------------------------------------------------- the newer models (issue 14 item 6)


def _cli(profile: str) -> list[str]:
    return [sys.executable, "-m", "deqbench", "--profile", profile, "--no-progress"]


def _sets(**values: Any) -> list[str]:
    return [arg for key, value in values.items() for arg in ("--set", f"{key.replace('__', '.')}={value}")]


def section_moptqs(report: Report, device: torch.device, tiny: bool, out_dir: Path) -> dict[str, Any]:
    """MOptEqs Table 6 at the paper's size (ImageNette stand-in at 256 px, batch 32): the MDEQ against the
    one-step MOptEq, a few training steps each (the training smoke), then the ``cost`` stage side by side."""
    from deqbench.tasks.moptqs import TASK

    profile = "smoke" if tiny else PROFILE
    cost = TASK.settings(load_profile(PARAMS, profile)).params.cost
    work = Path(tempfile.mkdtemp(prefix="deqbench-gpu-moptqs-"))
    data = work / f"{cost.dataset}.pt"
    train = _sets(moptqs__train__max_steps=2, moptqs__train__log_every=1, moptqs__train__checkpoint_every=2,
                  moptqs__eval__limit=32)
    jobs = [(f"moptqs prepare {cost.dataset}",
             _cli(profile) + ["moptqs", "prepare", "--dataset", cost.dataset, "--out", str(data)])]
    checkpoints = []
    for model in cost.models:
        checkpoints.append(str(work / f"{model}.pt"))
        jobs.append((f"moptqs train-evaluate {model}", _cli(profile) + train + [
            "moptqs", "train-evaluate", "--data", str(data), "--dataset", cost.dataset, "--model", model,
            "--seed", str(cost.seed), "--out", checkpoints[-1], "--partial", str(work / f"{model}.partial"),
            "--evaluation", str(work / f"{model}_eval.json")]))
    result_path = work / "moptqs_cost.json"  # kept in gpu_check.json
    jobs.append(("moptqs cost", _cli(profile) + _sets(moptqs__cost__repeats=1 if tiny else 5, moptqs__cost__warmup=1)
                 + ["moptqs", "cost", "--data", str(data), "--checkpoints", *checkpoints, "--out", str(result_path)]))
    jobs_run = _run_jobs(jobs, stop_on_failure=True)
    result = json.loads(result_path.read_text())
    mdeq, one_step = result["rows"][0], result["rows"][1]
    batch = result["batch_size"]
    note = (f"{mdeq['label']} vs {one_step['label']}, {result['data_source']}, untrained weights after 2 steps; "
            f"MDEQ {mdeq['memory_bytes'] / 2**30:.2f} GiB / {1e3 * mdeq['inference_seconds']:.1f} ms inference / "
            f"{1e3 * mdeq['train_step_seconds']:.1f} ms step; one-step {one_step['memory_bytes'] / 2**30:.2f} GiB / "
            f"{1e3 * one_step['inference_seconds']:.1f} ms / {1e3 * one_step['train_step_seconds']:.1f} ms")
    report.headline(f"moptqs memory one-step / mdeq batch {batch}",
                    one_step["memory_bytes"] / max(mdeq["memory_bytes"], 1), "x", "paper 3.0 / 8.0 GB; " + note)
    report.headline(f"moptqs inference mdeq / one-step batch {batch}",
                    mdeq["inference_seconds"] / one_step["inference_seconds"], "x", "paper 1.06 / 0.26 s")
    report.headline(f"moptqs train step mdeq / one-step batch {batch}",
                    mdeq["train_step_seconds"] / one_step["train_step_seconds"], "x", "paper: 9 h / 3 h in total")
    return {"profile": profile, "jobs": jobs_run, "cost": result}


def section_implicit2(report: Report, device: torch.device, tiny: bool, out_dir: Path) -> dict[str, Any]:
    """(Implicit)^2 at the paper's width on a 512 px stand-in image: one short fit of every size (the training
    smoke), then the ``cost`` stage (explicit nL, full-solve DEQ with M iterations, amortised, per step)."""
    from deqbench.tasks.implicit2 import TASK

    profile = "smoke" if tiny else PROFILE
    params = TASK.settings(load_profile(PARAMS, profile)).params
    work = Path(tempfile.mkdtemp(prefix="deqbench-gpu-implicit2-"))
    result_path = work / "implicit2_cost.json"  # kept in gpu_check.json
    dataset, filt = params.generalization.sets[0], params.cost.filter
    jobs = [(f"implicit2 fit {dataset} image 0 {filt}", _cli(profile) + _sets(
                implicit2__train__steps=4, implicit2__train__log_every=1)
             + ["implicit2", "fit", "--dataset", dataset, "--image", "0", "--filter", filt,
                "--out", str(work / "fit.json")]),
            ("implicit2 cost", _cli(profile) + _sets(implicit2__cost__repeats=1 if tiny else 5,
                                                     implicit2__cost__warmup=1)
             + ["implicit2", "cost", "--out", str(result_path)])]
    jobs_run = _run_jobs(jobs, stop_on_failure=True)
    result = json.loads(result_path.read_text())
    content = {"profile": profile, "jobs": jobs_run, "cost": result}
    implicit2_headlines(report, content)
    return content


def implicit2_headlines(report: Report, content: dict[str, Any]) -> None:
    """Headline rows of the (Implicit)^2 cost section, in the terms of claim IMP2-COST: amortised time per step
    at the largest M over the smallest, the full-solve DEQ's, the explicit net's largest L over smallest, and the
    full-solve DEQ and explicit net against the amortised model."""
    result = content["cost"]
    ms = {(r["kind"], r["layers"], r["solver_iterations"]): 1e3 * r["step_seconds"] for r in result["rows"]}
    m_all = sorted(m for kind, _, m in ms if kind == "amortized")
    l_all = sorted(layers for kind, layers, _ in ms if kind == "explicit")
    amortized = ms[("amortized", 1, m_all[-1])]
    note = (f"width {result['width']}, {result['n_pixels']} pixels, {result['image_name']}; "
            + ", ".join(f"{k[0]} L={k[1]} M={k[2]}: {v:.2f} ms" for k, v in sorted(ms.items(), key=str)))
    report.headline(f"implicit2 amortized step M={m_all[-1]} / M={m_all[0]}",
                    amortized / ms[("amortized", 1, m_all[0])], "x", "O(1) in M if near 1; " + note)
    report.headline(f"implicit2 deq step M={m_all[-1]} / M={m_all[0]}",
                    ms[("deq_full_solve", 1, m_all[-1])] / ms[("deq_full_solve", 1, m_all[0])], "x",
                    "full solve every step: O(M)")
    report.headline(f"implicit2 explicit step {l_all[-1]}L / {l_all[0]}L",
                    ms[("explicit", l_all[-1], None)] / ms[("explicit", l_all[0], None)], "x", "O(L)")
    report.headline(f"implicit2 deq M={m_all[-1]} / amortized step", ms[("deq_full_solve", 1, m_all[-1])] / amortized,
                    "x", "per training step (forward, backward, Adam)")
    report.headline(f"implicit2 explicit {l_all[-1]}L / amortized 1L step", ms[("explicit", l_all[-1], None)]
                    / amortized, "x", "per training step (forward, backward, Adam)")


def section_meta(report: Report, device: torch.device, tiny: bool, out_dir: Path) -> dict[str, Any]:
    """JIIO meta-learning at the paper's size (digits stand-in at 28 px): a few meta-steps of every Table 6 method
    (the training smoke), then Table 7 (Adam-20 vs JIIO-100 on one batch of tasks) with the JIIO-DEQ checkpoint."""
    from deqbench.tasks.jiio_meta import TASK

    profile = "smoke" if tiny else PROFILE
    params = TASK.settings(load_profile(PARAMS, profile)).params
    work = Path(tempfile.mkdtemp(prefix="deqbench-gpu-meta-"))
    train = _sets(jiio_meta__eval__tasks=params.eval.batch_tasks if not tiny else 4,
                  **{f"jiio_meta__{m}__meta_steps": 2 for m in params.methods})
    jobs = []
    for method in params.methods:
        jobs.append((f"jiio_meta train {method}", _cli(profile) + train + [
            "jiio_meta", "train", "--method", method, "--checkpoint", str(work / f"{method}.pt"),
            "--partial", str(work / f"{method}.partial"), "--out", str(work / f"{method}.json")]))
    result_path = work / "meta_timing.json"  # kept in gpu_check.json
    jobs.append(("jiio_meta timing", _cli(profile) + ["jiio_meta", "timing", "--checkpoint",
                                                      str(work / "jiio_deq.pt"), "--out", str(result_path)]))
    jobs_run = _run_jobs(jobs)
    ok = sum(r["exit"] == 0 for r in jobs_run[:-1])
    report.headline("meta train smoke jobs passing", ok, f"of {len(jobs_run) - 1}",
                    f"profile {profile}, 2 meta-steps each (paper models)")
    if jobs_run[-1]["exit"] != 0:
        raise RuntimeError("jiio_meta timing failed")
    result = json.loads(result_path.read_text())
    adam, jiio = result["rows"]["adam"], result["rows"]["jiio"]
    report.headline(f"meta {adam['label']} / {jiio['label']} batch {result['tasks']} tasks", result["ratio"], "x",
                    f"{adam['ms_per_task']:.1f} vs {jiio['ms_per_task']:.1f} ms per task; f/VJP "
                    f"{adam['f_evals']}/{adam['vjps']} vs {jiio['f_evals']}/{jiio['vjps']}; paper-size FiLM MDEQ "
                    f"after 2 meta-steps")
    return {"profile": profile, "jobs": jobs_run, "timing": result}


SECTIONS = ("table2", "table3", "memory", "attack_memory", "profile", "overhead", "torchdeq", "train", "moptqs",
            "implicit2", "meta")
HEADLINES = {"table2": table2_headlines, "implicit2": implicit2_headlines}  # re-derived from raw rows by --merge
WRITES_FILES = ("overhead", "torchdeq", "train", "moptqs", "implicit2", "meta")  # sections that take the output folder


def merge_runs(run_dirs: list[Path], out: Path) -> int:
    """Write one report from several runs' ``gpu_check.json`` (their environments listed under ``runs``)."""
    runs = [json.loads((d / "gpu_check.json").read_text()) for d in run_dirs]
    devices = {r["environment"]["device"] for r in runs}
    if len(devices) != 1:
        print(f"--merge: runs on different devices {sorted(devices)}; ratios would not compare", file=sys.stderr)
        return 2
    report = Report(out, runs[0]["environment"])
    report.data["runs"] = [{"dir": str(d), **r["environment"]} for d, r in zip(run_dirs, runs)]
    sections = {name: content for run in runs for name, content in run["sections"].items()}
    derived = [name for name in HEADLINES if "error" not in sections.get(name, {"error": "absent"})]
    rows: dict[str, dict[str, Any]] = {}
    for run in runs:
        rows.update({row["measurement"]: row for row in run.get("headlines", [])
                     if row["measurement"].split(" ")[0] not in derived})
    report.rows = list(rows.values())
    for name in derived:
        HEADLINES[name](report, sections[name])
    for name, content in sections.items():
        report.section(name, content)
    print(f"merged {len(runs)} runs: {len(report.rows)} headline rows -> {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(REPO / "results" / "gpu"))
    parser.add_argument("--tiny", action="store_true", help="tiny sizes, for testing the script on a CPU")
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--deadline", type=float, default=450.0, help="skip sections that start after this many s")
    parser.add_argument("--no-adam-cost", action="store_true", help="memory section: skip Adam-40's full run")
    parser.add_argument("--merge", nargs="+", metavar="RUN_DIR",
                        help="combine the gpu_check.json of several runs (same device) into --out, re-deriving the "
                             "Table 2 headlines from the raw rows; later runs' sections win")
    args = parser.parse_args(argv)
    if args.merge:
        return merge_runs([Path(d) for d in args.merge], Path(args.out))
    global ADAM_COST
    ADAM_COST = not args.no_adam_cost
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = True
    elif not args.tiny:
        print("no CUDA device: use --tiny to test the script on a CPU", file=sys.stderr)
        return 2
    out = Path(args.out)
    report = Report(out, environment())
    print(json.dumps(report.data["environment"]), flush=True)
    start = time.perf_counter()
    failures = 0
    for name in args.sections.split(","):
        elapsed = time.perf_counter() - start
        if elapsed > args.deadline:
            report.section(name, {"skipped": f"deadline: started {elapsed:.0f} s in"})
            continue
        print(f"== {name} ({elapsed:.0f} s in)", flush=True)
        t0 = time.perf_counter()
        try:
            fn = globals()[f"section_{name}"]
            content = fn(report, device, args.tiny, out) if name in WRITES_FILES else fn(report, device, args.tiny)
            content["wall_s"] = time.perf_counter() - t0
        except Exception as err:  # keep measuring the other sections; the error goes in the report
            failures += 1
            traceback.print_exc()
            content = {"error": f"{type(err).__name__}: {err}", "wall_s": time.perf_counter() - t0}
        report.section(name, content)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        sync(device)
    print(f"== done in {time.perf_counter() - start:.0f} s, {failures} section(s) failed", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
