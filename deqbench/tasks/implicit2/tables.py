"""The (Implicit)^2 tables and figures as deqbench reproduces them, with the slides' values as reference columns.

Spec C.5 copies the paper's image-generalisation and video tables; only those numbers appear, in columns marked as
the paper's.  Rows name both the size this profile runs and the paper's size they stand in for (``paper_size``),
so the claims ledger reads the same cells on every profile.  Figures are drawn in :mod:`.figures`.
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Sequence

from deqbench.experiments.config import ConfigError
from deqbench.experiments.tables import Column, TableRows, TableSpec, measured_on, read_results
from deqbench.models.implicit_repr import IMAGE_SIZE_TAGS, VIDEO_SIZE_TAGS
from deqbench.tasks.implicit2 import figures
from deqbench.tasks.implicit2.settings import TableJob
from deqbench.tasks.implicit2.training import TRIVIAL_BASELINES, mean_std

TASK = PAPER = "implicit2"
_MODELS = (("fourier", False), ("fourier", True), ("gabor", False), ("gabor", True), ("siren", False), ("siren", True))
# Spec C.5, image generalisation (test PSNR dB, mean, std over images), per set, in _MODELS order, per paper size.
# "24.88 +- .44" is printed so (AMBIG-C2: probably 3.44).
_T1 = {"natural": ("23.27 3.18 23.30 3.05 24.57 3.35", "24.88 0.44 25.19 3.64 24.52 3.33",
                   "24.16 3.35 24.68 3.46 24.65 3.38", "24.91 3.41 25.42 3.76 24.53 3.33",
                   "22.88 3.0 24.52 3.28 24.10 3.34", "24.28 3.37 24.92 3.58 24.05 3.39"),
       "text": ("24.64 2.11 24.84 2.10 26.67 2.06", "26.90 2.14 27.19 1.83 26.48 2.04",
                "27.19 2.18 27.74 2.13 27.57 2.10", "27.53 2.18 28.07 2.00 27.40 2.10",
                "24.54 2.19 25.69 2.18 26.21 2.19", "26.06 2.18 26.81 2.09 26.31 2.20")}
# Spec C.5, video (PSNR dB, mean, std over frames), in _MODELS order, per paper size.
_T2 = ("24.97 1.08 26.9 0.97 27.64 0.90", "25.85 1.00 27.7 0.90 28.03 0.95", "26.15 1.02 28.18 0.78 29.64 0.81",
       "26.45 0.98 28.79 0.77 29.20 1.04", "25.12 0.96 26.04 0.99 26.52 0.86", "26.03 0.92 27.08 0.93 27.12 0.89")


def _parse(rows: Sequence[str], tags: Sequence[str]) -> dict[tuple[str, bool, str], tuple[float, float]]:
    """Spec C.5's rows as {(filter, implicit, paper tag): (mean, std)}."""
    out = {}
    for model, text in zip(_MODELS, rows):
        numbers = [float(x) for x in text.split()]
        for k, tag in enumerate(tags):
            out[(*model, tag)] = (numbers[2 * k], numbers[2 * k + 1])
    return out


PAPER_IMAGES = {s: _parse(rows, IMAGE_SIZE_TAGS) for s, rows in _T1.items()}
PAPER_VIDEO = _parse(_T2, VIDEO_SIZE_TAGS)


def _model(implicit: bool) -> str:
    """'implicit' or 'explicit' (spec C.1 pairing)."""
    return "implicit" if implicit else "explicit"


def _mean(values: Sequence[float | None]) -> float | None:
    """Mean of the finite values, None without any."""
    kept = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.fmean(kept) if kept else None


# ----------------------------------------------------------------------------- image generalisation (spec C.3)


