"""Tables 1, 3, 4, the memory table and Figure 3 of the JIIO paper: their rows, columns and the paper's values
(Figure 4 is in :mod:`.acceleration`).

The rows of Tables 1 and 4 are declared here once (:data:`TABLE1_ROWS`, :data:`TABLE4_ROWS`): which trained model
each uses, how it reconstructs (JIIO, Adam on the latent, or its encoder) and, for Table 1, how it samples.
Snakemake builds its jobs from the same declarations.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch
from torch import Tensor

from deqbench.experiments.config import ConfigError
from deqbench.experiments.io import load_artifact, save_figure
from deqbench.experiments.runtime import device_name
from deqbench.experiments.tables import Column, TableRows, TableSpec, measured_on, read_results
from deqbench.tasks.jiio_generative.settings import RECONSTRUCT, CellJob, GenerativeSettings, TableJob
from deqbench.tasks.jiio_generative.task import examples_path, samples_path

TASK = "jiio_generative"
PAPER = "jiio"


@dataclass(frozen=True)
class Row:
    """A row of Table 1 or 4: the model whose checkpoint it uses and how it reconstructs and samples."""

    key: str
    label: str
    model: str | None  # None: a reference row that uses no model
    method: Literal["jiio", "adam", "encoder", "corrupted_input", "mean_image", "pca_projection"]
    supervised: bool = False  # trained on the cell's inverse problem (else on plain reconstruction)
    sampling: Literal["prior", "density", "none"] = "none"

    def checkpoint(self, problem: str) -> tuple[str, str] | None:
        """(model, training problem) of the checkpoint this row uses for ``problem`` (None: no model)."""
        if self.model is None:
            return None
        return self.model, problem if self.supervised else RECONSTRUCT


TABLE1_ROWS = (
    Row("vae", "VAE", "vae", "encoder", sampling="prior"),
    Row("rae", "RAE", "rae", "encoder", sampling="density"),
    Row("mdeq_vae", "MDEQ-VAE", "mdeq_vae", "encoder", sampling="prior"),
    Row("mdeq_vae_jiio", "MDEQ-VAE (w/ JIIO)", "mdeq_vae", "jiio"),
    Row("jiio_mdeq", "JIIO-MDEQ", "jiio40", "jiio", sampling="density"),
)
TABLE4_ROWS = (
    Row("sup_ae", "AE", "ae", "encoder", supervised=True),
    Row("sup_mdeq_ae", "MDEQ-AE", "mdeq_ae", "encoder", supervised=True),
    Row("sup_jiio100", "JIO-MDEQ-100", "jiio100", "jiio", supervised=True),
    Row("unsup_vae_adam", "VAE (Adam)", "vae", "adam"),
    Row("unsup_mdeq_vae_adam", "MDEQ-VAE (Adam)", "mdeq_vae", "adam"),
    Row("unsup_jiio40", "JIO-MDEQ-40", "jiio40", "jiio"),
    Row("unsup_jiio100", "JIO-MDEQ-100", "jiio100", "jiio"),
    # Trivial answers every model must beat (not in the paper): the observation returned unchanged, and the mean
    # training image whatever the observation.
    Row("ref_corrupted_input", "corrupted input (no model)", None, "corrupted_input"),
    Row("ref_mean_image", "mean training image (no model)", None, "mean_image"),
    # The best linear decoder with the generator's latent size (PCA of the training images), its code fitted to the
    # observed pixels by least squares: what a latent of that size allows on this data with no training run.
    Row("ref_pca", "PCA of the training images, latent-size basis, least squares (no network)", None,
        "pca_projection"),
)
ROWS = {"table1": TABLE1_ROWS, "table4": TABLE4_ROWS}
DENSITY_MODELS = tuple(sorted({r.model for r in TABLE1_ROWS if r.sampling == "density"}))

# JIIO paper (Gurumurthy et al., NeurIPS 2021), CelebA 64x64.
PAPER_TABLE1_FID = {"vae": (48.12, 39.12), "rae": (40.96, 36.01), "mdeq_vae": (57.15, 45.81),
                    "mdeq_vae_jiio": (None, 42.36), "jiio_mdeq": (46.82, 32.52)}  # (generation, reconstruction)
PAPER_TABLE3_MS = {"adam40": 7659.0, "jiio40": 862.0, "jiio100": 2156.0}  # batch 1, RTX 2080 Ti
PAPER_TABLE4_PSNR = {  # median PSNR in the reference code's convention (per batch of 48, [-1, 1] range)
    "sup_ae": {"inpaint20": 17.9, "denoise0.2": 18.72, "denoise0.4": 18.32},
    "sup_mdeq_ae": {"inpaint20": 17.06, "denoise0.2": 18.58, "denoise0.4": 18.49},
    "sup_jiio100": {"inpaint20": 16.90, "denoise0.2": 18.22, "denoise0.4": 17.89},
    "unsup_vae_adam": {"inpaint20": 15.34, "denoise0.2": 15.31, "denoise0.4": 15.24},
    "unsup_mdeq_vae_adam": {"inpaint20": 16.62, "denoise0.2": 16.96, "denoise0.4": 16.87},
    "unsup_jiio40": {"inpaint20": 15.88, "denoise0.2": 17.08, "denoise0.4": 16.03},
    "unsup_jiio100": {"inpaint20": 15.87, "denoise0.2": 17.86, "denoise0.4": 17.55},
}
PAPER_MEMORY_GB = {"jiio": 17.45, "adam": 7.47}  # appendix C.6, batch 48


def row_of(table: str, key: str) -> Row:
    for row in ROWS.get(table, ()):
        if row.key == key:
            return row
    raise ConfigError(f"unknown {table} row {key!r}; known: {[r.key for r in ROWS.get(table, ())]}")


def cell_job(settings: GenerativeSettings, table: str, key: str, problem: str) -> CellJob:
    """The settings of one cell job (Table 1 cells reconstruct; Table 4 cells solve ``problem``)."""
    row = row_of(table, key)
    if table == "table1" and problem != RECONSTRUCT:
        raise ConfigError(f"table1 cells reconstruct: --problem must be {RECONSTRUCT!r}, got {problem!r}")
    return settings.cell(row.key, row.model, row.method, problem, row.sampling)


def _settings(table: str):
    return lambda settings: settings.table(table)


def _device(result: dict[str, Any]) -> str:
    return device_name(result["provenance"]["device"])


# ----------------------------------------------------------------------------- image grids


def _tile(images: Tensor) -> np.ndarray:
    """A row of images in [-1, 1] ``(N, C, H, W)`` as one (H, N * (W + 1), 3) array in [0, 1]."""
    x = ((images.float().clamp(-1, 1) + 1) / 2).expand(-1, 3, -1, -1) if images.shape[1] == 1 else \
        (images.float().clamp(-1, 1) + 1) / 2
    pad = torch.ones(x.shape[0], 3, x.shape[2], 1)
    return torch.cat([torch.cat((im, p), dim=2) for im, p in zip(x, pad)], dim=2).permute(1, 2, 0).numpy()


def _image_panel(ax: Any, strips: list[tuple[str, Tensor]], title: str) -> None:
    """Stacked image rows with their labels on the left."""
    arrays = [_tile(t) for _, t in strips]
    height = arrays[0].shape[0]
    gap = np.ones((max(1, height // 8), arrays[0].shape[1], 3))
    ax.imshow(np.concatenate([a for arr in arrays for a in (arr, gap)][:-1], axis=0), interpolation="nearest")
    ax.set_yticks([i * (height + gap.shape[0]) + height / 2 for i in range(len(strips))])
    ax.set_yticklabels([label for label, _ in strips], fontsize=7)
    ax.set_xticks([])
    ax.set_title(title, fontsize=8)


TASK_ABBREVIATION = {"supervised": "sup.", "unsupervised": "unsup.", "reference": "ref."}


def _draw_table4(rows: list[dict[str, Any]], png: Path, caption: str) -> None:
    """Figures 7-12 of the paper in one PNG: per problem the target, the corrupted input and every row's answer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    problems = list(dict.fromkeys(r["problem"] for r in rows))
    fig, axes = plt.subplots(1, len(problems), figsize=(4.2 * len(problems), 0.55 * (len(rows) / len(problems) + 2)),
                             squeeze=False)
    for ax, problem in zip(axes[0], problems):
        cells = [r for r in rows if r["problem"] == problem]
        first = load_artifact(cells[0]["_examples"])
        strips = [("target", first["target"]), ("corrupted", first["observed"])]
        strips += [(f"{TASK_ABBREVIATION[r['task']]} {r['model']} ({r['median_psnr_01']:.1f} dB)",
                    load_artifact(r["_examples"])["recovered"])
                   for r in cells if r["task"] != "reference"]
        _image_panel(ax, strips, problem)
    save_figure(fig, png, caption.split(" Rows of task")[0], 200, 6)


