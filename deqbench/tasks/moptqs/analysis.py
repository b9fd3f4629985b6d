"""MOptEqs analysis figures: the HH&D effect (Figure 2) and the perturbation direction (Figure 3(a)), spec A.10.

Each figure has a computation on trained models (``dh_statistics``, ``perturbation_curves``), a stage-level wrapper
over the prepared data (``run_figure2_data``, ``run_figure3a_data``, returning the JSON a stage writes) and a
:class:`TableSpec` that assembles, draws and summarises that JSON.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from deqbench.experiments.config import ConfigError
from deqbench.experiments.io import save_figure
from deqbench.experiments.runtime import data_source_label
from deqbench.experiments.tables import Column, TableRows, TableSpec, measured_on, read_results
from deqbench.models.moptqs import MOptEqs
from deqbench.tasks.moptqs.settings import TableJob

KINDS = ("reconstructed", "binomial", "uniform")
_CAPTION_TAIL = "Checkpoint seed {seed}; profile {profile}; data {data}."


def _check_eval(model: MOptEqs, what: str, forward_pe: bool) -> None:
    if model.training:
        raise ValueError(f"{what}: the model must be in eval mode (BatchNorm running statistics)")
    if forward_pe and model.pe_active():  # forward() would add PE; reconstructed_perturbation solves without it
        raise ValueError(f"{what}: solves without PE; the model has pe_at_eval=True")


# ----------------------------------------------------------------------------- Figure 2


def dh_statistics(models: list[tuple[str, str, MOptEqs]], images: Tensor, max_iter: int,
                  tol: float = 1e-3) -> dict[str, Any]:
    """Average D / Average H per sample at z* (Fig. 2a/b, AMBIG-A7), normalised and raw, and the first sample's
    |branch 2 vs branch 1| channel-correlation heatmap (Fig. 2c/d), for each (key, label, model); PE off."""
    rows: list[dict[str, Any]] = []
    heatmaps: dict[str, Any] = {}
    heatmaps_raw: dict[str, Any] = {}
    for key, label, model in models:
        _check_eval(model, "Figure 2", forward_pe=False)
        if model.config.branches < 2:
            raise ValueError(f"Figure 2: model {key!r} has one branch; D, H and the heatmap need two")
        x = images.to(next(model.parameters()))
        stats: dict[str, Any] = {}
        z, _ = model.solve_equilibrium(x, perturb=False, max_iter=max_iter, tol=tol, stats=stats)
        (d, h), (d_raw, h_raw) = model.average_dh(z), model.average_dh(z, normalize=False)
        columns = {"average_d": d, "average_h": h, "average_d_raw": d_raw, "average_h_raw": h_raw,
                   "residual": stats["forward"].residual}
        values = {k: v.double().cpu().tolist() for k, v in columns.items()}
        rows += [{"model": label, "model_key": key, "sample": k, **{c: v[k] for c, v in values.items()}}
                 for k in range(x.shape[0])]
        heatmaps[key] = model.channel_correlation(z)[0].double().cpu().tolist()
        heatmaps_raw[key] = model.channel_correlation(z, normalize=False)[0].double().cpu().tolist()
    return {"rows": rows, "heatmaps": heatmaps, "heatmaps_raw": heatmaps_raw}


def run_figure2_data(models_with_labels: list[tuple[str, str, MOptEqs]], data: dict[str, Any], n_samples: int,
                     max_iter: int, device: torch.device, seed: int | None = None) -> dict[str, Any]:
    """Fig. 2 on ``n_samples`` test images (the first ones, or a random subset drawn with ``seed``)."""
    images = data["test"]["images"]
    n = min(n_samples, len(images))
    idx = torch.arange(n) if seed is None else \
        torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:n]
    models = [(key, label, model.to(device)) for key, label, model in models_with_labels]
    out = dh_statistics(models, images[idx].to(device), max_iter)
    return {**out, "data_source": data_source_label(data["meta"]), "n_samples": n, "max_iter": max_iter,
            "test_indices": idx.tolist()}


def diagonal_dominance(matrix: Sequence[Sequence[float]]) -> float | None:
    """Mean diagonal / mean off-diagonal entry of a C x C heatmap (Fig. 2c/d: 'close to diagonal')."""
    c = len(matrix)
    off = [matrix[i][j] for i in range(c) for j in range(c) if i != j]
    if not off or statistics.fmean(off) == 0:
        return None
    return statistics.fmean(matrix[i][i] for i in range(c)) / statistics.fmean(off)


def _declared(job: TableJob) -> list[str]:
    return [key for _, key, _ in job.rows]  # TableJob.rows: (dataset, model key, model)


def _one_file(job: TableJob, files: Sequence[str]) -> dict[str, Any]:
    results = read_results(files)
    if len(results) != 1:
        raise ConfigError(f"{job.table}: expected one data file, got {len(results)}")
    return results[0]


def build_figure2(job: TableJob, files: Sequence[str]) -> TableRows:
    """Rows of kind 'mean' (per model), 'sample' (per model and sample) and 'heatmap' (per model and C x C cell)."""
    data = _one_file(job, files)
    common = {"profile": job.profile, "data_source": data["data_source"]}
    samples = [{**r, "kind": "sample", **common} for r in data["rows"]]
    keys = list(dict.fromkeys(r["model_key"] for r in samples))
    declared = _declared(job)
    if set(keys) != set(declared):
        raise ConfigError(f"{job.table}: models in the data {sorted(keys)} differ from the declared {sorted(declared)}")
    means, cells = [], []
    for key in keys:
        mine = [r for r in samples if r["model_key"] == key]
        heat, raw = data["heatmaps"][key], data.get("heatmaps_raw", {}).get(key)
        head = {"model": mine[0]["model"], "model_key": key, **common}
        means.append({**head, "kind": "mean", **{c: statistics.fmean(r[c] for r in mine) for c in
                      ("average_d", "average_h", "average_d_raw", "average_h_raw", "residual")},
                      "diagonal_dominance": diagonal_dominance(heat)})
        cells += [{**head, "kind": "heatmap", "sample": 0, "i": i, "j": j, "value": v,
                   "value_raw": raw[i][j] if raw else None} for i, line in enumerate(heat) for j, v in enumerate(line)]
    caption = {"profile": job.profile, "data": data["data_source"], "seed": ", ".join(map(str, job.seeds)),
               "n": data.get("n_samples", len(samples) // max(len(keys), 1)), "max_iter": data.get("max_iter", "?")}
    return TableRows(means + samples + cells, caption,
                     {"data_file": data["_file"], "test_indices": data.get("test_indices"),
                      "heatmaps": data["heatmaps"], "measured_on": measured_on([data])})


def figure2_metrics(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per model: mean Average D / H (normalised and raw) and the heatmap's diagonal dominance (claim MOPT-15)."""
    return {r["model_key"]: {k: r[k] for k in ("average_d", "average_h", "average_d_raw", "average_h_raw",
                                               "diagonal_dominance")} for r in rows if r["kind"] == "mean"}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def draw_figure2(rows: list[dict[str, Any]], png: Path, caption: str) -> None:
    """Fig. 2: top, Average D and H against sample index per model (a, b); bottom, the heatmaps (c, d)."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    keys = list(dict.fromkeys(r["model_key"] for r in rows if r["kind"] == "sample"))
    cells = [r for r in rows if r["kind"] == "heatmap"]
    low, high = min(r["value"] for r in cells), max(r["value"] for r in cells)  # one colour scale for all panels
    fig, axes = plt.subplots(2, len(keys), figsize=(4.2 * len(keys), 7.6), squeeze=False)
    for col, key in enumerate(keys):
        mine = [r for r in rows if r["model_key"] == key and r["kind"] == "sample"]
        ax = axes[0, col]
        ax.scatter([r["sample"] for r in mine], [r["average_d"] for r in mine], s=9, label="Average D")
        ax.scatter([r["sample"] for r in mine], [r["average_h"] for r in mine], s=12, marker="x", label="Average H")
        ax.set_title(f"({chr(97 + col)}) {mine[0]['model']}", fontsize=9)
        ax.set_xlabel("test sample")
        ax.legend(fontsize=7)
        heat = [r for r in cells if r["model_key"] == key]
        c = max(r["i"] for r in heat) + 1
        matrix = [[float("nan")] * c for _ in range(c)]
        for r in heat:
            matrix[r["i"]][r["j"]] = r["value"]
        ax = axes[1, col]
        image = ax.imshow(matrix, vmin=low, vmax=high, cmap="viridis")
        ax.set_title(f"({chr(97 + len(keys) + col)}) {mine[0]['model']}: |corr(z_2, z_1)|, sample 0", fontsize=9)
        ax.set_xlabel("branch 1 channel")
        ax.set_ylabel("branch 2 channel")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        fig.colorbar(image, ax=ax, fraction=0.046)
    save_figure(fig, png, caption.split(" Paper columns:")[0], 140, 6)


# ----------------------------------------------------------------------------- Figure 3(a)


def random_feature_delta(kind: str, eps: float, shape: Sequence[int], generator: torch.Generator) -> Tensor:
    """A float64 CPU draw of delta ~ Binomial(+-eps) or Uniform[-eps, eps] (Fig. 3a baselines)."""
    if kind == "binomial":
        return eps * (2.0 * torch.randint(0, 2, tuple(shape), generator=generator, dtype=torch.float64) - 1.0)
    if kind == "uniform":
        return eps * (2.0 * torch.rand(tuple(shape), generator=generator, dtype=torch.float64) - 1.0)
    raise ValueError(f"unknown random perturbation {kind!r}; known: binomial, uniform")


def reconstructed_delta(model: MOptEqs, images: Tensor, eps: float, solve: dict[str, Any]) -> Tensor:
    """delta = eps * sign(U_1^T y_1*) from the unperturbed z* (Fig. 3a, spec A.5), shaped like g(x)."""
    return model.reconstructed_perturbation(images, eps, max_iter=solve.get("max_iter", 50),
                                            tol=solve.get("tol", 1e-3))


def perturbation_curves(model: MOptEqs, images: Tensor, labels: Tensor, eps_values: Sequence[float], trials: int,
                        seed: int, solve: dict[str, Any], batch_size: int = 500) -> list[dict[str, Any]]:
    """Accuracy (%) on g(x) - delta (reconstructed) and g(x) + delta (random, mean of ``trials`` draws) per eps
    (Fig. 3a); eps = 0 is the clean accuracy for every kind."""
    _check_eval(model, "Figure 3(a)", forward_pe=True)
    eps_list = sorted({float(e) for e in eps_values})
    if not eps_list or eps_list[0] < 0 or trials < 1:
        raise ValueError(f"Figure 3(a): need eps >= 0 and trials >= 1, got {eps_values!r}, {trials}")
    kwargs = {"backward": "none", **solve}
    gen = torch.Generator().manual_seed(seed)
    ref = next(model.parameters())
    hits: dict[tuple[str, float], list[Any]] = {
        (kind, eps): [0] * (trials if kind != "reconstructed" and eps > 0 else 1) for kind in KINDS for eps in eps_list}
    with torch.no_grad():
        for start in range(0, len(labels), batch_size):
            x = images[start : start + batch_size].to(ref)
            y = labels[start : start + batch_size].to(ref.device)

            def correct(delta: Tensor | None) -> Tensor:
                return (model(x, feature_delta=delta, **kwargs).argmax(1) == y).sum()

            clean = correct(None)
            sign = reconstructed_delta(model, x, 1.0, solve)  # z* does not depend on eps: one solve for all
            for eps in eps_list:
                if eps == 0:
                    for kind in KINDS:
                        hits[kind, eps][0] += clean
                    continue
                hits["reconstructed", eps][0] += correct(-eps * sign)
                for t in range(trials):
                    for kind in KINDS[1:]:
                        hits[kind, eps][t] += correct(random_feature_delta(kind, eps, sign.shape, gen).to(sign))
    rows = []
    for (kind, eps), counts in hits.items():
        acc = [100.0 * float(c) / len(labels) for c in counts]
        rows.append({"kind": kind, "eps": eps, "accuracy": statistics.fmean(acc),
                     "accuracy_std": statistics.stdev(acc) if len(acc) > 1 else None, "trials": len(acc),
                     "n": len(labels)})
    return rows


def run_figure3a_data(model: MOptEqs, data: dict[str, Any], eps_values: Sequence[float], trials: int, seed: int,
                      solve: dict[str, Any], limit: int | None, device: torch.device, model_key: str = "",
                      label: str | None = None, batch_size: int = 500) -> dict[str, Any]:
    """Fig. 3(a) on the first ``limit`` test images (all with None)."""
    images, labels = data["test"]["images"][:limit], data["test"]["labels"][:limit]
    rows = perturbation_curves(model.to(device), images, labels, eps_values, trials, seed, solve, batch_size)
    return {"rows": rows, "data_source": data_source_label(data["meta"]), "model_key": model_key,
            "label": label or model.config.variant, "eps_values": sorted({float(e) for e in eps_values}),
            "trials": trials, "seed": seed, "n": len(labels), "solve": solve}


def build_figure3a(job: TableJob, files: Sequence[str]) -> TableRows:
    """The curves, each reconstructed row with its drop below the less harmful random kind, and a 'min_drop' row."""
    data = _one_file(job, files)
    declared = _declared(job)
    if data.get("model_key") and declared and data["model_key"] not in declared:
        raise ConfigError(f"{job.table}: data of model {data['model_key']!r}, not one of the declared {declared}")
    common = {"model": data["label"], "model_key": data.get("model_key"), "profile": job.profile,
              "data_source": data["data_source"]}
    rows = [{**common, **r} for r in data["rows"]]
    acc = {(r["kind"], r["eps"]): r["accuracy"] for r in rows}
    drops = []
    for r in rows:
        if r["kind"] == "reconstructed" and r["eps"] > 0:
            r["drop_vs_random"] = min(acc["binomial", r["eps"]], acc["uniform", r["eps"]]) - r["accuracy"]
            drops.append(r)
    if drops:
        worst = min(drops, key=lambda r: r["drop_vs_random"])
        rows.append({**common, "kind": "min_drop", "eps": worst["eps"], "drop_vs_random": worst["drop_vs_random"],
                     "n": worst["n"]})
    caption = {"profile": job.profile, "data": data["data_source"], "seed": ", ".join(map(str, job.seeds)),
               "draw_seed": data.get("seed", "?"), "n": data.get("n", rows[0]["n"]),
               "trials": data.get("trials", "?"), "label": data["label"]}
    return TableRows(rows, caption, {"data_file": data["_file"], "solve": data.get("solve"),
                                     "measured_on": measured_on([data])})


def figure3a_metrics(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per kind the accuracy at the largest eps (and clean), and the smallest drop of 'reconstructed' (MOPT-12)."""
    out: dict[str, Any] = {}
    for kind in KINDS:
        mine = sorted((r for r in rows if r["kind"] == kind), key=lambda r: r["eps"])
        if mine:
            out[kind] = {"eps": mine[-1]["eps"], "accuracy": mine[-1]["accuracy"],
                         "clean_accuracy": mine[0]["accuracy"] if mine[0]["eps"] == 0 else None}
    out["min_drop_vs_random"] = next((r["drop_vs_random"] for r in rows if r["kind"] == "min_drop"), None)
    return out