def build_generalization(job: TableJob, files: Sequence[str]) -> TableRows:
    """Per (set, filter, size, implicit / explicit): test PSNR mean and std (ddof 0) over images, with the paired
    per-image differences implicit - explicit (same image, same seed and init) and the implicit model's wins; then
    one row per image and (filter, size) with both PSNRs (spec C.3, C.5; C.7 'Expectations': compare per image)."""
    g = job.block
    results = read_results(files)
    runs: dict[tuple[str, str, str, bool], dict[str, dict[str, Any]]] = {}
    for r in results:
        for run in r["runs"]:
            runs.setdefault((r["set"], r["filter"], run["paper_size"], run["implicit"]), {})[r["image_name"]] = {
                **run, "data_source": r["data_source"], "image_sha256": r["image_sha256"]}
    summary, images, trivial = [], [], []
    for set_name in g.sets:
        per_image = {r["image_name"]: r for r in results if r["set"] == set_name}
        bilinear = None
        for name, label in TRIVIAL_BASELINES.items():
            mean, std = mean_std([r["trivial_baselines"][name] for r in per_image.values()])
            bilinear = mean if name == "bilinear" else bilinear
            trivial.append({"kind": "baseline", "set": set_name, "model": label, "n_images": len(per_image),
                            "psnr_mean": mean, "psnr_std": std, "profile": job.profile,
                            "data_source": next(iter(per_image.values()))["data_source"]})
        for filter in g.filters:
            for paper_size, size in g.sizes.items():
                pair = [runs.get((set_name, filter, paper_size, implicit), {}) for implicit in (False, True)]
                if any(len(p) != job.data.images for p in pair) or set(pair[0]) != set(pair[1]):
                    raise ConfigError(f"{job.table}: expected {job.data.images} images of each model for "
                                      f"({set_name}, {filter}, {paper_size}), got {[sorted(p) for p in pair]}")
                names = list(pair[0])
                deltas = [pair[1][n]["test_psnr"] - pair[0][n]["test_psnr"] for n in names]
                for implicit, mine in zip((False, True), pair):
                    psnrs = [mine[n]["test_psnr"] for n in names]
                    mean, std = mean_std(psnrs)
                    first = mine[names[0]]
                    paper = PAPER_IMAGES[set_name][(filter, implicit, paper_size)]
                    other = PAPER_IMAGES[set_name][(filter, not implicit, paper_size)]
                    row = {"kind": "summary", "set": set_name, "filter": filter, "size": size,
                           "paper_size": paper_size, "model": _model(implicit), "label": first["label"],
                           "num_parameters": first["num_parameters"], "n_images": len(names), "psnr_mean": mean,
                           "psnr_std": std, "train_psnr_mean": _mean([mine[n]["train_psnr"] for n in names]),
                           "step_seconds_mean": _mean([mine[n]["step_seconds"] for n in names]),
                           "f_applications_per_step": _mean([mine[n]["f_applications_per_step"] for n in names]),
                           "eval_forward_iterations_mean": _mean([mine[n]["eval_forward_iterations"] for n in names]),
                           "minus_bilinear": mean - bilinear, "paper_psnr_mean": paper[0], "paper_psnr_std": paper[1],
                           "profile": job.profile, "data_source": first["data_source"]}
                    if implicit:
                        traces = [mine[n]["residual_trace"] for n in names]
                        row.update(delta_mean=statistics.fmean(deltas), delta_std=mean_std(deltas)[1],
                                   wins=sum(d > 0 for d in deltas), win_fraction=sum(d > 0 for d in deltas) / len(deltas),
                                   residual_final_mean=_mean([t[-1] for t in traces]),
                                   paper_delta=round(paper[0] - other[0], 4))
                    summary.append(row)
                for n, d in zip(names, deltas):
                    images.append({"kind": "image", "set": set_name, "filter": filter, "size": size,
                                   "paper_size": paper_size, "model": "implicit - explicit", "image": n,
                                   "psnr_implicit": pair[1][n]["test_psnr"], "psnr_explicit": pair[0][n]["test_psnr"],
                                   "delta": d, "image_sha256": pair[0][n]["image_sha256"], "profile": job.profile,
                                   "data_source": pair[0][n]["data_source"]})
    steps = sorted({run["steps"] for r in results for run in r["runs"]})
    return TableRows(summary + trivial + images, {"profile": job.profile, "images": job.data.images,
                                        "resolution": job.data.resolution, "steps": steps, "seed": g.seed,
                                        "data": "; ".join(sorted({r["data_source"] for r in results}))},
                     {"seeds": [g.seed], "run_files": sorted(files), "measured_on": measured_on(results)})


