"""JIIO meta-learning (JIIO paper section 4.4, appendix B.1, C.1-C.5): Tables 6 and 7.

The whole path of these tables: ``params.yaml`` (``jiio_meta`` block) -> ``pipelines/jiio_meta.smk`` -> :mod:`.task`
(and :mod:`.training`, :mod:`.timing`, :mod:`.tables`) -> ``deqbench/meta/`` (the JIIO-DEQ meta step, MAML,
Reptile, iMAML) -> ``deqbench/inputopt/jiio.py`` and ``deqbench/core/deq.py``; models ``deqbench/models/mdeq.py``
(FiLM) and ``deqbench/models/conv4.py``; data ``deqbench/data/omniglot.py``.  Spec section B of
``../shared/specs/moptqs-meta-learning-implicit2.md``.
"""

from __future__ import annotations

from deqbench.experiments.registry import Arg, Stage, Task, register
from deqbench.tasks.jiio_meta import task
from deqbench.tasks.jiio_meta.params import JIIOMetaParams
from deqbench.tasks.jiio_meta.settings import build_settings
from deqbench.tasks.jiio_meta.tables import TABLES

OUT = Arg("out", help="output file")

TASK = register(Task(
    name="jiio_meta",
    paper="jiio",
    title="JIIO meta-learning: 5-way 1-shot Omniglot (Table 6) and the inner-loop timing (Table 7)",
    params=JIIOMetaParams,
    build_settings=build_settings,
    stages=(
        Stage("train", "meta-train one method of Table 6, then score it on the held-out tasks",
              lambda s, a: s.train(a.method), task.run_train,
              (Arg("method", help="jiio_deq, maml, reptile or imaml"), Arg("checkpoint", help="final checkpoint"),
               Arg("partial", help="resumable partial checkpoint (outside declared outputs)"), OUT)),
        Stage("trivial", "chance and pixel nearest-neighbour accuracy on the same held-out tasks",
              lambda s, a: s.trivial(), task.run_trivial, (OUT,)),
        Stage("timing", "Table 7: Adam vs JIIO inner loop on one batch of held-out tasks, same process",
              lambda s, a: s.timing(), task.run_timing, (Arg("checkpoint", help="the trained JIIO-DEQ"), OUT)),
    ),
    tables=TABLES,
))
