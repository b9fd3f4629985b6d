"""MOptEqs robustness (appendix A.10): L-inf PGD through the equilibrium, PGD-k adversarial training (Table 5) and
accuracy against PGD iterations for PE-trained models (Figure 3(b)).

The attack is the standard one of Madry et al. (2018): a uniform random start in the eps-ball, then ``steps`` signed
gradient steps of the cross-entropy, each followed by the projection onto the ball and onto [0, 1].  Every step is a
forward solve plus the implicit (IFT) backward to the input.  The accuracy at the k-th iterate is exactly PGD-k's,
so one PGD-K run gives the whole curve k = 1 ... K (Figure 3(b)) and PGD-20 (Table 5).
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deqbench.experiments.config import ConfigError
from deqbench.experiments.io import save_figure
from deqbench.experiments.tables import Column, TableRows, TableSpec, measured_on, read_results
from deqbench.tasks.moptqs.settings import AdversarialParams, TableJob

Record = Callable[[int, Tensor], None]


def adversarial_examples(model: nn.Module, images: Tensor, labels: Tensor, attack: AdversarialParams, steps: int,
                         solve: dict[str, Any], generator: torch.Generator, record: Record | None = None) -> Tensor:
    """PGD-``steps`` in the L-inf ball of radius ``attack.eps`` around ``images`` (pixels in [0, 1]).

    The model attacks in eval mode (BatchNorm running statistics, PE as at test; AMBIG: the paper does not say) and
    is put back in its previous mode.  ``record(k, logits)`` sees the logits at the k-th iterate, k = 0 (the random
    start) ... ``steps``; the last needs one more forward solve, done only when ``record`` is given.
    """
    eps, step = attack.eps, attack.step_size
    was_training = model.training
    model.eval()
    try:
        start = (torch.rand(images.shape, generator=generator, dtype=images.dtype) * 2 - 1).to(images.device)
        x = (images + eps * start).clamp(0, 1)
        for k in range(steps):
            with torch.enable_grad():
                x_req = x.detach().requires_grad_(True)
                logits = model(x_req, **solve)
                (grad,) = torch.autograd.grad(F.cross_entropy(logits, labels, reduction="sum"), x_req)
            if record is not None:
                record(k, logits.detach())
            x = (images + (x + step * grad.sign() - images).clamp(-eps, eps)).clamp(0, 1).detach()
        if record is not None:
            with torch.no_grad():
                record(steps, model(x, **solve))
    finally:
        model.train(was_training)
    return x


def attack_accuracy(model: nn.Module, images: Tensor, labels: Tensor, attack: AdversarialParams, steps: int,
                    solve: dict[str, Any], seed: int, progress: Callable[[Any], Any] = iter) -> dict[str, Any]:
    """Clean accuracy and the accuracy (%) after each PGD iteration 0 ... ``steps`` on the given test images."""
    device = next(model.parameters()).device
    correct = torch.zeros(steps + 1, device=device)
    clean = torch.zeros((), device=device)
    generator = torch.Generator().manual_seed(seed)
    model.eval()
    for start in progress(range(0, len(labels), attack.batch_size)):
        x = images[start : start + attack.batch_size].to(device)
        y = labels[start : start + attack.batch_size].to(device)
        with torch.no_grad():
            clean += (model(x, **solve).argmax(1) == y).sum()

        def record(k: int, logits: Tensor) -> None:
            correct[k] += (logits.argmax(1) == y).sum()

        adversarial_examples(model, x, y, attack, steps, solve, generator, record)
    n = len(labels)
    return {"accuracy_clean": 100.0 * float(clean) / n,
            "accuracy_by_step": [100.0 * float(c) / n for c in correct.cpu()], "n_test": n, "steps": steps,
            "eps": attack.eps, "step_size": attack.step_size, "attack_seed": seed}


# ----------------------------------------------------------------------------- Table 5 and Figure 3(b)


def _by_model(job: TableJob, files: Sequence[str]) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    results = read_results(files)
    declared = {key for _, key, _ in job.rows}
    runs: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        key = r["train"]["model_name"]
        if key not in declared:
            raise ConfigError(f"{r['_file']}: an attack on {key!r}, which {job.table} does not show")
        runs.setdefault(key, []).append(r)
    for _, key, _ in job.rows:
        if key not in runs:
            raise ConfigError(f"{job.table}: no attack result of model {key!r}")
    return results, runs


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else float("nan")


# The paper's Table 5 (appendix A.10): natural and PGD-20 (eps 8/255) accuracy, %.
PAPER_TABLE5 = {"adv_no_pe": (78.60, 37.18), "adv_pe": (78.40, 38.05)}


def build_table5(job: TableJob, files: Sequence[str]) -> TableRows:
    """Natural and PGD-K accuracy of the adversarially trained models, mean and sample std over seeds."""
    results, runs = _by_model(job, files)
    rows = []
    for dataset, key, model in job.rows:
        mine = runs[key]
        natural = _mean_std([r["accuracy_clean"] for r in mine])
        robust = _mean_std([r["accuracy_by_step"][-1] for r in mine])
        train_attack = mine[0]["train"].get("adversarial") or {}
        paper = PAPER_TABLE5.get(key)
        rows.append({"model": model.label, "model_key": key, "pe_eps": model.pe_eps,
                     "num_parameters": mine[0]["num_parameters"], "natural_accuracy_mean": natural[0],
                     "natural_accuracy_std": natural[1], "pgd_accuracy_mean": robust[0], "pgd_accuracy_std": robust[1],
                     "n_seeds": len(mine), "pgd_steps": mine[0]["steps"], "eps": mine[0]["eps"],
                     "step_size": mine[0]["step_size"], "train_pgd_steps": train_attack.get("train_steps"),
                     "paper_natural_accuracy": paper[0] if paper else None,
                     "paper_pgd_accuracy": paper[1] if paper else None, "n_test": mine[0]["n_test"],
                     "profile": job.profile, "data_source": mine[0]["data_source"]})
    first = rows[0]
    caption = {"seeds": sorted({r["train"]["seed"] for r in results}), "profile": job.profile,
               "data": first["data_source"], "n_test": first["n_test"], "steps": first["pgd_steps"],
               "train_steps": first["train_pgd_steps"], "eps": f"{first['eps'] * 255:.3g}/255",
               "step": f"{first['step_size'] * 255:.3g}/255"}
    return TableRows(rows, caption, {"attack_files": sorted(files), "measured_on": measured_on(results)})


def build_figure3b(job: TableJob, files: Sequence[str]) -> TableRows:
    """Accuracy after k PGD iterations per model (mean and std over seeds), for the declared k; plus per model a
    'mean' row averaging the k (the figure's area under the curve, what MOPT-13 compares)."""
    results, runs = _by_model(job, files)
    iterations = [int(v) for role, v in job.extra if role == "iteration"]
    rows = []
    for dataset, key, model in job.rows:
        mine = runs[key]
        steps = mine[0]["steps"]
        if max(iterations) > steps:
            raise ConfigError(f"{job.table}: the attack of {key!r} ran {steps} PGD steps, fewer than {max(iterations)}")
        head = {"model": model.label, "model_key": key, "pe_eps": model.pe_eps, "n_seeds": len(mine),
                "n_test": mine[0]["n_test"], "profile": job.profile, "data_source": mine[0]["data_source"]}
        for k in iterations:
            mean, std = _mean_std([r["accuracy_by_step"][k] for r in mine])
            rows.append({**head, "kind": "curve", "pgd_iterations": k, "accuracy_mean": mean, "accuracy_std": std})
        mean, std = _mean_std([statistics.fmean(r["accuracy_by_step"][k] for k in iterations) for r in mine])
        rows.append({**head, "kind": "mean", "accuracy_mean": mean, "accuracy_std": std,
                     "clean_accuracy_mean": statistics.fmean(r["accuracy_clean"] for r in mine)})
    first = results[0]
    caption = {"seeds": sorted({r["train"]["seed"] for r in results}), "profile": job.profile,
               "data": first["data_source"], "n_test": first["n_test"], "eps": f"{first['eps'] * 255:.3g}/255",
               "step": f"{first['step_size'] * 255:.3g}/255", "k": f"{min(iterations)}-{max(iterations)}"}
    return TableRows(rows, caption, {"attack_files": sorted(files), "measured_on": measured_on(results)})


def table5_metrics(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {r["model_key"]: {"natural_accuracy_mean": r["natural_accuracy_mean"],
                             "pgd_accuracy_mean": r["pgd_accuracy_mean"]} for r in rows}


def figure3b_metrics(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {r["model_key"]: {"pe_eps": r["pe_eps"], "mean_accuracy_under_pgd": r["accuracy_mean"],
                             "clean_accuracy": r["clean_accuracy_mean"]} for r in rows if r["kind"] == "mean"}


def draw_figure3b(rows: list[dict[str, Any]], png: Path, caption: str) -> None:
    """Fig. 3(b): accuracy against PGD iterations, one line per PE eps (+- std over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.6, 4.0))
    curves = [r for r in rows if r["kind"] == "curve"]
    for key in dict.fromkeys(r["model_key"] for r in curves):
        mine = [r for r in curves if r["model_key"] == key]
        std = [0.0 if r["accuracy_std"] != r["accuracy_std"] else r["accuracy_std"] for r in mine]
        ax.errorbar([r["pgd_iterations"] for r in mine], [r["accuracy_mean"] for r in mine], yerr=std, marker="o",
                    capsize=2, label=f"PE eps {mine[0]['pe_eps']:g}")
    ax.set_xlabel("PGD iterations")
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=8)
    save_figure(fig, png, caption.split(" Paper columns:")[0], 110, 6)


_TAIL = "Profile {profile}; data {data}; seeds {seeds}."

TABLE5 = TableSpec(
    name="moptqs_table5", task="moptqs", paper="moptqs", source="MOptEqs paper Table 5 (appendix A.10)",
    title="MOptEqs Table 5: PGD-3 adversarial training with and without PE",
    caption=("Single-view MOptEqs trained on PGD-{train_steps} examples (L-inf eps {eps}, step {step}, random start; "
             "the attack runs with the model in eval mode) with and without PE; natural accuracy and accuracy under "
             "PGD-{steps} (same eps and step, random start) on the first {n_test} test images, mean and sample std "
             "over seeds. The paper gives neither the norm, the step nor the training eps: these are the spec's "
             "defaults. " + _TAIL),
    columns=(Column("model"), Column("model_key", "params.yaml model"), Column("pe_eps", "PE eps"),
             Column("num_parameters", "parameters"), Column("natural_accuracy_mean", "natural accuracy", "%"),
             Column("natural_accuracy_std", "std over seeds", "%"), Column("pgd_accuracy_mean", "PGD accuracy", "%"),
             Column("pgd_accuracy_std", "std over seeds", "%"), Column("n_seeds", "seeds"),
             Column("pgd_steps", "PGD steps"), Column("eps", "eps (L-inf, pixels in [0, 1])"),
             Column("step_size", "step"), Column("train_pgd_steps", "PGD steps in training"),
             Column("paper_natural_accuracy", "natural accuracy", "%", reference_for="natural_accuracy_mean"),
             Column("paper_pgd_accuracy", "PGD-20 accuracy", "%", reference_for="pgd_accuracy_mean"),
             Column("n_test", "test images"), Column("profile"), Column("data_source", "data")),
    settings_of=lambda settings: settings.table("moptqs_table5"), build=build_table5, metrics=table5_metrics,
)

FIGURE3B = TableSpec(
    name="moptqs_figure3b", task="moptqs", paper="moptqs", source="MOptEqs paper Figure 3(b)",
    title="MOptEqs Figure 3(b): robustness from PE against PGD iterations",
    caption=("Naturally trained single-view MOptEqs with PE eps 0 (no PE), 0.1, 0.25 and 0.5 in training, attacked by "
             "L-inf PGD-k (eps {eps}, step {step}, random start; PE off at test) for k = {k}: accuracy on the first "
             "{n_test} test images, mean and sample std over seeds; 'mean' rows average the plotted k (clean accuracy "
             "beside). The paper gives neither the radius nor the step: these are the spec's defaults. " + _TAIL),
    columns=(Column("model"), Column("model_key", "params.yaml model"), Column("pe_eps", "PE eps in training"),
             Column("kind"), Column("pgd_iterations", "PGD iterations"), Column("accuracy_mean", "accuracy", "%"),
             Column("accuracy_std", "std over seeds", "%"), Column("clean_accuracy_mean", "clean accuracy", "%"),
             Column("n_seeds", "seeds"), Column("n_test", "test images"), Column("profile"),
             Column("data_source", "data")),
    settings_of=lambda settings: settings.table("moptqs_figure3b"), build=build_figure3b, metrics=figure3b_metrics,
    draw=draw_figure3b, plot={"x": "pgd_iterations", "y": "accuracy_mean"},
)