def generalization_metrics(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """DVC metrics: mean, std, paired difference, wins and the margin over bilinear interpolation per summary row
    (spec C.3), and the trivial baselines' mean PSNR per set."""
    out = {f"{r['set']}/{r['filter']}/{r['paper_size']}/{r['model']}": {
        k: r.get(k) for k in ("psnr_mean", "psnr_std", "delta_mean", "wins", "minus_bilinear")}
        for r in rows if r["kind"] == "summary"}
    out.update({f"{r['set']}/{r['model']}": {"psnr_mean": r["psnr_mean"]} for r in rows if r["kind"] == "baseline"})
    return out


GENERALIZATION_COLUMNS = (
    Column("kind"), Column("set"), Column("filter"), Column("size", "size run"),
    Column("paper_size", "paper size it stands in for"), Column("model"), Column("label", "paper row"),
    Column("image"), Column("num_parameters", "parameters"), Column("n_images", "images"),
    Column("psnr_mean", "test PSNR, mean over images", "dB"), Column("psnr_std", "std over images (ddof 0)", "dB"),
    Column("minus_bilinear", "minus bilinear interpolation's mean", "dB"),
    Column("delta_mean", "paired implicit - explicit, mean", "dB"), Column("delta_std", "paired difference std", "dB"),
    Column("wins", "images where implicit beats explicit"), Column("win_fraction", "fraction of images won"),
    Column("psnr_implicit", "implicit test PSNR", "dB"), Column("psnr_explicit", "explicit test PSNR", "dB"),
    Column("delta", "implicit - explicit", "dB"), Column("train_psnr_mean", "train PSNR, mean", "dB"),
    Column("step_seconds_mean", "time per training step", "s"),
    Column("f_applications_per_step", "F applications per step"),
    Column("eval_forward_iterations_mean", "forward iterations of the test solve"),
    Column("residual_final_mean", "cached-state relative residual at the last step"),
    Column("paper_psnr_mean", "test PSNR", "dB", reference_for="psnr_mean"),
    Column("paper_psnr_std", "std", "dB", reference_for="psnr_std"),
    Column("paper_delta", "implicit - explicit of the means", "dB", reference_for="delta_mean"),
    Column("image_sha256", "image SHA-256 (float32)"), Column("profile"), Column("data_source", "data"),
)


# ----------------------------------------------------------------------------- video (spec C.4)


def build_video(job: TableJob, files: Sequence[str]) -> TableRows:
    """Per (filter, size, implicit / explicit): PSNR mean and std over frames, and implicit - explicit (spec C.4)."""
    v = job.block
    results = read_results(files)
    by_filter = {r["filter"]: r for r in results}
    if sorted(by_filter) != sorted(v.filters):
        raise ConfigError(f"{job.table}: expected one video result per filter {list(v.filters)}, got {sorted(by_filter)}")
    rows = []
    for filter in v.filters:
        result = by_filter[filter]
        runs = {(run["paper_size"], run["implicit"]): run for run in result["runs"]}
        for paper_size, size in v.sizes.items():
            for implicit in (False, True):
                run = runs[(paper_size, implicit)]
                paper = PAPER_VIDEO[(filter, implicit, paper_size)]
                row = {"filter": filter, "size": size, "paper_size": paper_size, "model": _model(implicit),
                       "label": run["label"], "num_parameters": run["num_parameters"], "psnr_mean": run["psnr_mean"],
                       "psnr_std": run["psnr_std"], "n_frames": len(run["psnr_frames"]), "steps": run["steps"],
                       "step_seconds": run["step_seconds"], "f_applications_per_step": run["f_applications_per_step"],
                       "paper_psnr_mean": paper[0], "paper_psnr_std": paper[1], "profile": job.profile,
                       "data_source": result["data_source"]}
                if implicit:
                    row["delta"] = run["psnr_mean"] - runs[(paper_size, False)]["psnr_mean"]
                    row["paper_delta"] = round(paper[0] - PAPER_VIDEO[(filter, False, paper_size)][0], 4)
                rows.append(row)
    first = results[0]
    return TableRows(rows, {"profile": job.profile, "data": first["data_source"], "frames": first["frames"],
                            "shape": "x".join(map(str, first["frame_shape"])), "steps": v.steps, "seed": v.seed,
                            "batch": "every pixel" if v.batch_size is None else f"{v.batch_size} random pixels"},
                     {"seeds": [v.seed], "run_files": sorted(files), "video_sha256": first["video_sha256"],
                      "measured_on": measured_on(results)})


def video_metrics(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """DVC metrics: PSNR mean and std over frames per model (spec C.4)."""
    return {f"{r['filter']}/{r['paper_size']}/{r['model']}": {"psnr_mean": r["psnr_mean"], "psnr_std": r["psnr_std"]}
            for r in rows}


# ----------------------------------------------------------------------------- declarations

_STANDIN = ("Profile {profile}; data {data}. Absolute PSNRs are not comparable with the paper's (other images, "
            "resolution and widths, spec C.7); the signs of the paired differences and the iso-parameter comparisons "
            "are.")

TABLES = (
    TableSpec(
        name="implicit2_generalization", task=TASK, paper=PAPER, source="(Implicit)^2 slides, image generalisation "
        "table (spec C.5)", title="(Implicit)^2 image generalisation: implicit vs explicit MFN / SIREN",
        caption=("Test PSNR on the unobserved pixels [1::2, 1::2] after training on [::2, ::2] (25 % each) of each "
                 "{resolution} px image, {steps} Adam steps, a new model per image (seed {seed}; implicit and "
                 "explicit from the same init); mean and std (ddof 0) over {images} images per set; paired "
                 "differences and wins per image; 'image' rows give every pair; 'baseline' rows are answers that "
                 "need no model (mean colour, nearest and bilinear from the same train pixels), and every model row "
                 "gives its margin over bilinear interpolation. Implicit models: amortised fixed point (full solve at step 0, then one F application per step), evaluated by a fresh solve from zero. "
                 + _STANDIN),
        columns=GENERALIZATION_COLUMNS, settings_of=lambda s: s.table("implicit2_generalization"),
        build=build_generalization, metrics=generalization_metrics,
    ),
    TableSpec(
        name="implicit2_video", task=TASK, paper=PAPER, source="(Implicit)^2 slides, video table (spec C.5)",
        title="(Implicit)^2 video representation: PSNR over frames",
        caption=("PSNR mean and std over the {frames} frames ({shape} px) of the video after {steps} Adam steps on "
                 "{batch} per step, gradient values clipped, no amortisation (a full solve from zero every step) and "
                 "no normalisation, as the reference's video runs; seed {seed}. " + _STANDIN),
        columns=(Column("filter"), Column("size", "size run"), Column("paper_size", "paper size it stands in for"),
                 Column("model"), Column("label", "paper row"), Column("num_parameters", "parameters"),
                 Column("psnr_mean", "PSNR, mean over frames", "dB"), Column("psnr_std", "std over frames", "dB"),
                 Column("delta", "implicit - explicit", "dB"), Column("n_frames", "frames"), Column("steps"),
                 Column("step_seconds", "time per training step", "s"),
                 Column("f_applications_per_step", "F applications per step"),
                 Column("paper_psnr_mean", "PSNR", "dB", reference_for="psnr_mean"),
                 Column("paper_psnr_std", "std", "dB", reference_for="psnr_std"),
                 Column("paper_delta", "implicit - explicit", "dB", reference_for="delta"),
                 Column("profile"), Column("data_source", "data")),
        settings_of=lambda s: s.table("implicit2_video"), build=build_video, metrics=video_metrics,
    ),
    *figures.FIGURES,
)
