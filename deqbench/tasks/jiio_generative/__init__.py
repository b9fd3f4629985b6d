"""JIIO paper sections 4.1-4.2 / appendices A.2, C: generative modelling and inverse problems (Tables 1, 3, 4,
Figures 3 and 4, memory).

The whole path of these tables: ``params.yaml`` (``jiio_generative`` block) -> ``pipelines/jiio_generative.smk``
-> :mod:`.task` / :mod:`.timing` / :mod:`.acceleration` (rows in :mod:`.tables`) ->
``deqbench/models/mdeq_generator.py`` -> ``deqbench/inputopt/jiio.py`` and ``deqbench/core/solvers/``.
"""

from __future__ import annotations

from deqbench.experiments.registry import Arg, Stage, Task, register
from deqbench.tasks.jiio_generative import acceleration, task, timing
from deqbench.tasks.jiio_generative.params import GenerativeParams
from deqbench.tasks.jiio_generative.settings import MODELS, RECONSTRUCT, build_settings
from deqbench.tasks.jiio_generative.tables import TABLES, cell_job

DATA = Arg("data", help="prepared faces file")
OUT = Arg("out", help="output file")
UNTRAINED = ("trained JIIO-MDEQ checkpoint (default: a fresh seed-0 model; fixed iteration counts make timing "
             "weight-independent)")

TASK = register(Task(
    name="jiio_generative",
    paper="jiio",
    title="JIIO generative modelling and inverse problems (Tables 1, 3, 4, Figures 3, 4, memory)",
    params=GenerativeParams,
    build_settings=build_settings,
    stages=(
        Stage("prepare", "load both splits of the face dataset", lambda s, a: s.prepare(), task.run_prepare, (OUT,)),
        Stage("train", "train one model on one problem", lambda s, a: s.train(a.model, a.problem), task.run_train,
              (DATA, Arg("model", help=f"one of {list(MODELS)}"),
               Arg("problem", help=f"{RECONSTRUCT!r} or a key of jiio_generative.problems"), Arg("seed", int), OUT,
               Arg("partial", help="resumable partial checkpoint (outside declared outputs)"))),
        Stage("density", "fit the post-hoc latent density of a trained model (Table 1 sampling)",
              lambda s, a: s.density(a.model), task.run_density,
              (DATA, Arg("model"), Arg("checkpoint"), OUT)),
        Stage("cell", "one cell of Table 1 (FID, reconstruction PSNR) or Table 4 (inverse-problem PSNR)",
              lambda s, a: cell_job(s, a.table, a.row, a.problem), task.run_cell,
              (DATA, Arg("table", help="table1 or table4"), Arg("row"),
               Arg("problem", required=False, default=RECONSTRUCT),
               Arg("checkpoint", required=False, help="the row's trained model (reference rows use none)"),
               Arg("density", required=False, help="post-hoc density file (rows that sample from one)"), OUT)),
        Stage("timing", "Adam vs JIIO-40 vs JIIO-100 over distinct test images, traced Figure 3 curves and memory "
              "(Table 3, C.6)",
              lambda s, a: s.timing(), timing.run_timing,
              (DATA, OUT, Arg("checkpoint", required=False, help=UNTRAINED),
               Arg("checkpoint100", required=False, help="model trained with JIIO-100, for Figure 3's second panel"))),
        Stage("acceleration", "Broyden vs Anderson Type-I / II inside JIIO on the MDEQ-VAE decoder (Figure 4, A.2)",
              lambda s, a: s.acceleration(), acceleration.run_acceleration,
              (DATA, Arg("checkpoint", help="the trained MDEQ-VAE (reconstruct) checkpoint"), OUT)),
        Stage("memory-probe", "peak memory of one reconstruction (run in a child process by timing)",
              lambda s, a: s.timing(), timing.run_memory_probe,
              (DATA, Arg("method", help="jiio40 or adam<steps>"), Arg("checkpoint", required=False, help=UNTRAINED),
               Arg("adam-steps", int, required=False, help="shorter Adam run (its peak is reached in step 1)"))),
    ),
    tables=(*TABLES, acceleration.FIGURE4),
))
