"""JIIO paper section 4.3 / appendix B.2: adversarial training of MDEQs, Tables 2, 5 and 8 and the
adversarial memory comparison of appendix C.6.

The whole path of these tables: ``params.yaml`` (``jiio_adversarial`` block) -> ``pipelines/jiio_adversarial.smk``
-> :mod:`.task` (and :mod:`.tables`) -> ``deqbench/models/mdeq.py`` -> ``deqbench/inputopt/jiio.py`` and
``deqbench/core/solvers/``.
"""

from __future__ import annotations

from deqbench.experiments.registry import Arg, Stage, Task, register
from deqbench.tasks.jiio_adversarial import task
from deqbench.tasks.jiio_adversarial.settings import METHODS, AdversarialParams, build_settings
from deqbench.tasks.jiio_adversarial.tables import TABLES

DATA = Arg("data", help="prepared dataset file")
DATASET = Arg("dataset", help="dataset key of jiio_adversarial.datasets")
OUT = Arg("out", help="output file")

TASK = register(Task(
    name="jiio_adversarial",
    paper="jiio",
    title="JIIO adversarial training of MDEQs (Tables 2, 5, 8)",
    params=AdversarialParams,
    build_settings=build_settings,
    stages=(
        Stage("prepare", "load and resize both splits of a dataset", lambda s, a: s.prepare(a.dataset),
              task.run_prepare, (DATASET, OUT)),
        Stage("train", "train one MDEQ (clean, PGD or JIO adversarial training)",
              lambda s, a: s.train(a.dataset, a.method), task.run_train,
              (DATA, DATASET, Arg("method", help=f"one of {list(METHODS)}"), Arg("eps", float, "L2 radius (0: clean)"),
               Arg("seed", int), OUT, Arg("partial", help="resumable partial checkpoint (outside declared outputs)"),
               Arg("init", required=False, help="clean checkpoint an adversarial model warm-starts from "
                                                "(with train.warm_start_steps)")),
              distributed=True),
        Stage("evaluate", "clean, PGD and JIO accuracy of one checkpoint at one eps",
              lambda s, a: s.evaluate(a.dataset), task.run_evaluate,
              (DATA, DATASET, Arg("checkpoint"), Arg("eps", float), OUT)),
        Stage("timing", "PGD vs JIO time per adversarial example, side by side (Table 2)",
              lambda s, a: s.timing(), task.run_timing, (DATA, OUT)),
        Stage("memory", "PGD vs JIO peak memory of one attack (appendix C.6)",
              lambda s, a: s.memory(), task.run_memory, (DATA, OUT)),
        Stage("memory-probe", "peak memory of one attack (run in a child process by memory)",
              lambda s, a: s.memory(), task.run_memory_probe,
              (DATA, Arg("method", help=f"one of {list(task.MEMORY_METHODS)}"))),
    ),
    tables=TABLES,
))
