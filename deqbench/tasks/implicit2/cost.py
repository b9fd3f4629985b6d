"""Cost per training step of explicit nL, a full-solve DEQ and the amortised (Implicit)^2 model, side by side.

The reference README's figure claims per-step time and memory of O(L) for an explicit network of L layers, O(M)
for a DEQ whose forward solve takes M iterations, and O(1) for (Implicit)^2, which applies F once per step from
its cached fixed point (spec C.2, C.6: no values are given).  Measured here in one process, the models alternating
within each repeat so ratios compare the algorithms on the same machine state:

* explicit nL-dD, one pass, for each L of ``cost.layers``;
* a DEQ 1L-dD that solves from zero with exactly M forward iterations every step (tolerance ~0), for each M of
  ``cost.solver_iterations``, with the block's backward;
* the amortised 1L-dD model (``train.amortize_iters`` F applications per step, after a warm-up step's solve of
  at most M iterations), for each M: its time per step should not depend on M.

Memory: the bytes autograd keeps for the backward of one step (saved tensors, deduplicated by storage; what
grows with depth), and on CUDA also the peak allocation above the pre-step level.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F

from deqbench.data.implicit2 import to_model_range
from deqbench.experiments.io import atomic_write_json
from deqbench.experiments.registry import Job
from deqbench.experiments.runtime import sync
from deqbench.models.implicit_repr import AmortizedFixedPoint
from deqbench.tasks.implicit2.settings import CostJob, model_config
from deqbench.tasks.implicit2.training import FCounter, build_model, load_image, num_parameters

_EXACT_M_TOL = 1e-30  # a positive tolerance no relative residual reaches: the solve runs exactly max_iter iterations


def saved_tensor_bytes(fn: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Run ``fn`` (a forward returning the loss) and count the bytes of every tensor autograd saves for backward,
    each storage once (spec C.6 cost figure: activation memory)."""
    seen: dict[tuple[Any, ...], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        """Record the bytes of one saved tensor's storage (spec C.6 memory)."""
        try:
            key: tuple[Any, ...] = (t.untyped_storage().data_ptr(), t.device.type)
            size = t.untyped_storage().nbytes()
        except (RuntimeError, NotImplementedError):  # tensors without storage (e.g. sparse / wrapped)
            key, size = (id(t),), t.numel() * t.element_size()
        seen[key] = max(seen.get(key, 0), size)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = fn()
    return loss, sum(seen.values())


def _models(job: CostJob, device: torch.device) -> list[dict[str, Any]]:
    """(kind, L, M, model, step callable) of every model the figure compares."""
    c = job.cost
    entries: list[dict[str, Any]] = []
    for layers in c.layers:
        cfg = model_config(job.model, job.solver, c.filter, f"{layers}L-{c.width}D", False)
        entries.append({"kind": "explicit", "layers": layers, "solver_iterations": None,
                        "model": build_model(cfg, c.seed, device)})
    for m in c.solver_iterations:
        cfg = model_config(job.model, job.solver, c.filter, f"1L-{c.width}D", True, amortize_iters=0)
        model = build_model(dataclasses.replace(cfg, max_iter=m, tol=_EXACT_M_TOL, check_every=m), c.seed, device)
        entries.append({"kind": "deq_full_solve", "layers": 1, "solver_iterations": m, "model": model,
                        "forward": AmortizedFixedPoint(model, 0)})
        cfg = model_config(job.model, job.solver, c.filter, f"1L-{c.width}D", True,
                           amortize_iters=job.train.amortize_iters)
        model = build_model(dataclasses.replace(cfg, max_iter=m), c.seed, device)  # M bounds only the step-0 solve
        entries.append({"kind": "amortized", "layers": 1, "solver_iterations": m, "model": model,
                        "forward": AmortizedFixedPoint(model)})
    return entries


def measure(job: CostJob, device: torch.device) -> dict[str, Any]:
    """Median seconds per training step (forward, backward, Adam) of every model, alternating within each repeat,
    and the autograd-saved bytes of one step (and the CUDA peak on a GPU); F applications per step counted
    (spec C.6)."""
    c = job.cost
    image = load_image(job.data, job.data_root, "natural", 0)
    x, y = image.train_coords.to(device), to_model_range(image.train_targets).to(device)
    entries = _models(job, device)
    for e in entries:
        model = e["model"]
        e["optimizer"] = torch.optim.Adam(model.parameters(), lr=job.train.lr)
        forward = e.get("forward") or model

        def loss_fn(forward: Any = forward) -> torch.Tensor:
            """MSE of one training forward on 2y - 1 (spec C.3)."""
            return F.mse_loss(forward(x), y)

        def step(model: Any = model, loss_fn: Callable[[], torch.Tensor] = loss_fn, e: dict[str, Any] = e) -> None:
            """One training step: forward, backward, Adam (spec C.3)."""
            e["optimizer"].zero_grad(set_to_none=True)
            loss_fn().backward()
            e["optimizer"].step()

        e["loss_fn"], e["step"], e["seconds"] = loss_fn, step, []
        step()  # warm-up: the amortised model's step-0 solve, allocator and thread-pool start-up
    for repeat in range(c.warmup + c.repeats):
        for e in entries:
            sync(device)
            start = time.perf_counter()
            e["step"]()
            sync(device)
            if repeat >= c.warmup:
                e["seconds"].append(time.perf_counter() - start)
    rows = []
    for e in entries:
        model = e["model"]
        counter = FCounter(model)
        e["optimizer"].zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            before = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
        loss, saved = saved_tensor_bytes(e["loss_fn"])
        loss.backward()
        peak = torch.cuda.max_memory_allocated(device) - before if device.type == "cuda" else None
        counter.close()
        rows.append({"kind": e["kind"], "layers": e["layers"], "solver_iterations": e["solver_iterations"],
                     "size": model.config.size, "label": model.config.label, "num_parameters": num_parameters(model),
                     "step_seconds": statistics.median(e["seconds"]), "step_seconds_all": e["seconds"],
                     "saved_bytes": saved, "cuda_peak_bytes": peak, "f_applications_per_step": counter.count})
    return {"rows": rows, "filter": c.filter, "width": c.width, "n_pixels": int(x.shape[0]),
            "image_name": image.name, "image_sha256": image.sha256, "repeats": c.repeats, "warmup": c.warmup,
            "seed": c.seed, "amortize_iters": job.train.amortize_iters,
            "backward": job.solver.backward if job.solver.backward == "ift" else f"neumann T={job.solver.neumann_order}",
            "data_source": f"train pixels of {image.name} ({image.set_name} set"
                           + (f", embedded stand-in for {image.stand_in_for})" if image.stand_in_for else ")")}


def run_cost(job: Job) -> None:
    """Stage ``cost``: measure, attach provenance, write atomically (spec C.6)."""
    result = measure(job.settings, job.device)
    result["provenance"] = job.provenance(seeds=[result["seed"]])
    atomic_write_json(job.args.out, result)
    for r in result["rows"]:
        print(f"{r['kind']} L={r['layers']} M={r['solver_iterations']}: {1e3 * r['step_seconds']:.2f} ms / step, "
              f"{r['saved_bytes'] / 2**20:.2f} MiB saved for backward, {r['f_applications_per_step']} F / step")
