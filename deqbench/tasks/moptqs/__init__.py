"""MOptEqs (Li, Wang, Xie, Lin, ICLR 2022): multi-branch optimisation-induced equilibrium models.

The whole path of these tables: ``params.yaml`` (``moptqs`` block) -> ``pipelines/moptqs.smk`` -> :mod:`.task`
(and :mod:`.tables`) -> ``deqbench/models/moptqs.py`` -> ``deqbench/core/deq.py`` and ``deqbench/core/solvers/``.
"""

from __future__ import annotations

from deqbench.experiments.registry import Arg, Stage, Task, register
from deqbench.tasks.moptqs import cost, task
from deqbench.tasks.moptqs.params import MOptEqsParams
from deqbench.tasks.moptqs.settings import build_settings
from deqbench.tasks.moptqs.tables import TABLES

DATA = Arg("data", help="prepared dataset file")
DATASET = Arg("dataset", help="dataset key of moptqs.datasets")
MODEL = Arg("model", help="model key of moptqs.models")
OUT = Arg("out", help="output file")

TASK = register(Task(
    name="moptqs",
    paper="moptqs",
    title="MOptEqs: multi-branch optimisation-induced equilibrium models (Tables 1-6, Figures 2-4)",
    params=MOptEqsParams,
    build_settings=build_settings,
    stages=(
        Stage("prepare", "load and resize both splits of a dataset", lambda s, a: s.prepare(a.dataset),
              task.run_prepare, (DATASET, OUT)),
        Stage("train", "train one model of moptqs.models on one dataset", lambda s, a: s.train(a.dataset, a.model),
              task.run_train,
              (DATA, DATASET, MODEL, Arg("seed", int), OUT,
               Arg("partial", help="resumable partial checkpoint (outside declared outputs)"))),
        Stage("train-evaluate", "train one model, then write its test accuracy (train + evaluate in one process)",
              lambda s, a: s.train_evaluate(a.dataset, a.model), task.run_train_evaluate,
              (DATA, DATASET, MODEL, Arg("seed", int), OUT,
               Arg("partial", help="resumable partial checkpoint (outside declared outputs)"),
               Arg("evaluation", help="output file of the evaluation"))),
        Stage("evaluate", "test accuracy of one checkpoint", lambda s, a: s.evaluate(a.dataset, a.model),
              task.run_evaluate, (DATA, DATASET, MODEL, Arg("checkpoint"), OUT)),
        Stage("attack", "clean and PGD accuracy after every PGD iteration of one checkpoint (Table 5, Figure 3(b))",
              lambda s, a: s.attack(a.dataset, a.model), task.run_attack,
              (DATA, DATASET, MODEL, Arg("checkpoint"), OUT)),
        Stage("convergence", "relative residual per Anderson iteration of trained models (Figure 4, one panel)",
              lambda s, a: s.convergence(a.panel), task.run_convergence,
              (DATA, Arg("panel", help="key of moptqs.convergence.panels"),
               Arg("checkpoints", nargs="+", help="one checkpoint per model of the panel, in order"), OUT)),
        Stage("cost", "memory and time per batch of the Table 6 models, side by side", lambda s, a: s.cost(),
              cost.run_cost,
              (DATA, Arg("checkpoints", nargs="+", help="one checkpoint per model of moptqs.cost.models, in order"),
               OUT)),
        Stage("memory-probe", "peak memory of one training step (run in a child process by cost)",
              lambda s, a: s.cost(), cost.run_memory_probe, (DATA, MODEL, Arg("checkpoint"))),
        Stage("figure2", "Average D / H and channel correlations of trained models (Figure 2)",
              lambda s, a: s.figure2(), task.run_figure2,
              (DATA, Arg("checkpoints", nargs="+", help="one checkpoint per figure2 model, in order"), OUT)),
        Stage("figure3a", "accuracy under reconstructed vs random feature perturbations (Figure 3(a))",
              lambda s, a: s.figure3a(), task.run_figure3a, (DATA, Arg("checkpoint"), OUT)),
    ),
    tables=TABLES,
))
