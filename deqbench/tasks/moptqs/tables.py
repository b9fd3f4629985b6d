"""The MOptEqs paper's tables and figures as deqbench reproduces them, with the paper's values as reference columns.

Rows the paper quotes from other papers (Neural ODEs, MonDEQ, Deep OptEqs, ...) appear as quoted references: the
paper's columns only, never as our result.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any, Sequence

from deqbench.data import DATASETS
from deqbench.experiments.config import ConfigError
from deqbench.experiments.io import save_figure
from deqbench.experiments.tables import Column, TableRows, TableSpec, measured_on, read_results
from deqbench.tasks.moptqs.analysis import FIGURE2, FIGURE3A
from deqbench.tasks.moptqs.cost import TABLE6
from deqbench.tasks.moptqs.robustness import FIGURE3B, TABLE5
from deqbench.tasks.moptqs.settings import AnyModel, BaselineParams, TableJob

TASK = "moptqs"
PAPER = "moptqs"

# MOptEqs paper (Li, Wang, Xie, Lin, ICLR 2022): per table and dataset, (parameters, accuracy %, std %) of a row,
# by our model key (std None where the paper prints a single run).
PAPER_ROWS: dict[str, dict[str, dict[str, tuple[int | None, float, float | None]]]] = {
    "moptqs_table1a": {"cifar10": {"parallel_optqs": (193_000, 87.4, None), "poptqs_sum": (193_000, 88.4, None),
                                   "poptqs_conv": (276_000, 88.9, None), "moptqs_no_pe": (193_000, 89.1, None),
                                   "moptqs": (193_000, 89.5, None)}},
    "moptqs_table1b": {"cifar10": {"mdeq_small": (2_530_000, 92.6, 0.2), "mdeq_large": (10_000_000, 93.8, 0.3),
                                   "moptqs_ms_048": (480_000, 92.9, 0.2), "moptqs_ms_19": (1_900_000, 94.0, 0.1),
                                   "moptqs_ms_81": (8_100_000, 94.6, None)}},
    "moptqs_table2": {"cifar100": {"mdeq_small": (2_600_000, 70.8, 0.2), "mdeq_large": (11_000_000, 72.4, 0.2),
                                   "moptqs_ms_19": (1_900_000, 73.4, 0.2), "moptqs_ms_81": (8_100_000, 74.7, None)},
                      "imagenette": {"mdeq_small_in": (2_500_000, 90.5, 0.2), "mdeq_large_in": (10_000_000, 91.3, 0.3),
                                     "moptqs_ms_19_in": (1_900_000, 92.1, 0.2),
                                     "moptqs_ms_10m_in": (10_000_000, 92.4, None)}},
    "moptqs_table3": {"cifar10": {"ablation_full": (None, 89.1, None), "ablation_no_d": (None, 88.6, None),
                                  "ablation_no_h": (None, 88.4, None), "parallel_optqs": (None, 87.4, None)}},
    "moptqs_table4": {"imagenet": {"moptqs_imagenet_13m": (13_000_000, 72.5, None)}},
}
# Rows the paper quotes from other work: (dataset, row, parameters, accuracy %, where the number comes from).
QUOTED_ROWS: dict[str, tuple[tuple[str, str, int, float, str], ...]] = {
    "moptqs_table1a": (("cifar10", "Neural ODEs", 172_000, 53.7, "Chen et al. 2018 via Dupont et al. 2019"),
                       ("cifar10", "Aug. Neural ODEs", 172_000, 60.6, "Dupont et al. 2019"),
                       ("cifar10", "Single-tier MonDEQ", 854_000, 82.5, "Winston & Kolter 2020"),
                       ("cifar10", "Deep OptEqs", 199_000, 87.4, "Xie et al. 2021")),
    "moptqs_table1b": (("cifar10", "ResNet-18", 10_000_000, 92.9, "He et al. 2016 (as printed: 10M)"),
                       ("cifar10", "MonDEQ (multi-tier)", 1_000_000, 89.7, "Winston & Kolter 2020")),
    "moptqs_table4": (("imagenet", "ResNet", 13_000_000, 70.3, "He et al. 2016 (13M variant, as printed)"),
                      ("imagenet", "HR-Net", 13_000_000, 72.3, "Wang et al. 2020 (13M variant, as printed)")),
}
TABLE_ROW_LABELS = {"moptqs_table3": {"ablation_full": "MOptEqs", "ablation_no_d": "- D", "ablation_no_h": "- H",
                                      "parallel_optqs": "- D, H"}}


def _settings(table: str):
    return lambda settings: settings.table(table)


def model_choices(model: AnyModel) -> str:
    """The settings the paper leaves open, as this model uses them (spec section A, AMBIG-A1/A3/A5/A6)."""
    if isinstance(model, BaselineParams):
        return (f"MDEQ baseline: channels {list(model.channels)}, expansion {model.expansion}, GroupNorm, "
                f"weight norm {model.weight_norm}, stride-2 stem convs {model.stem_downsample}; the same solver as "
                f"the MOptEqs rows; " + (f"MDEQ's own optimiser, Adam {model.adam_lr:g} with a cosine schedule"
                                          if model.adam_lr is not None else "the MOptEqs SGD recipe")
                + (f"; Jacobian regularisation {model.jac_reg:g}" if model.jac_reg else "")
                + "".join(f"; {e:g} epochs on {ds}" for ds, e in sorted((model.epochs or {}).items())))
    pe = f"PE eps {model.pe_eps:g} in training" + (" and at test" if model.pe_at_eval else " only") \
        if model.pe_eps > 0 else "no PE"
    return (f"{model.layout}, {model.branches} x {model.channels} ch; W {model.wnorm}-normalised (zeta "
            f"{model.zeta:g}); P {model.p_scale}; {model.update} updates; {pe}; {model.gradient} gradient")


# ----------------------------------------------------------------------------- accuracy tables


ACCURACY_COLUMNS = (
    Column("dataset"), Column("model", "model"), Column("model_key", "params.yaml model"), Column("coupling"),
    Column("lam", "lambda"), Column("num_parameters", "parameters"),
    Column("accuracy_mean", "accuracy", "%"), Column("accuracy_std", "std over seeds", "%"),
    Column("n_seeds", "seeds"), Column("accuracy_pe_at_eval_mean", "accuracy with PE also at test", "%"),
    Column("forward_iterations_mean", "forward iterations at test"),
    Column("residual_mean", "relative residual at test"), Column("train_seconds_mean", "training wall clock", "s"),
    Column("paper_parameters", "parameters", reference_for="num_parameters"),
    Column("paper_accuracy", "accuracy", "%", reference_for="accuracy_mean"),
    Column("paper_std", "std", "%", reference_for="accuracy_std"),
    Column("row_source", "row"), Column("choices", "settings the paper leaves open"),
    Column("n_test", "test images"), Column("profile"), Column("data_source", "data"),
)


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def dataset_label(dataset: str) -> str:
    """The table's name for a dataset key (the paper's dataset; the data actually used is in ``data_source``)."""
    return DATASETS[dataset].display_name() if dataset in DATASETS else dataset


def chance_rows(job: TableJob, by_row: dict[tuple[str, str], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per dataset, the trivial answer's accuracy (always the most frequent test class), from the evaluations."""
    rows = []
    for dataset in dict.fromkeys(ds for ds, _, _ in job.rows):
        chance = [r["chance_accuracy"] for (ds, _), runs in by_row.items() if ds == dataset for r in runs
                  if "chance_accuracy" in r]
        if chance:
            rows.append({"dataset": dataset_label(dataset), "model": "chance (always the most frequent test class)",
                         "accuracy_mean": max(chance), "row_source": "reference: no model", "profile": job.profile})
    return rows