def _draw_table1(rows: list[dict[str, Any]], png: Path, caption: str) -> None:
    """Figures 2 and 5 of the paper: samples of every generator that samples, and test reconstructions of all."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = load_artifact(rows[0]["_examples"])
    recon = [("test images", first["target"])] + [(r["model"], load_artifact(r["_examples"])["recovered"])
                                                   for r in rows]
    samples = [(r["model"], load_artifact(r["_samples"])["images"][: first["target"].shape[0]])
               for r in rows if r.get("_samples")]
    fig, axes = plt.subplots(1, 2, figsize=(9, 0.6 * (len(rows) + 2)), squeeze=False)
    _image_panel(axes[0][0], recon, "reconstructions of test images")
    _image_panel(axes[0][1], samples, "samples")
    save_figure(fig, png, caption.split(" `swd_*`")[0], 160, 6)


# ----------------------------------------------------------------------------- Table 1


def _fid_cell(fid: dict[str, Any] | None) -> tuple[Any, str]:
    if fid is None:
        return "-", ""
    if fid["value"] is None:
        return "n/a", fid["reason"].split(":")[0]
    return fid["value"], f"{fid['implementation']}; {fid['n_samples']} vs {fid['n_reference']} images"


def _build_table1(job: TableJob, files: Sequence[str]) -> TableRows:
    results = {r["row"]: r for r in read_results(files)}
    rows, notes = [], {}
    for row in TABLE1_ROWS:
        if row.key not in results:
            raise ConfigError(f"table1: no evaluation for row {row.key}")
        r = results[row.key]
        gen, gen_note = _fid_cell(r.get("fid_generation"))
        rec, rec_note = _fid_cell(r.get("fid_reconstruction"))
        notes[row.key] = {"generation": (r.get("fid_generation") or {}).get("reason"),
                          "reconstruction": (r.get("fid_reconstruction") or {}).get("reason")}
        paper_gen, paper_rec = PAPER_TABLE1_FID[row.key]
        rows.append({"_examples": str(examples_path(r["_file"])),
                     "_samples": str(samples_path(r["_file"])) if row.sampling != "none" else None,
                     "model": row.label, "fid_generation": gen, "fid_reconstruction": rec,
                     "swd_generation": (r.get("swd_generation") or {}).get("value", "-"),
                     "swd_reconstruction": r["swd_reconstruction"]["value"],
                     "recon_median_psnr_01": r["median_psnr_01"],
                     "recon_psnr_reference_convention": r["reference_batch_psnr"]["median"],
                     "paper_fid_generation": paper_gen, "paper_fid_reconstruction": paper_rec,
                     "fid_note": rec_note or gen_note, "profile": job.profile, "data_source": r["data_source"]})
    values = list(results.values())
    return TableRows(rows, {"profile": job.profile},
                     {"fid": notes, "inputs": sorted(files), "seeds": sorted({r["train"]["seed"] for r in values}),
                      "measured_on": measured_on(values)})


def _table1_metrics(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for r in rows:
        out[f"{r['model']}/recon_median_psnr_01"] = r["recon_median_psnr_01"]
        for key in ("fid_generation", "fid_reconstruction", "swd_generation", "swd_reconstruction"):
            if isinstance(r[key], float):
                out[f"{r['model']}/{key}"] = r[key]
    return out


TABLE1 = TableSpec(
    "table1", TASK, PAPER, "JIIO paper, Table 1 (CelebA 64x64 FID)", "Table 1: generative modelling (FID)",
    "FID (lower is better) of generated samples and of test-set reconstructions, and the reconstruction PSNR; "
    "profile `{profile}`. FID is torch-fidelity's Inception FID; `n/a` means it could not be computed (reason in "
    "fid_note and the provenance); `-`: the row does not sample. `swd_*` is the sliced Wasserstein-1 distance to the "
    "test images in pixel space (256 seeded directions; lower is better): it needs no downloaded weights, so it ranks "
    "the generators offline, but it is not FID and not comparable with the paper's numbers.",
    (Column("model"), Column("fid_generation", "FID generation"), Column("fid_reconstruction", "FID reconstruction"),
     Column("swd_generation", "sliced Wasserstein generation (pixels, not FID)"),
     Column("swd_reconstruction", "sliced Wasserstein reconstruction (pixels, not FID)"),
     Column("recon_median_psnr_01", "reconstruction PSNR, median over images in [0,1]", "dB"),
     Column("recon_psnr_reference_convention", "reconstruction PSNR, reference convention", "dB"),
     Column("paper_fid_generation", "FID generation", reference_for="fid_generation"),
     Column("paper_fid_reconstruction", "FID reconstruction", reference_for="fid_reconstruction"),
     Column("fid_note", "FID note"), Column("profile"), Column("data_source", "data")),
    _settings("table1"), _build_table1, _table1_metrics, _draw_table1,
)


# ----------------------------------------------------------------------------- Table 4


def _build_table4(job: TableJob, files: Sequence[str]) -> TableRows:
    results = read_results(files)
    cells = {(r["row"], r["problem"]): r for r in results}
    rows = []
    for row in TABLE4_ROWS:
        for problem in job.problems:
            r = cells.get((row.key, problem))
            if r is None:
                raise ConfigError(f"table4: no evaluation for row {row.key}, problem {problem}")
            task = "reference" if row.model is None else "supervised" if row.supervised else "unsupervised"
            rows.append({"task": task, "model": row.label,
                         "problem": problem, "median_psnr_01": r["median_psnr_01"],
                         "median_psnr_01_composite": r.get("composite", {}).get("median_psnr_01"),
                         "psnr_reference_convention": r["reference_batch_psnr"]["median"],
                         "paper_psnr": PAPER_TABLE4_PSNR.get(row.key, {}).get(problem), "n_images": r["n_images"],
                         "_examples": str(examples_path(r["_file"])),
                         "profile": job.profile, "data_source": r["data_source"]})
    return TableRows(rows, {"profile": job.profile},
                     {"inputs": sorted(files),
                      "seeds": sorted({r["train"]["seed"] for r in results if r["train"]["seed"] is not None}),
                      "problems": list(job.problems), "measured_on": measured_on(results)})


TABLE4 = TableSpec(
    "table4", TASK, PAPER, "JIIO paper, Table 4 (CelebA 64x64, reference PSNR convention)",
    "Table 4: inverse problems (median PSNR)",
    "Inverse problems: `median_psnr_01` is the median over test images of the PSNR in the [0, 1] pixel range (our "
    "convention); `psnr_reference_convention` is the reference code's (MSE per batch in [-1, 1] units, median over "
    "batches, about 6 dB lower), the convention of the paper's numbers; `median_psnr_01_composite` (inpainting only) "
    "keeps the observed pixels and takes only the window from the model, the usual convention, where the paper scores "
    "the model's whole output. Rows of task `reference` use no network: every model should beat the corrupted input "
    "and the mean image; the PCA row is the best linear decoder with the generator's latent size, fitted in closed "
    "form, its code solved by least squares on the observed pixels; profile `{profile}`.",
    (Column("task"), Column("model"), Column("problem"), Column("median_psnr_01", "median PSNR [0,1]", "dB"),
     Column("median_psnr_01_composite", "median PSNR [0,1], observed pixels kept", "dB"),
     Column("psnr_reference_convention", "PSNR, reference convention", "dB"),
     Column("paper_psnr", "PSNR, reference convention", "dB", reference_for="psnr_reference_convention"),
     Column("n_images", "test images"), Column("profile"), Column("data_source", "data")),
    _settings("table4"), _build_table4,
    lambda rows: {f"{r['task']}/{r['model']}/{r['problem']}": r["median_psnr_01"] for r in rows}, _draw_table4,
)


# ----------------------------------------------------------------------------- Table 3 and memory


def _build_table3(job: TableJob, files: Sequence[str]) -> TableRows:
    (result,) = read_results(files)
    paper_ratio = {m: PAPER_TABLE3_MS["adam40"] / ms for m, ms in PAPER_TABLE3_MS.items()}
    rows = [{**{k: r[k] for k in ("method", "iterations", "batch_size", "ms_per_example", "ms_per_example_std",
                                  "ms_per_call", "calls", "distinct_examples", "adam_over_this", "returned_cost_mean")},
             "paper_ms_batch1": PAPER_TABLE3_MS.get(r["method"]) if r["batch_size"] == 1 else None,
             "paper_adam_over_this": paper_ratio.get(r["method"]) if r["batch_size"] == 1 else None,
             "device": _device(result), "profile": job.profile, "data_source": result["data_source"]}
            for r in result["rows"]]
    distinct = {r["batch_size"]: (r["distinct_examples"], r["calls"]) for r in rows}
    text = "; ".join(f"batch {b}: {n} distinct test images, {c} calls per method" for b, (n, c) in distinct.items())
    return TableRows(rows, {"profile": job.profile, "device": _device(result), "distinct": text},
                     {"timing_file": files[0], "measured_on": [result["provenance"]["device"]],
                      "distinct_examples": {str(b): n for b, (n, _) in distinct.items()},
                      "seeds": [result.get("seed", 0)]})


TABLE3 = TableSpec(
    "table3", TASK, PAPER, "JIIO paper, Table 3 (CelebA 64x64 generator, batch 1, RTX 2080 Ti)",
    "Table 3: JIIO vs Adam optimisation time",
    "Time for one latent optimisation (reconstruction) with the JIIO-MDEQ generator, Adam vs JIIO-40 vs JIIO-100, "
    "timed call by call in one process with device synchronisation on {device}; each call reconstructs the next "
    "batch of distinct test images ({distinct}); time per example is the mean (and std) over calls, as the paper "
    "averages over 200 examples; profile `{profile}`. Paper values are for batch 1 only.",
    (Column("method"), Column("iterations"), Column("batch_size", "batch"),
     Column("ms_per_example", "time, mean", "ms/example"), Column("ms_per_example_std", "time, std over calls",
                                                                 "ms/example"),
     Column("ms_per_call", "time, mean", "ms/call"), Column("calls"),
     Column("distinct_examples", "distinct test images"),
     Column("adam_over_this", "Adam / this"), Column("returned_cost_mean", "reconstruction cost (sum of squares)"),
     Column("paper_ms_batch1", "time", "ms/example", reference_for="ms_per_example"),
     Column("paper_adam_over_this", "Adam / this", reference_for="adam_over_this"),
     Column("device"), Column("profile"), Column("data_source", "data")),
    _settings("table3"), _build_table3,
    lambda rows: {f"batch{r['batch_size']}/{r['method']}_ms_per_example": r["ms_per_example"] for r in rows}
    | {f"batch{r['batch_size']}/adam_over_{r['method']}": r["adam_over_this"] for r in rows},
    plot={"x": "batch_size", "y": "ms_per_example"},
)


def _build_memory(job: TableJob, files: Sequence[str]) -> TableRows:
    (result,) = read_results(files)
    mem = {r["method"]: r for r in result["memory"]}
    jiio = mem["jiio40"]
    adam = next(r for name, r in mem.items() if name.startswith("adam"))
    ratio = jiio["peak_bytes"] / max(adam["peak_bytes"], 1)
    rows = [{"method": name, "batch_size": r["batch_size"], "peak_gib": r["peak_gib"], "jiio_over_adam": ratio,
             "measure": r["measure"], "paper_gb": PAPER_MEMORY_GB["jiio" if name.startswith("jiio") else "adam"],
             "paper_ratio": PAPER_MEMORY_GB["jiio"] / PAPER_MEMORY_GB["adam"], "device": _device(result),
             "profile": job.profile, "data_source": result["data_source"]} for name, r in mem.items()]
    return TableRows(rows, {"profile": job.profile, "device": _device(result)},
                     {"timing_file": files[0], "measured_on": [result["provenance"]["device"]], "seeds": [0]})


MEMORY = TableSpec(
    "memory", TASK, PAPER, "JIIO paper, appendix C.6 (CelebA, batch 48, GPU)", "Memory: JIIO vs Adam",
    "Peak working memory of one reconstruction, JIIO-40 vs Adam (appendix C.6); `measure` says what was measured "
    "(CUDA peak allocation, or peak RSS of a CPU child process) on {device}; profile `{profile}`.",
    (Column("method"), Column("batch_size", "batch"), Column("peak_gib", "peak memory", "GiB"),
     Column("jiio_over_adam", "JIIO / Adam"), Column("measure"),
     Column("paper_gb", "memory", "GB", reference_for="peak_gib"),
     Column("paper_ratio", "JIIO / Adam", reference_for="jiio_over_adam"),
     Column("device"), Column("profile"), Column("data_source", "data")),
    _settings("memory"), _build_memory,
    lambda rows: {"jiio_over_adam": rows[0]["jiio_over_adam"], **{f"{r['method']}_peak_gib": r["peak_gib"] for r in rows}},
)


# ----------------------------------------------------------------------------- Figure 3


def _build_figure3(job: TableJob, files: Sequence[str]) -> TableRows:
    (result,) = read_results(files)
    rows = [{**c, "profile": job.profile} for c in result["figure3"]]
    return TableRows(rows, {"profile": job.profile, "device": _device(result), "data": result["data_source"]},
                     {"timing_file": files[0], "measured_on": [result["provenance"]["device"]],
                      "seeds": [result.get("seed", 0)], "traced_runs": result.get("figure3_runs", [])})


def _draw_figure3(rows: list[dict[str, Any]], png: Path, caption: str) -> None:
    """Reconstruction cost against wall-clock time, Adam vs JIIO, one panel per trained model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(dict.fromkeys(r["panel"] for r in rows))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for method in dict.fromkeys(r["method"] for r in rows if r["panel"] == panel):
            pts = [r for r in rows if r["panel"] == panel and r["method"] == method]
            ax.plot([p["seconds"] for p in pts], [p["cost_mean"] for p in pts], label=method,
                    lw=1.5 if method.startswith("adam") else 1.2)
        ax.set_xlabel("wall-clock time (s)")
        ax.set_ylabel("reconstruction cost (sum of squares)")
        ax.set_yscale("log")
        ax.set_title(panel, fontsize=9)
        ax.legend()
    save_figure(fig, png, caption.split(" Paper columns:")[0])


FIGURE3 = TableSpec(
    "figure3", TASK, PAPER, "JIIO paper, Figure 3 (CelebA, trained JIIO-MDEQ)",
    "Figure 3: reconstruction cost against wall-clock time",
    "Mean reconstruction cost after each iteration against wall-clock time, Adam vs JIIO on the trained JIIO-MDEQ "
    "models, {data} on {device}; profile `{profile}`. Times are real per-iteration timestamps (device synchronised "
    "after every iteration) from a tracing run separate from Table 3's timing; Adam's cost is at z*(x_k), the "
    "decoder's equilibrium at its k-th latent, JIIO's at its k-th iterate z_k of the joint iteration.",
    (Column("panel"), Column("method"), Column("iteration"), Column("seconds", "time", "s"),
     Column("cost_mean", "reconstruction cost"), Column("batch_size", "batch"), Column("profile")),
    _settings("figure3"), _build_figure3, None, _draw_figure3, plot={"x": "seconds", "y": "cost_mean"},
)

TABLES = (TABLE1, TABLE3, TABLE4, MEMORY, FIGURE3)
