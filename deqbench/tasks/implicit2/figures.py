"""The (Implicit)^2 figures: gradient order (Fig. 4), cost per step (README figure), amortisation, pictures.

None of them has numbers in our sources (spec C.5 / C.6), so they have no paper columns; the claims ledger checks
their qualitative statements (IMP2-9, IMP2-10, the O(1) / O(L) / O(M) cost figure).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from deqbench.experiments.config import ConfigError
from deqbench.experiments.io import save_figure
from deqbench.experiments.tables import Column, TableRows, TableSpec, measured_on, read_results
from deqbench.tasks.implicit2.settings import TableJob

TASK = PAPER = "implicit2"
_NOTE = " Profile {profile}; data {data}."


def _plt() -> Any:
    """matplotlib with the Agg backend (figures of spec C.2 / C.6)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _one(results: list[dict[str, Any]], table: str) -> dict[str, Any]:
    """The single result file a figure reads (spec C.2 / C.6)."""
    if len(results) != 1:
        raise ConfigError(f"{table}: expected one result file, got {len(results)}")
    return results[0]


# ----------------------------------------------------------------------------- Fig. 4: gradient order


def build_gradient_order(job: TableJob, files: Sequence[str]) -> TableRows:
    """Per T: a 'final' row (fresh-solve training PSNR, time per step, gap to T = inf) and one 'step' row per
    training step (the step's training PSNR and the wall clock since the start) (Fig. 4, spec C.2)."""
    r = _one(read_results(files), job.table)
    curves = {c["order"]: c for c in r["curves"]}
    exact = curves.get("inf")
    base = {"profile": job.profile, "data_source": r["data_source"], "image": r["image_name"]}
    final, steps = [], []
    for order, c in curves.items():
        final.append({"kind": "final", "order": order, "label": c["label"], "size": c["size"],
                      "final_train_psnr": c["final_train_psnr"], "last_step_psnr": c["train_psnr"][-1],
                      "step_seconds": c["step_seconds"], "train_seconds": c["train_seconds"],
                      "f_applications_per_step": c["f_applications_per_step"], "steps": c["steps"],
                      "gap_to_inf": c["final_train_psnr"] - exact["final_train_psnr"] if exact else None, **base})
        steps += [{"kind": "step", "order": order, "step": k + 1, "train_psnr": p, "seconds": s, **base}
                  for k, (p, s) in enumerate(zip(c["train_psnr"], c["seconds"]))]
    return TableRows(final + steps, {"profile": job.profile, "data": r["data_source"], "image": r["image_name"],
                                     "pixels": r["n_pixels"], "size": r["curves"][0]["size"], "seed": r["seed"],
                                     "steps": r["curves"][0]["steps"], "scale": r["input_scale"]},
                     {"seeds": [r["seed"]], "run_files": sorted(files), "image_sha256": r["image_sha256"],
                      "measured_on": measured_on([r])})