def build_accuracy(job: TableJob, files: Sequence[str]) -> TableRows:
    """One row per declared (dataset, model): test accuracy mean and sample std over seeds; then the quoted rows."""
    results = read_results(files)
    by_row: dict[tuple[str, str], list[dict[str, Any]]] = {}
    wanted = {(ds, name) for ds, name, _ in job.rows}
    for r in results:
        key = (r["train"]["dataset"], r["train"]["model_name"])
        if key not in wanted:
            raise ConfigError(f"{r['_file']}: a {key[0]} result of {key[1]!r}, which {job.table} does not show")
        by_row.setdefault(key, []).append(r)
    paper = PAPER_ROWS.get(job.table, {})
    labels = TABLE_ROW_LABELS.get(job.table, {})
    rows, sources, n_test = [], set(), set()
    for dataset, name, model in job.rows:
        runs = by_row.get((dataset, name))
        if not runs:
            raise ConfigError(f"{job.table}: no evaluation of model {name!r} on {dataset}")
        accuracy = [r["accuracy"] for r in runs]
        sources.update(r["data_source"] for r in runs)
        n_test.update(r["n_test"] for r in runs)
        reference = paper.get(dataset, {}).get(name)
        rows.append({
            "dataset": dataset_label(dataset),
            "model": labels.get(name, model.label), "model_key": name, "coupling": getattr(model, "coupling", "MDEQ"),
            "lam": getattr(model, "lam", None), "num_parameters": runs[0]["num_parameters"],
            "accuracy_mean": statistics.fmean(accuracy),
            "accuracy_std": statistics.stdev(accuracy) if len(accuracy) > 1 else float("nan"),
            "n_seeds": len(accuracy),
            "accuracy_pe_at_eval_mean": _mean([r["accuracy_pe_at_eval"] for r in runs if "accuracy_pe_at_eval" in r]),
            "forward_iterations_mean": _mean([r["forward_iterations_mean"] for r in runs]),
            "residual_mean": _mean([r["residual_mean"] for r in runs]),
            "train_seconds_mean": _mean([r["train"]["train_seconds"] for r in runs]),
            "paper_parameters": reference[0] if reference else None,
            "paper_accuracy": reference[1] if reference else None,
            "paper_std": reference[2] if reference else None,
            "row_source": "ours", "choices": model_choices(model), "n_test": runs[0]["n_test"],
            "profile": job.profile, "data_source": runs[0]["data_source"]})
    rows.extend(chance_rows(job, by_row))
    for dataset, label, params, accuracy, where in QUOTED_ROWS.get(job.table, ()):
        rows.append({"dataset": dataset_label(dataset), "model": label, "paper_parameters": params,
                     "paper_accuracy": accuracy, "row_source": f"quoted by the paper from {where}; not run here",
                     "profile": job.profile})
    seeds = sorted({r["train"]["seed"] for r in results})
    return TableRows(rows, {"seeds": seeds, "profile": job.profile, "data": "; ".join(sorted(sources)),
                            "n_test": ", ".join(map(str, sorted(n_test)))},
                     {"seeds": seeds, "eval_files": sorted(files), "measured_on": measured_on(results)})


