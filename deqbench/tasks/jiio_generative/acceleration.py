"""The accelerator inside JIIO: Broyden vs Anderson Type-I vs Type-II (JIIO paper appendix A.2, Figure 4).

JIIO (eqs. 10-11) reconstructs the first ``acceleration.images`` test images with the decoder of the pre-trained
MDEQ-VAE (eq. 20, from z = 0, x = 0) for ``jiio.test_iterations`` iterations, once per accelerator, each with the
``jiio`` block's step sizes and memory.  Per iteration it records the mean over images of the reconstruction cost
at the iterate and of the residual JIIO reports for the augmented system: ||F(v) - v|| / ||F(v)|| of the damped
primal-dual map of eq. (11), whose fixed points are the KKT points of eq. (14).  The paper: Type-I reaches the
lowest cost in 100 iterations, Type-II is smoother but plateaus higher, Broyden chases stationary points.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from deqbench.experiments.io import atomic_write_json, load_artifact, save_figure
from deqbench.experiments.registry import Job
from deqbench.experiments.runtime import data_source_label
from deqbench.experiments.tables import Column, TableRows, TableSpec, read_results
from deqbench.inputopt.jiio import JIIOResult
from deqbench.models.mdeq_generator import MDEQGenerator
from deqbench.tasks.jiio_generative.methods import generator_of, jiio_reconstruct, to_model_range
from deqbench.tasks.jiio_generative.settings import AccelerationJob, JIIOSolve, TableJob
from deqbench.tasks.jiio_generative.tables import PAPER, TASK, _device, _settings
from deqbench.tasks.jiio_generative.task import batches, load_model, test_images

# Accelerator name -> (JIIO method, solver options for a memory of m).
ACCELERATORS: dict[str, tuple[str, Callable[[int], dict[str, Any]]]] = {
    "broyden": ("broyden", lambda m: {"memory": m}),
    "anderson_I": ("anderson", lambda m: {"m": m, "kind": "I"}),
    "anderson_II": ("anderson", lambda m: {"m": m, "kind": "II"}),
}
LABELS = {"broyden": "Broyden", "anderson_I": "Anderson Type-I", "anderson_II": "Anderson Type-II"}


def jiio_accelerated(gen: MDEQGenerator, observed: Tensor, solve: JIIOSolve, accelerator: str) -> JIIOResult:
    """JIIO on ``min ||h(z) - observed||^2`` (eq. 20) from z = 0, x = 0 with ``accelerator``."""
    method, options = ACCELERATORS[accelerator]
    return jiio_reconstruct(gen, observed, None, solve, method=method, solver_options=options(solve.memory))


def _finite_mean(values: Tensor) -> tuple[float | None, int]:
    """Mean of the finite entries (None if there are none) and how many there are."""
    finite = torch.isfinite(values)
    n = int(finite.sum())
    return (float(values[finite].double().mean()) if n else None), n


def compare_accelerators(job: AccelerationJob, checkpoint: str, data: dict[str, Any], device: torch.device
                         ) -> dict[str, Any]:
    """Per accelerator and iteration: mean cost and KKT residual over the test images (the curves of Figure 4),
    and per accelerator the final cost, the mean per-image lowest cost and the final residual."""
    model, state = load_model(job.arch, checkpoint, device)
    gen = generator_of(model)
    test = test_images(data, job.images)
    curves, summary = [], {}
    for name in ACCELERATORS:
        costs, residuals = [], []
        for sl in batches(test.shape[0], job.batch_size):
            with torch.no_grad():
                res = jiio_accelerated(gen, to_model_range(test[sl], device), job.jiio, name)
            costs.append(res.trace_cost.cpu())
            residuals.append(res.trace_residual.cpu())
        cost, residual = torch.cat(costs), torch.cat(residuals)  # (images, iterations)
        for k in range(cost.shape[1]):
            mean_cost, finite = _finite_mean(cost[:, k])
            curves.append({"solver": name, "iteration": k + 1, "cost": mean_cost,
                           "kkt_residual": _finite_mean(residual[:, k])[0], "finite_images": finite})
        lowest = torch.where(torch.isfinite(cost), cost, math.inf).min(1).values
        summary[name] = {"final_cost": curves[-1]["cost"], "final_kkt_residual": curves[-1]["kkt_residual"],
                         "best_cost": _finite_mean(lowest)[0]}
    return {"curves": curves, "summary": summary, "n_images": int(test.shape[0]), "iterations": job.jiio.iterations,
            "memory": job.jiio.memory, "model": state["name"], "train": state["summary"],
            "checkpoint_settings_hash": state["settings_hash"]}


def run_acceleration(job: Job) -> None:
    a = job.args
    data = load_artifact(a.data)
    out = compare_accelerators(job.settings, a.checkpoint, data, job.device)
    out["data_source"] = data_source_label(data["meta"])
    out["provenance"] = job.provenance(seeds=[out["train"]["seed"]])
    atomic_write_json(a.out, out)
    for name, s in out["summary"].items():
        print(f"{name}: final cost {s['final_cost']}, lowest {s['best_cost']}, final KKT residual "
              f"{s['final_kkt_residual']}")


# ----------------------------------------------------------------------------- Figure 4


def _build_figure4(job: TableJob, files: Sequence[str]) -> TableRows:
    (result,) = read_results(files)
    rows = [{**c, **result["summary"][c["solver"]], "n_images": result["n_images"], "profile": job.profile,
             "data_source": result["data_source"]} for c in result["curves"]]
    fields = {"profile": job.profile, "device": _device(result), "data": result["data_source"],
              "images": result["n_images"], "iterations": result["iterations"], "memory": result["memory"]}
    return TableRows(rows, fields, {"acceleration_file": files[0], "measured_on": [result["provenance"]["device"]],
                                    "seeds": [result["train"]["seed"]], "model": result["model"],
                                    "checkpoint_settings_hash": result["checkpoint_settings_hash"]})


def _draw_figure4(rows: list[dict[str, Any]], png: Path, caption: str) -> None:
    """Reconstruction cost and KKT residual against the iteration, one curve per accelerator, log y."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), squeeze=False)
    for ax, key, label in zip(axes[0], ("cost", "kkt_residual"),
                              ("reconstruction cost (sum of squares)", "KKT residual ||F(v) - v|| / ||F(v)||")):
        for solver in dict.fromkeys(r["solver"] for r in rows):
            pts = [r for r in rows if r["solver"] == solver and r[key] is not None and r[key] > 0]
            ax.plot([p["iteration"] for p in pts], [p[key] for p in pts], label=LABELS.get(solver, solver), lw=1.2)
        ax.set_xlabel("JIIO iteration")
        ax.set_ylabel(label)
        ax.set_yscale("log")
        ax.legend()
    save_figure(fig, png, caption.split(" Paper columns:")[0])


