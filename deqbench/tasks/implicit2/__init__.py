"""(Implicit)^2 (Huang, Bai, Kolter, NeurIPS 2021): implicit layers for implicit representations.

The whole path of these tables: ``params.yaml`` (``implicit2`` block) -> ``pipelines/implicit2.smk`` -> :mod:`.task`
(and :mod:`.cost`, :mod:`.tables`, :mod:`.figures`) -> :mod:`.training` -> ``deqbench/models/implicit_repr.py`` ->
``deqbench/core/deq.py`` and ``deqbench/core/solvers/``; data from ``deqbench/data/implicit2.py``.  Spec section C
of ``../shared/specs/moptqs-meta-learning-implicit2.md``.
"""

from __future__ import annotations

from deqbench.experiments.registry import Arg, Stage, Task, register
from deqbench.tasks.implicit2 import cost, task
from deqbench.tasks.implicit2.params import Implicit2Params
from deqbench.tasks.implicit2.settings import build_settings
from deqbench.tasks.implicit2.tables import TABLES

OUT = Arg("out", help="output file")
FILTER = Arg("filter", help="fourier, gabor or siren")

TASK = register(Task(
    name="implicit2",
    paper="implicit2",
    title="(Implicit)^2: image generalisation and video tables, gradient order, cost and amortisation figures",
    params=Implicit2Params,
    build_settings=build_settings,
    stages=(
        Stage("fit", "every size x {explicit, implicit} of one filter on one image (generalisation, spec C.3)",
              lambda s, a: s.fit(a.dataset, a.image, a.filter), task.run_fit,
              (Arg("dataset", help="image set: natural or text"), Arg("image", int, help="image index in the set"), FILTER, OUT)),
        Stage("video", "every size x {explicit, implicit} of one filter on the video (spec C.4 / C.7)",
              lambda s, a: s.video(a.filter), task.run_video, (FILTER, OUT)),
        Stage("gradient-order", "training PSNR per step for truncated-Neumann orders T (Fig. 4, spec C.2)",
              lambda s, a: s.gradient_order(), task.run_gradient_order, (OUT,)),
        Stage("cost", "time and memory per step: explicit nL, full-solve DEQ, amortised (spec C.6)",
              lambda s, a: s.cost(), cost.run_cost, (OUT,)),
        Stage("amortization", "one image trained amortised and with a full solve every step (spec C.2)",
              lambda s, a: s.amortization(a.image), task.run_amortization,
              (Arg("image", int, help="index of amortization.images' set"), OUT)),
    ),
    tables=TABLES,
))