def accuracy_metrics(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {f"{r['dataset']}/{r['model_key']}": {"accuracy_mean": r["accuracy_mean"],
                                                 "num_parameters": r["num_parameters"]}
            for r in rows if r.get("row_source") == "ours"}


# ----------------------------------------------------------------------------- Figure 4


CONVERGENCE_COLUMNS = (
    Column("panel"), Column("model", "model"), Column("model_key", "params.yaml model"), Column("lam", "lambda"),
    Column("channels", "channels per branch"), Column("iteration"),
    Column("residual_median", "relative residual, batch median"), Column("residual_q25", "25th percentile"),
    Column("residual_q75", "75th percentile"), Column("seed"), Column("profile"), Column("data_source", "data"),
)


def build_convergence(job: TableJob, files: Sequence[str]) -> TableRows:
    """The traced residuals of every model of the figure, per panel and iteration."""
    results = read_results(files)
    panels = {panel for panel, _ in job.extra}  # TableJob.extra: (panel, model key)
    traces = {r.get("panel", "a"): r for r in results}
    if set(traces) != panels or len(results) != len(panels):
        raise ConfigError(f"{job.table}: expected one trace file per panel {sorted(panels)}, got panels "
                          f"{sorted(r.get('panel', 'a') for r in results)}")
    rows = [{**{k: r[k] for k in ("panel", "lam", "channels", "iteration", "residual_median", "residual_q25",
                                  "residual_q75", "seed")},
             "model": r["label"], "model_key": r["model_name"], "profile": job.profile,
             "data_source": trace["data_source"]} for _, trace in sorted(traces.items()) for r in trace["rows"]]
    names = {name for _, name, _ in job.rows}
    traced = {r["model_key"] for r in rows}
    if traced != names:
        raise ConfigError(f"{job.table}: traced models {sorted(traced)} differ from the declared {sorted(names)}")
    last = max(r["iteration"] for r in rows)
    return TableRows(rows, {"iterations": last, "profile": job.profile,
                            "data": "; ".join(sorted({t["data_source"] for t in results})), "seed": job.seeds[0]},
                     {"trace_files": sorted(files), "measured_on": measured_on(results)})


def convergence_metrics(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per model: the final median residual and the first iteration whose median is below 1e-3."""
    out: dict[str, Any] = {}
    for r in rows:
        entry = out.setdefault(r["model_key"], {"lam": r["lam"], "final_residual": None, "iterations_to_1e-3": None})
        entry["final_residual"] = r["residual_median"]
        if entry["iterations_to_1e-3"] is None and r["residual_median"] < 1e-3:
            entry["iterations_to_1e-3"] = r["iteration"]
    return out


def draw_convergence(rows: list[dict[str, Any]], png: Path, caption: str) -> None:
    """Figure 4: batch-median relative residual per Anderson iteration (log scale), interquartile band; one panel
    per declared panel ((a) single view, several lambda; (b) the multi-scale model)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(dict.fromkeys(r["panel"] for r in rows))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.6 * len(panels), 4.0), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        mine_panel = [r for r in rows if r["panel"] == panel]
        for key in dict.fromkeys(r["model_key"] for r in mine_panel):
            mine = [r for r in mine_panel if r["model_key"] == key]
            its = [r["iteration"] for r in mine]
            line, = ax.semilogy(its, [r["residual_median"] for r in mine],
                                label=f"{mine[0]['model']} (lambda {mine[0]['lam']:g})")
            ax.fill_between(its, [r["residual_q25"] for r in mine], [r["residual_q75"] for r in mine],
                            color=line.get_color(), alpha=0.2)
        ax.axhline(1e-3, color="grey", lw=0.8, ls="--")
        ax.set_title(f"({panel})", fontsize=9)
        ax.set_xlabel("Anderson iteration")
        ax.set_ylabel("||T(z) - z|| / ||T(z)||")
        ax.legend(fontsize=8)
    save_figure(fig, png, caption.split(" Models and their settings")[0], 110, 6)


# ----------------------------------------------------------------------------- Figure 3(c)


def build_figure3c(job: TableJob, files: Sequence[str]) -> TableRows:
    """Accuracy (mean and sample std over seeds) of POptEqs trained with the HH&D loss regulariser per gamma, with
    the gamma = 0 baseline and the MOptEqs (w/o PE) reference as their own rows."""
    results = read_results(files)
    roles = dict(job.extra)
    runs: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        runs.setdefault(r["train"]["model_name"], []).append(r)
    rows = []
    for dataset, key, model in job.rows:
        mine = runs.get(key)
        if not mine:
            raise ConfigError(f"{job.table}: no evaluation of model {key!r}")
        accuracy = [r["accuracy"] for r in mine]
        kind = "baseline" if key == roles["baseline"] else "reference" if key == roles["reference"] else "regularised"
        rows.append({"kind": kind, "model": model.label, "model_key": key, "coupling": model.coupling,
                     "gamma": getattr(model, "hhd_loss_gamma", 0.0), "lam": model.lam,
                     "accuracy_mean": statistics.fmean(accuracy),
                     "accuracy_std": statistics.stdev(accuracy) if len(accuracy) > 1 else float("nan"),
                     "n_seeds": len(mine), "paper_accuracy": {"baseline": 87.4, "reference": 89.1}.get(kind),
                     "n_test": mine[0]["n_test"], "profile": job.profile, "data_source": mine[0]["data_source"]})
    regularised = [r for r in rows if r["kind"] == "regularised"]
    best = max(regularised, key=lambda r: r["accuracy_mean"])
    rows.append({"kind": "best_regularised", "model": best["model"], "model_key": best["model_key"],
                 "gamma": best["gamma"], "accuracy_mean": best["accuracy_mean"], "accuracy_std": best["accuracy_std"],
                 "n_seeds": best["n_seeds"], "profile": job.profile, "data_source": best["data_source"]})
    caption = {"seeds": sorted({r["train"]["seed"] for r in results}), "profile": job.profile,
               "data": rows[0]["data_source"], "n_test": rows[0]["n_test"]}
    return TableRows(rows, caption, {"eval_files": sorted(files), "measured_on": measured_on(results)})


def figure3c_metrics(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {f"{r['kind']}/{r['model_key']}": {"gamma": r["gamma"], "accuracy_mean": r["accuracy_mean"]} for r in rows}


def draw_figure3c(rows: list[dict[str, Any]], png: Path, caption: str) -> None:
    """Fig. 3(c): accuracy against gamma (log x), with the baseline and MOptEqs w/o PE as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.6, 4.0))
    reg = sorted((r for r in rows if r["kind"] == "regularised"), key=lambda r: r["gamma"])
    std = [0.0 if r["accuracy_std"] != r["accuracy_std"] else r["accuracy_std"] for r in reg]
    ax.errorbar([r["gamma"] for r in reg], [r["accuracy_mean"] for r in reg], yerr=std, marker="o", capsize=2,
                label="POptEqs + HH&D loss")
    ax.set_xscale("log")
    for kind, style in (("baseline", "--"), ("reference", ":")):
        for r in rows:
            if r["kind"] == kind:
                ax.axhline(r["accuracy_mean"], ls=style, color="grey" if kind == "baseline" else "black",
                           label=f"{r['model']} ({kind})")
    ax.set_xlabel("gamma")
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=8)
    save_figure(fig, png, caption.split(" Paper columns:")[0], 110, 6)


# ----------------------------------------------------------------------------- declarations


_CAPTION_COMMON = ("Profile {profile}; data {data}. Models and their settings: params.yaml moptqs.models; the "
                   "'settings the paper leaves open' column names each choice (spec section A, AMBIG-A1...A12).")

TABLES = (
    TableSpec(
        name="moptqs_table1a", task=TASK, paper=PAPER, source="MOptEqs paper Table 1(a)",
        title="MOptEqs Table 1(a): single-view models on CIFAR-10",
        caption=("Test accuracy of the single-view models (3 branches of equal size), mean and sample std over seeds "
                 "{seeds}, on {n_test} test images. MOptEqs rows train with PE and are scored without it (AMBIG-A6; "
                 "the PE-at-test column has the other setting). " + _CAPTION_COMMON),
        columns=ACCURACY_COLUMNS, settings_of=_settings("moptqs_table1a"), build=build_accuracy,
        metrics=accuracy_metrics,
    ),
    TableSpec(
        name="moptqs_table1b", task=TASK, paper=PAPER, source="MOptEqs paper Table 1(b)",
        title="MOptEqs Table 1(b): multi-scale MOptEqs against MDEQ on CIFAR-10",
        caption=("Test accuracy of multi-scale MOptEqs (4 branches, finest at the input resolution) and MDEQ "
                 "baselines of several sizes, mean and sample std over seeds {seeds}, {n_test} test images; both "
                 "families use the same solver and training recipe. The 8.1M MOptEqs configuration is not described "
                 "by the paper (C = 512 is our guess, AMBIG-A11). " + _CAPTION_COMMON),
        columns=ACCURACY_COLUMNS, settings_of=_settings("moptqs_table1b"), build=build_accuracy,
        metrics=accuracy_metrics,
    ),
    TableSpec(
        name="moptqs_table2", task=TASK, paper=PAPER, source="MOptEqs paper Table 2(a) and 2(b)",
        title="MOptEqs Table 2: CIFAR-100 and ImageNette",
        caption=("Test accuracy of multi-scale MOptEqs and MDEQ baselines on CIFAR-100 (Table 2(a)) and ImageNette "
                 "(Table 2(b), two stride-2 stem layers in front), mean and sample std over seeds {seeds}, {n_test} "
                 "test images. The 8.1M / 10M MOptEqs configurations are not described by the paper (our guesses, "
                 "AMBIG-A11). " + _CAPTION_COMMON),
        columns=ACCURACY_COLUMNS, settings_of=_settings("moptqs_table2"), build=build_accuracy,
        metrics=accuracy_metrics,
    ),
    TableSpec(
        name="moptqs_table3", task=TASK, paper=PAPER, source="MOptEqs paper Table 3 (appendix A.8)",
        title="MOptEqs Table 3: removing the diversity (D) and heritage (H) terms",
        caption=("Single-view MOptEqs without PE at lambda 0.02 and its ablations: - D is lambda 0, - H keeps the "
                 "diversity term with OptEqs' own feedback, - D, H is Parallel-OptEqs (spec A.4, AMBIG-A4). Test "
                 "accuracy, mean and sample std over seeds {seeds}, {n_test} test images. " + _CAPTION_COMMON),
        columns=ACCURACY_COLUMNS, settings_of=_settings("moptqs_table3"), build=build_accuracy,
        metrics=accuracy_metrics,
    ),
    TableSpec(
        name="moptqs_figure4", task=TASK, paper=PAPER, source="MOptEqs paper Figure 4 (appendix A.7)",
        title="MOptEqs Figure 4: Anderson convergence for several lambda (a) and of the multi-scale model (b)",
        caption=("Relative residual ||T(z) - z|| / ||T(z)|| per Anderson iteration (tolerance 0, {iterations} "
                 "iterations from z = 0) on one batch of test images: batch median and interquartile band; seed "
                 "{seed}. Panel a: trained single-view MOptEqs with different lambda; the paper (C = 32): lambda up to "
                 "about 1/C converges, lambda 0.1 does not; convergence depends on lambda x C, so models with fewer "
                 "channels scale lambda by 32/C (their labels say so). Panel b: the multi-scale MOptEqs (lambda "
                 "0.001) trained on ImageNette, which the paper shows converging fast (to about 1e-6). " + _CAPTION_COMMON.replace("; the 'settings the paper leaves "
                                                                              "open' column names each choice", "")),
        columns=CONVERGENCE_COLUMNS, settings_of=_settings("moptqs_figure4"), build=build_convergence,
        metrics=convergence_metrics, draw=draw_convergence, plot={"x": "iteration", "y": "residual_median"},
    ),
)
TABLES += (
    TableSpec(
        name="moptqs_table4", task=TASK, paper=PAPER, source="MOptEqs paper Table 4 (appendix A.9)",
        title="MOptEqs Table 4: ImageNet",
        caption=("Top-1 accuracy on the ImageNet validation set, mean and sample std over seeds {seeds}, {n_test} "
                 "images. The paper does not describe its 13M ImageNet model; ours is a guess (AMBIG-A11). Needs the "
                 "ImageNet files: built only with `snakemake results/moptqs_table4.csv --config profile=paper`. "
                 + _CAPTION_COMMON),
        columns=ACCURACY_COLUMNS, settings_of=_settings("moptqs_table4"), build=build_accuracy,
        metrics=accuracy_metrics, needs="ImageNet",
    ),
    TableSpec(
        name="moptqs_figure3c", task=TASK, paper=PAPER, source="MOptEqs paper Figure 3(c)",
        title="MOptEqs Figure 3(c): the HH&D terms as a loss regulariser instead of an architecture",
        caption=("Test accuracy of POptEqs (Parallel-OptEqs, no HH&D module) trained with the augmented loss CE + "
                 "gamma sum_k (lambda D - H)(z_k*, z_k+1*) on unit-norm channel vectors, per gamma (AMBIG-A10: the "
                 "printed sign would maximise D and minimise H, against the stated intent; we minimise D and maximise "
                 "H), against gamma = 0 (baseline) and MOptEqs w/o PE (reference); mean and sample std over seeds "
                 "{seeds}, {n_test} test images. The paper columns are the two horizontal lines of its figure. "
                 + _CAPTION_COMMON),
        columns=(Column("kind"), Column("model"), Column("model_key", "params.yaml model"), Column("coupling"),
                 Column("gamma", "gamma"), Column("lam", "lambda"), Column("accuracy_mean", "accuracy", "%"),
                 Column("accuracy_std", "std over seeds", "%"), Column("n_seeds", "seeds"),
                 Column("paper_accuracy", "accuracy", "%", reference_for="accuracy_mean"),
                 Column("n_test", "test images"), Column("profile"), Column("data_source", "data")),
        settings_of=_settings("moptqs_figure3c"), build=build_figure3c, metrics=figure3c_metrics,
        draw=draw_figure3c, plot={"x": "gamma", "y": "accuracy_mean"},
    ),
    TABLE5, TABLE6, FIGURE2, FIGURE3A, FIGURE3B,  # declared beside their computations
)
