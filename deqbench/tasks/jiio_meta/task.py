"""JIIO meta-learning stages: ``train`` (meta-train one Table 6 method, then score it on the held-out tasks),
``trivial`` (chance and pixel nearest-neighbour on the same tasks) and ``timing`` (Table 7).

Every result carries its seeds, the data source (the stand-in is labelled) and provenance.
"""

from __future__ import annotations

from typing import Any

from deqbench.experiments.io import atomic_write_json
from deqbench.experiments.registry import Job
from deqbench.experiments.runtime import seed_everything
from deqbench.tasks.jiio_meta.params import JIIODEQParams
from deqbench.tasks.jiio_meta.settings import METHODS, TrainJob
from deqbench.tasks.jiio_meta.timing import inner_loop_timing
from deqbench.tasks.jiio_meta.training import (
    build_model, data_source_of, evaluate, load_splits, meta_train, trivial_answers,
)


def method_label(job: TrainJob) -> str:
    """The Table 6 row name; a JIIO-DEQ says where it departs from the paper: a head that standardises its pooled
    features per task, a shorter inner loop during meta-training."""
    label = METHODS[job.method]
    if not isinstance(job.params, JIIODEQParams):
        return label
    notes = []
    if job.params.model.pooled_norm == "task":
        notes.append("pooled head features standardised per task: transductive, not in the paper")
    inner = job.params.inner
    if inner.for_meta_training() is not inner:
        notes.append(f"meta-trained with JIIO-{inner.train_iterations} inner loops, tested with JIIO-{inner.iterations}")
    return label + "".join(f" ({n})" for n in notes)


def train_and_evaluate(job: TrainJob, out: str, partial: str, settings_hash: str, device: Any,
                       progress: bool = True) -> dict[str, Any]:
    """Meta-train one method (resumable from ``partial``), write its checkpoint ``out``, and score it on
    ``eval.tasks`` held-out tasks (spec B.4-B.6)."""
    splits = load_splits(job.data, job.data_root)
    seed_everything(job.loop.seed)
    model = build_model(job.method, job.params, job.data.n_way).to(device)
    summary = meta_train(job, model, splits, out, partial, settings_hash, device, progress)
    scores = evaluate(job, model, splits, device, progress)
    return {"method": job.method, "label": method_label(job), "data_source": data_source_of(splits),
            "stand_in_for": splits.stand_in_for, "n_way": job.data.n_way, "k_shot": job.data.k_shot,
            "k_query": job.data.k_query, "image_size": job.data.image_size, "split_seed": splits.seed,
            "train": {k: v for k, v in summary.items() if k != "history"}, "history": summary["history"], **scores}


def run_train(job: Job) -> None:
    """Stage ``train``: meta-train, evaluate, write the checkpoint and the result atomically."""
    a = job.args
    result = train_and_evaluate(job.settings, a.checkpoint, a.partial, job.hash, job.device, job.progress)
    result["provenance"] = job.provenance(seeds=[job.settings.loop.seed, job.settings.data.train_seed,
                                                 job.settings.eval.seed])
    atomic_write_json(a.out, result)
    print(f"{result['label']}: {result['accuracy']:.2f} +- {result['ci95']:.2f} % on {result['tasks']} held-out "
          f"tasks after {result['train']['steps']} meta-steps ({result['train']['train_seconds']:.0f} s)")


def run_trivial(job: Job) -> None:
    """Stage ``trivial``: chance and pixel 1-NN accuracy on the test tasks."""
    s = job.settings
    splits = load_splits(s.data, s.data_root)
    result = {"answers": trivial_answers(s.data, splits, s.eval.tasks, s.eval.seed),
              "data_source": data_source_of(splits), "provenance": job.provenance(seeds=[s.eval.seed])}
    atomic_write_json(job.args.out, result)
    for name, r in result["answers"].items():
        print(f"{name}: {r['accuracy']:.2f} +- {r['ci95']:.2f} %")


def run_timing(job: Job) -> None:
    """Stage ``timing`` (Table 7): Adam vs JIIO inner loop on one batch of held-out tasks."""
    result = inner_loop_timing(job.settings, job.args.checkpoint, job.device)
    result["provenance"] = job.provenance(seeds=[job.settings.eval.seed])
    atomic_write_json(job.args.out, result)
    for r in result["rows"].values():
        print(f"{r['label']}: {r['ms_per_batch']:.0f} ms per batch of {result['tasks']} tasks, {r['f_evals']} f, "
              f"{r['vjps']} VJPs, support cost {r['support_cost_mean']:.3f}")
    print(f"Adam / JIIO time ratio: {result['ratio']:.2f}")