FIGURE4 = TableSpec(
    "figure4", TASK, PAPER, "JIIO paper, Figure 4 (appendix A.2, pre-trained MDEQ-VAE decoder; a plot, no numbers)",
    "Figure 4: accelerators inside JIIO (Broyden, Anderson Type-I, Type-II)",
    "JIIO reconstructing {images} test images with the pre-trained MDEQ-VAE decoder for {iterations} iterations, "
    "accelerated by Broyden, Anderson Type-I or Anderson Type-II (memory {memory} each, the jiio block's step "
    "sizes): mean over images of the reconstruction cost at the iterate and of the KKT residual "
    "||F(v) - v|| / ||F(v)|| of the augmented map (eq. 11) per iteration; `final_cost` is the cost at the last "
    "iteration, `best_cost` the mean of each image's lowest cost; {data} on {device}; profile `{profile}`. The "
    "paper: Type-I reaches the lowest cost, Type-II plateaus higher.",
    (Column("solver"), Column("iteration"), Column("cost", "reconstruction cost, mean"),
     Column("kkt_residual", "KKT residual, mean"), Column("finite_images", "images with a finite cost"),
     Column("final_cost", "cost at the last iteration"), Column("best_cost", "lowest cost per image, mean"),
     Column("final_kkt_residual", "KKT residual at the last iteration"), Column("n_images", "test images"),
     Column("profile"), Column("data_source", "data")),
    _settings("figure4"), _build_figure4,
    lambda rows: {f"{r['solver']}/{key}": r[key] for r in rows for key in ("final_cost", "best_cost")
                  if r[key] is not None},
    _draw_figure4, plot={"x": "iteration", "y": "cost"},
)
