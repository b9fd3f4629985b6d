"""MOptEqs Table 6 (appendix A.11.2): the cost of an MDEQ against a one-step-gradient MOptEq, side by side.

Per model: the peak memory of one training step (forward and backward) at the paper's batch of 32, the inference
time per batch (each model infers as it trains: the MDEQ solves to tolerance, the one-step MOptEq runs its K plain
iterations), and the training-step time per batch.  Timings alternate between the models within one process, so a
ratio compares the algorithms on the same machine state; memory is measured per model in a fresh child process on
the CPU (the peak RSS belongs to the whole process) and in this process on CUDA.  Total training time and accuracy
come from the models' training and evaluation jobs.
"""

from __future__ import annotations

import json
import statistics
import time
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from deqbench.experiments.config import ConfigError
from deqbench.experiments.io import atomic_write_json, load_artifact
from deqbench.experiments.memory import peak_memory, probe_in_child
from deqbench.experiments.registry import Job
from deqbench.experiments.runtime import data_source_label, seed_everything
from deqbench.experiments.tables import Column, TableRows, TableSpec, measured_on, read_results
from deqbench.tasks.moptqs.settings import AnyModel, CostJob, TableJob
from deqbench.tasks.moptqs.task import Classifier, load_model


def _is_one_step(model: AnyModel) -> bool:
    return getattr(model, "gradient", "implicit") == "one_step"


def model_kwargs(job: CostJob, model: AnyModel, inference: bool) -> dict[str, Any]:
    """Forward keyword arguments: the solve (training or evaluation iterations) and, for one-step models, K."""
    f, b = job.solver.forward, job.solver.backward
    kwargs: dict[str, Any] = {
        "solver": f.method, "max_iter": job.eval_max_iter if inference else f.max_iter, "tol": f.tol,
        "solver_options": f.options(), "backward": "ift",
        "backward_options": {"method": b.method, "max_iter": b.max_iter, "tol": b.tol, **b.options()}}
    if _is_one_step(model):
        kwargs.update(gradient="one_step", one_step_iterations=job.one_step_iterations)
    return kwargs


def training_step(model: Classifier, images: Tensor, labels: Tensor, kwargs: dict[str, Any]) -> None:
    """Forward and backward of one training step (no optimiser update), in training mode."""
    model.train()
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(images, **kwargs), labels).backward()


