"""Table 7 (spec B.7): the meta-learning inner loop, Adam on the task vector vs JIIO, side by side in one process.

Both methods run on the same batch of held-out tasks with the trained JIIO-DEQ, the same device, dtype and inner
cost.  Adam-k: k steps (lr ``adam_lr``), each a forward Broyden solve on the support images plus an IFT backward
for dl/dx (:func:`deqbench.meta.jiio_deq.adam_task_vectors`).  JIIO-k: one augmented solve of k iterations
(:func:`deqbench.meta.jiio_deq.inner_loop`).  The two alternate, ``warmup`` untimed rounds first, then the mean
over ``repeats``; each timing is bracketed by a device synchronisation.  Reported per batch of tasks (as the
reference's ``test()`` timed) and per task, with the f evaluations and VJPs each spent, and what each reached:
the support cost at its x and the query accuracy there (a fast inner loop that adapts worse would show).
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import torch

from deqbench.data.omniglot import stack_tasks
from deqbench.experiments.io import load_artifact
from deqbench.experiments.runtime import sync
from deqbench.meta.jiio_deq import adam_task_vectors, flatten_tasks, inner_loop, query_logits
from deqbench.tasks.jiio_meta.settings import TimingJob
from deqbench.tasks.jiio_meta.training import (
    data_source_of, jiio_deq_config, jiio_deq_model, load_splits, num_parameters, test_sampler,
)


def _timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


def inner_loop_timing(job: TimingJob, checkpoint: str, device: torch.device) -> dict[str, Any]:
    """Adam-k vs JIIO-k on ``timing.tasks`` held-out tasks (spec B.7); see the module docstring."""
    splits = load_splits(job.data, job.data_root)
    model = jiio_deq_model(job.model, job.data.n_way)
    state = load_artifact(checkpoint, "cpu")
    model.load_state_dict(state["model"])
    model.to(device).eval()
    t = job.timing
    config = jiio_deq_config(job.model)
    config.inner_iters = t.jiio_iterations
    config.alpha_x_switch = min(config.alpha_x_switch, t.jiio_iterations)
    (support, query) = stack_tasks(test_sampler(job.data, splits, job.eval.seed).tasks(0, t.tasks))
    s_img, s_lab, n_tasks = flatten_tasks(support[0].to(device), support[1].to(device))
    q_img, q_lab, _ = flatten_tasks(query[0].to(device), query[1].to(device), what="query")

    def run_jiio() -> Any:
        with torch.no_grad():
            return inner_loop(model, s_img, s_lab, n_tasks, config)

    def run_adam() -> Any:
        return adam_task_vectors(model, s_img, s_lab, n_tasks, config, steps=t.adam_steps, lr=t.adam_lr,
                                 forward_max_iter=t.adam_solver_max_iter, backward_max_iter=t.adam_solver_max_iter)

    runs = {"adam": run_adam, "jiio": run_jiio}
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    last: dict[str, Any] = {}
    for round_ in range(t.warmup + t.repeats):
        for name, fn in runs.items():
            out, elapsed = _timed(fn, device)
            last[name] = out
            if round_ >= t.warmup:
                seconds[name].append(elapsed)
    rows = {}
    for name, label, iters in (("adam", f"Adam-{t.adam_steps}", t.adam_steps),
                               ("jiio", f"JIIO-{t.jiio_iterations}", t.jiio_iterations)):
        out = last[name]
        cost = out.cost if name == "adam" else out.jiio.cost
        with torch.no_grad():
            logits = query_logits(model, q_img, out.x, config)
        ms = 1e3 * statistics.fmean(seconds[name])
        rows[name] = {"method": name, "label": label, "iterations": iters, "ms_per_batch": ms,
                      "ms_per_task": ms / n_tasks, "ms_per_batch_runs": [1e3 * s for s in seconds[name]],
                      "f_evals": out.f_evals, "vjps": out.vjps, "support_cost_mean": float(cost.mean()),
                      "query_accuracy": 100 * float((logits.argmax(1) == q_lab).float().mean())}
    return {"tasks": n_tasks, "support_images": int(s_img.shape[0]), "repeats": t.repeats, "warmup": t.warmup,
            "rows": rows, "ratio": rows["adam"]["ms_per_batch"] / rows["jiio"]["ms_per_batch"],
            "num_parameters": num_parameters(model), "data_source": data_source_of(splits),
            "checkpoint": checkpoint, "threads": torch.get_num_threads()}