def draw_gradient_order(rows: list[dict[str, Any]], png: Path, caption: str) -> None:
    """Training PSNR against step and against wall-clock seconds, one line per T (Fig. 4, spec C.2)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for order in dict.fromkeys(r["order"] for r in rows if r["kind"] == "step"):
        mine = [r for r in rows if r["kind"] == "step" and r["order"] == order]
        label = "T = inf (IFT)" if order == "inf" else f"T = {order}"
        axes[0].plot([r["step"] for r in mine], [r["train_psnr"] for r in mine], label=label, lw=1)
        axes[1].plot([r["seconds"] for r in mine], [r["train_psnr"] for r in mine], label=label, lw=1)
    for ax, xlabel in zip(axes, ("training step", "wall clock (s)")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel("training PSNR (dB)")
        ax.legend(fontsize=8)
    save_figure(fig, png, caption.split(" Paper columns:")[0], 150, 7)


def gradient_order_metrics(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """DVC metrics of Fig. 4: final training PSNR, time per step and gap to T = inf (spec C.2)."""
    return {f"T={r['order']}": {k: r[k] for k in ("final_train_psnr", "step_seconds", "gap_to_inf")}
            for r in rows if r["kind"] == "final"}


# ----------------------------------------------------------------------------- cost per step (README figure)


def build_cost(job: TableJob, files: Sequence[str]) -> TableRows:
    """One row per model: median time per step, autograd-saved MiB, F applications per step, and the time
    relative to the amortised model at the same M (or the smallest M) (spec C.6)."""
    r = _one(read_results(files), job.table)
    amortized = {x["solver_iterations"]: x["step_seconds"] for x in r["rows"] if x["kind"] == "amortized"}
    reference = amortized[min(amortized)]
    rows = [{**{k: x[k] for k in ("kind", "layers", "solver_iterations", "size", "label", "num_parameters",
                                  "step_seconds", "f_applications_per_step")},
             "saved_mib": x["saved_bytes"] / 2**20,
             "cuda_peak_mib": x["cuda_peak_bytes"] / 2**20 if x["cuda_peak_bytes"] is not None else None,
             "time_vs_amortized": x["step_seconds"] / amortized.get(x["solver_iterations"], reference),
             "profile": job.profile, "data_source": r["data_source"]} for x in r["rows"]]
    return TableRows(rows, {"profile": job.profile, "data": r["data_source"], "width": r["width"],
                            "pixels": r["n_pixels"], "repeats": r["repeats"], "backward": r["backward"],
                            "filter": r["filter"]},
                     {"seeds": [r["seed"]], "run_files": sorted(files), "measured_on": measured_on([r])})


def draw_cost(rows: list[dict[str, Any]], png: Path, caption: str) -> None:
    """Time per step and saved MiB against L (explicit) and M (full-solve DEQ, amortised) (spec C.6)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    series = (("explicit", "layers", "explicit nL (x = L)"), ("deq_full_solve", "solver_iterations",
              "DEQ, full solve per step (x = M)"), ("amortized", "solver_iterations", "(Implicit)^2 amortised (x = M)"))
    for kind, x, label in series:
        mine = sorted((r for r in rows if r["kind"] == kind), key=lambda r: r[x])
        axes[0].plot([r[x] for r in mine], [1e3 * r["step_seconds"] for r in mine], "o-", label=label)
        axes[1].plot([r[x] for r in mine], [r["saved_mib"] for r in mine], "o-", label=label)
    for ax, ylabel in zip(axes, ("time per training step (ms)", "saved for backward (MiB)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("L (explicit) or M (solver iterations)")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
    save_figure(fig, png, caption.split(" Paper columns:")[0], 150, 7)


def cost_metrics(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """DVC metrics of the cost figure: time and saved MiB per model (spec C.6)."""
    return {f"{r['kind']}/L{r['layers']}/M{r['solver_iterations']}": {"step_seconds": r["step_seconds"],
                                                                       "saved_mib": r["saved_mib"]} for r in rows}


# ----------------------------------------------------------------------------- amortisation check


def build_amortization(job: TableJob, files: Sequence[str]) -> TableRows:
    """Per image: test PSNR amortised vs full solve every step, time per step, the cached residual after the
    warm-up; a 'mean' row over images (the residual column: the worst image); 'trace' rows every 10 steps
    (spec C.2, IMP2-10)."""
    results = read_results(files)
    if len(results) != len(job.block.images):
        raise ConfigError(f"{job.table}: expected {len(job.block.images)} images, got {len(results)}")
    rows, traces = [], []
    for r in results:
        a, f = r["amortized"], r["full_solve"]
        rows.append({"kind": "image", "image": r["image_name"], "size": r["size"], "paper_size": r["paper_size"],
                     "psnr_amortized": a["test_psnr"], "psnr_full_solve": f["test_psnr"],
                     "delta": a["test_psnr"] - f["test_psnr"], "train_psnr_amortized": a["train_psnr"],
                     "train_psnr_full_solve": f["train_psnr"], "step_seconds_amortized": a["step_seconds"],
                     "step_seconds_full_solve": f["step_seconds"],
                     "f_applications_amortized": a["f_applications_per_step"],
                     "f_applications_full_solve": f["f_applications_per_step"],
                     "residual_after_warmup_max": a["residual_after_warmup_max"],
                     "residual_after_warmup_mean": a["residual_after_warmup_mean"],
                     "residual_final": a["residual_trace"][-1], "profile": job.profile,
                     "data_source": r["data_source"], "_trace": a["residual_trace"],
                     "_trace_full": f["residual_trace"]})
        traces += [{"kind": "trace", "image": r["image_name"], "step": k + 1, "residual_amortized": x,
                    "residual_full_solve": f["residual_trace"][k], "profile": job.profile,
                    "data_source": r["data_source"]}
                   for k, x in enumerate(a["residual_trace"]) if (k + 1) % 10 == 0 or k == 0]
    mean = {"kind": "mean", "image": f"mean of {len(rows)}", "size": rows[0]["size"],
            "paper_size": rows[0]["paper_size"], "profile": job.profile, "data_source": rows[0]["data_source"]}
    for key in ("psnr_amortized", "psnr_full_solve", "delta", "train_psnr_amortized", "train_psnr_full_solve",
                "step_seconds_amortized", "step_seconds_full_solve", "f_applications_amortized",
                "f_applications_full_solve", "residual_after_warmup_mean", "residual_final"):
        mean[key] = sum(x[key] for x in rows) / len(rows)
    mean["residual_after_warmup_max"] = max(x["residual_after_warmup_max"] for x in rows)
    first = results[0]
    return TableRows(rows + [mean] + traces, {"profile": job.profile, "data": first["data_source"],
                                              "warmup": first["warmup_steps"], "tol": first["tolerance"],
                                              "seed": first["seed"], "label": first["amortized"]["label"],
                                              "size": first["size"]},
                     {"seeds": [first["seed"]], "run_files": sorted(files), "measured_on": measured_on(results)})


def draw_amortization(rows: list[dict[str, Any]], png: Path, caption: str) -> None:
    """Relative residual of the state each step used (log scale) per image, amortised and full solve (spec C.2)."""
    plt = _plt()
    fig, ax = plt.subplots(1, 1, figsize=(7, 4))
    for r in (x for x in rows if x["kind"] == "image"):
        line, = ax.semilogy(range(1, len(r["_trace"]) + 1), r["_trace"], lw=1, label=f"{r['image']} amortised")
        ax.semilogy(range(1, len(r["_trace_full"]) + 1), r["_trace_full"], lw=0.8, ls=":", color=line.get_color(),
                    label=f"{r['image']} full solve every step")
    ax.axhline(1e-2, color="grey", lw=0.8, ls="--", label="solver tolerance 1e-2")
    ax.set_xlabel("training step")
    ax.set_ylabel("||F(Z) - Z|| / ||F(Z)||")
    ax.legend(fontsize=7)
    save_figure(fig, png, caption.split(" Paper columns:")[0], 110, 7)


def amortization_metrics(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """DVC metrics of the amortisation check: PSNRs and the worst cached residual (spec C.2)."""
    return {r["image"]: {k: r[k] for k in ("psnr_amortized", "psnr_full_solve", "residual_after_warmup_max")}
            for r in rows if r["kind"] in ("image", "mean")}


# ----------------------------------------------------------------------------- pictures


def build_pictures(job: TableJob, files: Sequence[str]) -> TableRows:
    """One row per shown image: explicit and implicit test PSNR of the pictured size, from the fit results (spec
    C.3 / C.5 'Image Generalization' pictures)."""
    p = job.block
    results = {(r["set"], r["image"]): r for r in read_results(files) if r["filter"] == p.filter}
    rows = []
    for set_name, index in p.images:
        r = results.get((set_name, index))
        if r is None:
            raise ConfigError(f"{job.table}: no {p.filter} result of ({set_name}, {index})")
        shown = {run["implicit"]: run for run in r["runs"] if run["paper_size"] == p.size}
        if set(shown) != {False, True} or any("reconstruction" not in run for run in shown.values()):
            raise ConfigError(f"{job.table}: {r['_file']} has no reconstructions of size {p.size}")
        rows.append({"set": set_name, "image": r["image_name"], "filter": p.filter, "size": shown[True]["size"],
                     "paper_size": p.size, "psnr_explicit": shown[False]["test_psnr"],
                     "psnr_implicit": shown[True]["test_psnr"],
                     "delta": shown[True]["test_psnr"] - shown[False]["test_psnr"], "profile": job.profile,
                     "data_source": r["data_source"], "_target": r["target_pixels"],
                     "_explicit": shown[False]["reconstruction"], "_implicit": shown[True]["reconstruction"]})
    return TableRows(rows, {"profile": job.profile, "data": "; ".join(sorted({r["data_source"] for r in rows})),
                            "filter": p.filter, "size": rows[0]["size"], "paper_size": p.size},
                     {"run_files": sorted(files), "measured_on": measured_on(list(results.values()))})


def draw_pictures(rows: list[dict[str, Any]], png: Path, caption: str) -> None:
    """Per image: target, explicit, implicit (test pixels) and the two absolute-error maps (spec C.5 pictures)."""
    import numpy as np

    plt = _plt()

    def image(rec: dict[str, Any]) -> Any:
        """A stored uint8 reconstruction as an (H, W, 3) float array in [0, 1]."""
        return np.asarray(rec["uint8"], dtype=np.uint8).reshape(rec["shape"]) / 255.0

    fig, axes = plt.subplots(len(rows), 5, figsize=(11, 2.3 * len(rows) + 0.8), squeeze=False)
    for ax_row, r in zip(axes, rows):
        target, explicit, implicit = image(r["_target"]), image(r["_explicit"]), image(r["_implicit"])
        panels = ((target, f"{r['image']}: target"), (explicit, f"explicit {r['psnr_explicit']:.2f} dB"),
                  (implicit, f"implicit {r['psnr_implicit']:.2f} dB"),
                  (np.abs(explicit - target).mean(-1), "|explicit - target|"),
                  (np.abs(implicit - target).mean(-1), "|implicit - target|"))
        for ax, (pixels, title) in zip(ax_row, panels):
            ax.imshow(pixels, cmap="magma" if pixels.ndim == 2 else None, vmin=0, vmax=0.3 if pixels.ndim == 2 else 1)
            ax.set_title(title, fontsize=7)
            ax.axis("off")
    save_figure(fig, png, caption.split(" Paper columns:")[0], 150, 7)


FIGURES = (
    TableSpec(
        name="implicit2_gradient_order", task=TASK, paper=PAPER, source="(Implicit)^2 slides, Fig. 4 'Faster "
        "Backward Pass' (no numbers)", title="(Implicit)^2 Fig. 4: training PSNR for truncated-Neumann orders T",
        caption=("{size} on {pixels} pixels of {image} (s = {scale}), amortised forward, {steps} steps, seed {seed}, "
                 "for each order T of the truncated Neumann backward (T = inf: the IFT solve; T = 0 is our extra "
                 "point). 'step' rows: the step's training PSNR (-10 log10(MSE / 4), unclipped) and the wall clock; "
                 "'final' rows: the training PSNR of a fresh full solve after the last step." + _NOTE),
        columns=(Column("kind"), Column("order", "T"), Column("label"), Column("size"), Column("step"),
                 Column("train_psnr", "training PSNR", "dB"), Column("seconds", "wall clock", "s"),
                 Column("final_train_psnr", "final training PSNR (fresh solve)", "dB"),
                 Column("last_step_psnr", "last step's training PSNR", "dB"),
                 Column("gap_to_inf", "final PSNR minus T = inf's", "dB"),
                 Column("step_seconds", "time per step", "s"), Column("train_seconds", "training time", "s"),
                 Column("f_applications_per_step", "F applications per step"), Column("steps"), Column("image"),
                 Column("profile"), Column("data_source", "data")),
        settings_of=lambda s: s.table("implicit2_gradient_order"), build=build_gradient_order,
        metrics=gradient_order_metrics, draw=draw_gradient_order, plot={"x": "step", "y": "train_psnr"},
    ),
    TableSpec(
        name="implicit2_cost", task=TASK, paper=PAPER, source="(Implicit)^2 reference README figure: O(1) vs O(L) vs "
        "O(M) (no numbers, spec C.6)", title="(Implicit)^2 cost per training step: explicit nL, full-solve DEQ, "
        "amortised",
        caption=("Median time per training step (forward, backward with {backward}, Adam) over {repeats} repeats, the "
                 "models alternating in one process, and the MiB autograd keeps for the backward of one step, for "
                 "{filter} models of width {width} on {pixels} train pixels: explicit nL (x = L), a DEQ solving "
                 "from zero with exactly M forward iterations every step, and the amortised model (its solver's "
                 "M only bounds the step-0 solve)." + _NOTE),
        columns=(Column("kind"), Column("layers", "L"), Column("solver_iterations", "M"), Column("size"),
                 Column("label"), Column("num_parameters", "parameters"),
                 Column("step_seconds", "time per training step", "s"),
                 Column("time_vs_amortized", "time / amortised time (same M)"),
                 Column("saved_mib", "saved for backward", "MiB"), Column("cuda_peak_mib", "CUDA peak", "MiB"),
                 Column("f_applications_per_step", "F applications per step"), Column("profile"),
                 Column("data_source", "data")),
        settings_of=lambda s: s.table("implicit2_cost"), build=build_cost, metrics=cost_metrics, draw=draw_cost,
    ),
    TableSpec(
        name="implicit2_amortization", task=TASK, paper=PAPER, source="(Implicit)^2 slides, amortised fixed point "
        "(no numbers, spec C.2)", title="(Implicit)^2 amortisation: one F application per step vs a full solve",
        caption=("{label} {size}, seed {seed}: the same model trained amortised (a full solve at step 0, then one F "
                 "application per step from the cached state) and with a full solve from zero every step; test PSNR "
                 "from a fresh solve. Residual: ||F(Z) - Z|| / ||F(Z)|| of the state each step used, after step "
                 "{warmup} (the solver's tolerance: {tol}); the mean row's max is the worst image's." + _NOTE),
        columns=(Column("kind"), Column("image"), Column("size"), Column("paper_size", "paper size it stands in for"),
                 Column("step"), Column("psnr_amortized", "test PSNR, amortised", "dB"),
                 Column("psnr_full_solve", "test PSNR, full solve every step", "dB"),
                 Column("delta", "amortised - full solve", "dB"),
                 Column("train_psnr_amortized", "train PSNR, amortised", "dB"),
                 Column("train_psnr_full_solve", "train PSNR, full solve", "dB"),
                 Column("step_seconds_amortized", "time per step, amortised", "s"),
                 Column("step_seconds_full_solve", "time per step, full solve", "s"),
                 Column("f_applications_amortized", "F per step, amortised"),
                 Column("f_applications_full_solve", "F per step, full solve"),
                 Column("residual_after_warmup_max", "cached residual after warm-up, max"),
                 Column("residual_after_warmup_mean", "cached residual after warm-up, mean"),
                 Column("residual_final", "cached residual, last step"),
                 Column("residual_amortized", "residual, amortised"),
                 Column("residual_full_solve", "residual, full solve"), Column("profile"),
                 Column("data_source", "data")),
        settings_of=lambda s: s.table("implicit2_amortization"), build=build_amortization,
        metrics=amortization_metrics, draw=draw_amortization,
    ),
    TableSpec(
        name="implicit2_pictures", task=TASK, paper=PAPER, source="(Implicit)^2 slides, 'Image Generalization' "
        "pictures (no numbers)", title="(Implicit)^2 image generalisation: reconstructions and error maps",
        caption=("Test pixels [1::2, 1::2] of each image: the target, the explicit and implicit {filter} models of "
                 "size {size} (standing in for {paper_size}) from the generalisation runs, and their absolute "
                 "errors (mean over RGB, 0-0.3)." + _NOTE),
        columns=(Column("set"), Column("image"), Column("filter"), Column("size"),
                 Column("paper_size", "paper size it stands in for"),
                 Column("psnr_explicit", "explicit test PSNR", "dB"), Column("psnr_implicit", "implicit test PSNR", "dB"),
                 Column("delta", "implicit - explicit", "dB"), Column("profile"), Column("data_source", "data")),
        settings_of=lambda s: s.table("implicit2_pictures"), build=build_pictures, draw=draw_pictures,
    ),
)