def draw_figure3a(rows: list[dict[str, Any]], png: Path, caption: str) -> None:
    """Fig. 3(a): test accuracy against perturbation size eps, one line per kind (random: +- std over draws)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 4.0))
    for kind, marker in zip(KINDS, "osd"):
        mine = sorted((r for r in rows if r["kind"] == kind), key=lambda r: r["eps"])
        ax.errorbar([r["eps"] for r in mine], [r["accuracy"] for r in mine], marker=marker, capsize=2,
                    yerr=[r.get("accuracy_std") or 0.0 for r in mine], label=kind)
    ax.set_xlabel("perturbation size eps")
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=8)
    save_figure(fig, png, caption.split(" Paper columns:")[0], 110, 6)


# ----------------------------------------------------------------------------- declarations


FIGURE2 = TableSpec(
    name="moptqs_figure2", task="moptqs", paper="moptqs", source="MOptEqs paper Figure 2",
    title="MOptEqs Figure 2: the HH&D effect (Average D / H and branch channel correlation)",
    caption=("Trained single-view MOptEqs and POptEqs at the equilibrium (PE off, at most {max_iter} Anderson "
             "iterations) on {n} test samples. Average D = sum_i sum_(j in N(i)) D(z_i, z_j) / (L C^2), Average H "
             "the same sum of H(z_i, z_j) / (L C), H with a positive sign; channel vectors L2-normalised (the _raw "
             "columns without; AMBIG-A7). Heatmap rows: |<z_2^(k1), z_1^(k2)>| of normalised channels, sample 0 "
             "(value_raw unnormalised); 'mean' rows average the samples, diagonal dominance = mean diagonal / mean "
             "off-diagonal heatmap entry. " + _CAPTION_TAIL),
    columns=(Column("model"), Column("model_key", "params.yaml model"), Column("kind"), Column("sample"),
             Column("average_d", "Average D"), Column("average_h", "Average H"),
             Column("average_d_raw", "Average D, unnormalised"), Column("average_h_raw", "Average H, unnormalised"),
             Column("diagonal_dominance", "heatmap diagonal dominance"), Column("i", "branch 2 channel"),
             Column("j", "branch 1 channel"), Column("value", "|correlation|"),
             Column("value_raw", "|inner product|, unnormalised"), Column("residual", "relative residual"),
             Column("profile"), Column("data_source", "data")),
    settings_of=lambda settings: settings.table("moptqs_figure2"), build=build_figure2, metrics=figure2_metrics,
    draw=draw_figure2,
)

FIGURE3A = TableSpec(
    name="moptqs_figure3a", task="moptqs", paper="moptqs", source="MOptEqs paper Figure 3(a)",
    title="MOptEqs Figure 3(a): reconstructed vs random feature perturbations",
    caption=("Test accuracy of {label} on {n} test images solved on g(x) - delta, delta = eps sign(U_1^T y_1*) from "
             "the unperturbed equilibrium (reconstructed, spec A.5), and on g(x) + delta with delta ~ Binomial(+-eps) "
             "or Uniform[-eps, eps] (mean and std of {trials} draws, generator seed {draw_seed}); eps 0 is the clean "
             "accuracy. drop_vs_random = accuracy of the less harmful random kind minus the reconstructed one; the "
             "min_drop row is its minimum over eps > 0. " + _CAPTION_TAIL),
    columns=(Column("model"), Column("model_key", "params.yaml model"), Column("kind"), Column("eps", "eps"),
             Column("accuracy", "accuracy", "%"), Column("accuracy_std", "std over draws", "%"),
             Column("trials", "draws"), Column("n", "test images"),
             Column("drop_vs_random", "accuracy drop vs random", "points"), Column("profile"),
             Column("data_source", "data")),
    settings_of=lambda settings: settings.table("moptqs_figure3a"), build=build_figure3a, metrics=figure3a_metrics,
    draw=draw_figure3a, plot={"x": "eps", "y": "accuracy"},
)
