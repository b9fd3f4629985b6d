"""Diagnose why JIIO-DEQ meta-learning stays at chance (issue 12): measurements of the model at initialisation.

On held-out tasks of the chosen profile, for the JIIO-DEQ model as ``jiio_meta.jiio_deq`` builds it (optionally
with other GroupNorm group counts), it reports:

* how much the query equilibrium z* moves when x goes from 0 to a random vector of norm ``--x-norm``, and how much
  z* varies over images (relative to its mean), per branch;
* the same two numbers for the head's pooled features (what the final Linear sees);
* the support cross-entropy and accuracy at x = 0, at JIIO's x* (the inner loop of spec B.2) and after
  ``--adam-steps`` Adam steps on x with no x penalty (can any x fit the support images?).

Usage: ``python tools/jiio_meta_probe.py --profile embedded --tasks 20 [--pooled-norm none] [--block-groups 2 ...]``;
prints JSON.
The README's Table 6 paragraph quotes its output.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from deqbench.data.omniglot import stack_tasks
from deqbench.experiments.config import load_params, resolve_profile
from deqbench.experiments.registry import get_task
from deqbench.meta.jiio_deq import adam_task_vectors, flatten_tasks, inner_loop, query_equilibrium
from deqbench.models.mdeq import MDEQClassifier
from deqbench.tasks.jiio_meta.training import jiio_deq_config, jiio_deq_model, load_splits, test_sampler


def relative_spread(values: Tensor) -> float:
    """Norm of the per-feature standard deviation over samples divided by the norm of the mean sample."""
    return float(values.std(0).norm() / values.mean(0).norm().clamp_min(1e-12))


def relative_change(new: Tensor, old: Tensor) -> float:
    return float((new - old).norm() / old.norm().clamp_min(1e-12))


def support_fit(model: MDEQClassifier, z: Sequence[Tensor], labels: Tensor, tasks: int) -> dict[str, float]:
    logits = model.logits(z, tasks)
    return {"ce": float(F.cross_entropy(logits, labels)), "accuracy": float((logits.argmax(1) == labels).float().mean())}


def probe(profile: str, params_path: str, tasks: int, x_norm: float, adam_steps: int, adam_lr: float,
          groups: dict[str, object], seed: int) -> dict[str, object]:
    """All measurements of the module docstring, as a JSON-able dictionary."""
    settings = get_task("jiio_meta").settings(resolve_profile(load_params(params_path), profile))
    job = settings.train("jiio_deq")
    params = dataclasses.replace(job.params, model=dataclasses.replace(job.params.model, **groups))
    torch.manual_seed(seed)
    model = jiio_deq_model(params, job.data.n_way)
    config = jiio_deq_config(params)
    splits = load_splits(job.data, job.data_root)
    (s_img, s_lab), _ = stack_tasks(test_sampler(job.data, splits, job.eval.seed).tasks(0, tasks))
    images, labels, n_tasks = flatten_tasks(s_img, s_lab)
    generator = torch.Generator().manual_seed(seed)
    x_random = torch.randn(n_tasks, model.config.task_dim, generator=generator)
    x_random = x_random / x_random.norm(dim=1, keepdim=True) * x_norm
    with torch.no_grad():
        x_zero = torch.zeros_like(x_random)
        z_zero = query_equilibrium(model, images, x_zero, config)
        z_random = query_equilibrium(model, images, x_random, config)
        pooled_zero, pooled_random = model.head.pooled(z_zero), model.head.pooled(z_random)
        x_jiio = inner_loop(model, images, labels, n_tasks, config).x
        z_jiio = query_equilibrium(model, images, x_jiio, config)
        report: dict[str, object] = {
            "profile": profile, "tasks": tasks, "groups": groups, "seed": seed,
            "z_change_for_random_x": [relative_change(a, b) for a, b in zip(z_random, z_zero)],
            "z_spread_over_images": [relative_spread(b.flatten(1)) for b in z_zero],
            "pooled_change_for_random_x": relative_change(pooled_random, pooled_zero),
            "pooled_spread_over_images": relative_spread(pooled_zero),
            "logit_change_for_random_x": float((model.logits(z_random, n_tasks)
                                                - model.logits(z_zero, n_tasks)).abs().mean()),
            "support_at_x0": support_fit(model, z_zero, labels, n_tasks),
            "support_at_jiio_x": support_fit(model, z_jiio, labels, n_tasks),
            "jiio_x_norm": float(x_jiio.norm(dim=1).mean()),
            "chance_ce": math.log(job.data.n_way),
        }
    adam = adam_task_vectors(model, images, labels, n_tasks, dataclasses.replace(config, task_l2=0.0),
                             steps=adam_steps, lr=adam_lr)
    with torch.no_grad():
        report["support_at_adam_x"] = support_fit(model, query_equilibrium(model, images, adam.x, config), labels,
                                                  n_tasks)
    report["adam_x_norm"] = float(adam.x.norm(dim=1).mean())
    return report


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="embedded")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--tasks", type=int, default=20)
    parser.add_argument("--x-norm", type=float, default=5.0)
    parser.add_argument("--adam-steps", type=int, default=60)
    parser.add_argument("--adam-lr", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    for name in ("block_groups", "fuse_groups", "post_fuse_groups"):
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=None, dest=name)
    parser.add_argument("--pooled-norm", choices=("none", "task"), default=None, dest="pooled_norm",
                        help="override the profile's head (none: the paper's GroupNorm head)")
    args = parser.parse_args(argv)
    groups = {k: getattr(args, k) for k in ("block_groups", "fuse_groups", "post_fuse_groups", "pooled_norm")
              if getattr(args, k) is not None}
    report = probe(args.profile, args.params, args.tasks, args.x_norm, args.adam_steps, args.adam_lr, groups,
                   args.seed)
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