def _batch(data: dict[str, Any], size: int, device: torch.device) -> tuple[Tensor, Tensor]:
    images, labels = data["test"]["images"], data["test"]["labels"]
    if len(labels) < size:
        raise ConfigError(f"moptqs.cost.batch_size {size} exceeds the {len(labels)} test images")
    return images[:size].to(device), labels[:size].to(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def memory_probe(job: CostJob, name: str, checkpoint: str, data: dict[str, Any], device: torch.device
                 ) -> dict[str, Any]:
    """Peak memory of one training step of model ``name`` at ``cost.batch_size`` (memory.peak_memory)."""
    models = dict(job.models)
    if name not in models:
        raise ConfigError(f"memory probe: {name!r} is not one of moptqs.cost.models {list(models)}")
    seed_everything(job.cost.seed)
    model, _ = load_model(name, models[name], data, checkpoint, device)
    images, labels = _batch(data, job.cost.batch_size, device)
    kwargs = model_kwargs(job, models[name], inference=False)
    measured = peak_memory(lambda: training_step(model, images, labels, kwargs), device)
    return {"model_key": name, "batch_size": job.cost.batch_size, **measured}


def time_side_by_side(job: CostJob, models: Sequence[tuple[str, Classifier]], data: dict[str, Any],
                      device: torch.device) -> dict[str, dict[str, Any]]:
    """Seconds per batch of inference and of a training step, models alternating within each repeat; medians."""
    images, labels = _batch(data, job.cost.batch_size, device)
    params = dict(job.models)
    calls: dict[str, Callable[[], Any]] = {}
    for name, model in models:
        infer_kwargs = model_kwargs(job, params[name], inference=True)
        train_kwargs = model_kwargs(job, params[name], inference=False)

        def infer(model: Classifier = model, kwargs: dict[str, Any] = infer_kwargs) -> None:
            model.eval()
            with torch.no_grad():
                model(images, **kwargs)

        calls[f"{name}/inference"] = infer
        calls[f"{name}/train_step"] = lambda model=model, kwargs=train_kwargs: training_step(model, images, labels,
                                                                                             kwargs)
    seconds: dict[str, list[float]] = {key: [] for key in calls}
    for repeat in range(job.cost.warmup + job.cost.repeats):
        for key, call in calls.items():
            _sync(device)
            start = time.perf_counter()
            call()
            _sync(device)
            if repeat >= job.cost.warmup:
                seconds[key].append(time.perf_counter() - start)
    out: dict[str, dict[str, Any]] = {}
    for key, values in seconds.items():
        name, kind = key.split("/")
        out.setdefault(name, {})[f"{kind}_seconds"] = statistics.median(values)
        out[name][f"{kind}_seconds_all"] = values
    return out


def measure(job: Job, checkpoints: Sequence[str], data_path: str) -> dict[str, Any]:
    """Table 6's per-model costs: side-by-side timings here, memory per model (child processes on the CPU)."""
    settings: CostJob = job.settings
    if len(checkpoints) != len(settings.models):
        raise ConfigError(f"cost: {len(settings.models)} models (moptqs.cost.models) but {len(checkpoints)} "
                          f"checkpoints")
    data = load_artifact(data_path)
    if job.device.type == "cuda":
        memory = [memory_probe(settings, name, ck, data, job.device) for (name, _), ck in zip(settings.models,
                                                                                             checkpoints)]
    else:
        memory = [probe_in_child(job, "moptqs", "memory-probe", ["--data", data_path, "--model", name,
                                                                  "--checkpoint", ck])
                  for (name, _), ck in zip(settings.models, checkpoints)]
    seed_everything(settings.cost.seed)
    loaded = [(name, load_model(name, params, data, ck, job.device)[0])
              for (name, params), ck in zip(settings.models, checkpoints)]
    timings = time_side_by_side(settings, loaded, data, job.device)
    rows = []
    for (name, params), mem in zip(settings.models, memory):
        rows.append({"model_key": name, "label": params.label, "gradient": getattr(params, "gradient", "implicit"),
                     "num_parameters": dict(loaded)[name].num_parameters(), "memory_bytes": mem["peak_bytes"],
                     "memory_measure": mem["measure"], **timings[name]})
    return {"rows": rows, "batch_size": settings.cost.batch_size, "repeats": settings.cost.repeats,
            "warmup": settings.cost.warmup, "one_step_iterations": settings.one_step_iterations,
            "eval_max_iter": settings.eval_max_iter, "data_source": data_source_label(data["meta"]),
            "seed": settings.cost.seed}


def run_cost(job: Job) -> None:
    a = job.args
    result = measure(job, list(a.checkpoints), a.data)
    result["provenance"] = job.provenance(seeds=[result["seed"]])
    atomic_write_json(a.out, result)
    for r in result["rows"]:
        print(f"{r['label']}: {r['memory_bytes'] / 2**20:.1f} MiB per training step, inference "
              f"{r['inference_seconds']:.4f} s / batch, training step {r['train_step_seconds']:.4f} s / batch")


def run_memory_probe(job: Job) -> None:
    a = job.args
    print(json.dumps(memory_probe(job.settings, a.model, a.checkpoint, load_artifact(a.data), job.device)))


# ----------------------------------------------------------------------------- the table


# The paper's Table 6 (ImageNette, 32 images per batch, 2x GTX 1080Ti): memory GB, inference s / batch, total
# training hours, accuracy %.
PAPER_TABLE6 = {"mdeq": (8.0, 1.06, 9.0, 91.42), "one_step": (3.0, 0.26, 3.0, 91.21)}


def build_table6(job: TableJob, files: Sequence[str]) -> TableRows:
    """One row per model: memory, inference and training-step time (the cost file), total training time and
    accuracy (mean over the seeds' evaluations), and their ratios to the first (MDEQ) row."""
    results = read_results(files)
    costs = [r for r in results if "rows" in r]
    evaluations = [r for r in results if "accuracy" in r]
    if len(costs) != 1:
        raise ConfigError(f"{job.table}: expected one cost file, got {len(costs)}")
    cost = {r["model_key"]: r for r in costs[0]["rows"]}
    rows = []
    for dataset, key, model in job.rows:
        runs = [r for r in evaluations if r["train"]["model_name"] == key]
        if not runs:
            raise ConfigError(f"{job.table}: no evaluation of model {key!r}")
        if key not in cost:
            raise ConfigError(f"{job.table}: the cost file has no row for {key!r} (moptqs.cost.models)")
        c = cost[key]
        accuracy = [r["accuracy"] for r in runs]
        one_step = c["gradient"] == "one_step"
        paper = PAPER_TABLE6["one_step" if one_step else "mdeq"]
        rows.append({"model": model.label, "model_key": key, "gradient": c["gradient"],
                     "num_parameters": c["num_parameters"], "memory_mib": c["memory_bytes"] / 2**20,
                     "inference_seconds": c["inference_seconds"], "train_step_seconds": c["train_step_seconds"],
                     "train_seconds_mean": statistics.fmean(r["train"]["train_seconds"] for r in runs),
                     "accuracy_mean": statistics.fmean(accuracy),
                     "accuracy_std": statistics.stdev(accuracy) if len(accuracy) > 1 else float("nan"),
                     "n_seeds": len(runs), "forward_iterations_mean": statistics.fmean(
                         r["forward_iterations_mean"] for r in runs),
                     "paper_memory_gb": paper[0], "paper_inference_seconds": paper[1], "paper_train_hours": paper[2],
                     "paper_accuracy": paper[3], "memory_measure": c["memory_measure"], "profile": job.profile,
                     "data_source": runs[0]["data_source"]})
    base = rows[0]
    for r in rows:
        for column in ("memory_mib", "inference_seconds", "train_step_seconds", "train_seconds_mean"):
            r[f"{column}_ratio"] = base[column] / r[column] if r[column] else None
    caption = {"profile": job.profile, "data": rows[0]["data_source"], "batch": costs[0]["batch_size"],
               "repeats": costs[0]["repeats"], "k": costs[0]["one_step_iterations"],
               "max_iter": costs[0]["eval_max_iter"], "seeds": sorted({r["train"]["seed"] for r in evaluations}),
               "cost_seed": costs[0]["seed"]}
    return TableRows(rows, caption, {"cost_file": costs[0]["_file"], "measured_on": measured_on(costs)})


def table6_metrics(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {r["model_key"]: {k: r[k] for k in ("memory_mib", "inference_seconds", "train_step_seconds",
                                               "train_seconds_mean", "accuracy_mean")} for r in rows}


TABLE6 = TableSpec(
    name="moptqs_table6", task="moptqs", paper="moptqs", source="MOptEqs paper Table 6 (appendix A.11.2)",
    title="MOptEqs Table 6: MDEQ vs one-step-gradient MOptEq, memory and time",
    caption=("Per model at a batch of {batch}: peak memory of one training step (forward and backward), inference "
             "time per batch (the MDEQ solves to tolerance, at most {max_iter} iterations; the one-step MOptEq runs "
             "its K = {k} plain iterations, as it trains) and training-step time per batch, medians of {repeats} "
             "repeats with the models alternating in one process (checkpoints of seed {cost_seed}); total training "
             "time and test accuracy are means over seeds {seeds}. '_ratio' columns: the first row's value over this "
             "row's (how many times cheaper). K and the one-step model's size are not given by the paper "
             "(AMBIG-A8); its hardware (2x GTX 1080Ti) is not ours, so only ratios compare. Profile {profile}; data "
             "{data}."),
    columns=(Column("model"), Column("model_key", "params.yaml model"), Column("gradient"),
             Column("num_parameters", "parameters"), Column("memory_mib", "memory per training step", "MiB"),
             Column("inference_seconds", "inference time per batch", "s"),
             Column("train_step_seconds", "training step per batch", "s"),
             Column("train_seconds_mean", "total training time", "s"), Column("accuracy_mean", "accuracy", "%"),
             Column("accuracy_std", "std over seeds", "%"), Column("n_seeds", "seeds"),
             Column("forward_iterations_mean", "forward iterations at test"),
             Column("memory_mib_ratio", "memory ratio (first row / this)"),
             Column("inference_seconds_ratio", "inference speed-up (first row / this)"),
             Column("train_step_seconds_ratio", "training-step speed-up (first row / this)"),
             Column("train_seconds_mean_ratio", "total training speed-up (first row / this)"),
             Column("paper_memory_gb", "memory per batch", "GB", reference_for="memory_mib"),
             Column("paper_inference_seconds", "inference time per batch", "s", reference_for="inference_seconds"),
             Column("paper_train_hours", "total time", "h", reference_for="train_seconds_mean"),
             Column("paper_accuracy", "accuracy", "%", reference_for="accuracy_mean"),
             Column("memory_measure", "memory measured as"), Column("profile"), Column("data_source", "data")),
    settings_of=lambda settings: settings.table("moptqs_table6"), build=build_table6, metrics=table6_metrics,
)

