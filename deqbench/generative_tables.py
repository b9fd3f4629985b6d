"""Assemble Tables 1, 3, 4, the memory table and Figure 3 of the JIIO paper from per-run JSON files.

Measured values and the paper's printed values sit side by side; the paper's
are only in ``paper_*`` columns, labelled as reference.  A FID that could not
be computed (no Inception weights offline) reads ``n/a`` and its reason is in
the ``fid_note`` column and the provenance.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path
from typing import Any

from deqbench.experiments.config import ConfigError, config_hash, load_profile
from deqbench.experiments.io import atomic_write_json, atomic_write_text
from deqbench.experiments.provenance import provenance
from deqbench.tables import device_name, paper_tables, write_table

TABLE1_LABEL = {"vae": "VAE", "rae": "RAE", "mdeq_vae": "MDEQ-VAE", "mdeq_vae_jiio": "MDEQ-VAE (w/ JIIO)",
                "jiio_mdeq": "JIIO-MDEQ"}
TABLE4_LABEL = {"sup_ae": ("supervised", "AE"), "sup_mdeq_ae": ("supervised", "MDEQ-AE"),
                "sup_jiio100": ("supervised", "JIO-MDEQ-100"), "unsup_vae_adam": ("unsupervised", "VAE (Adam)"),
                "unsup_mdeq_vae_adam": ("unsupervised", "MDEQ-VAE (Adam)"), "unsup_jiio40": ("unsupervised", "JIO-MDEQ-40"),
                "unsup_jiio100": ("unsupervised", "JIO-MDEQ-100")}


def _fid_cell(fid: dict[str, Any] | None) -> tuple[Any, str]:
    if fid is None:
        return "-", "not applicable (the paper reports no generation for this row)"
    if fid["value"] is None:
        return "n/a", fid["reason"].split(":")[0] + " (full reason in the provenance JSON)"
    return fid["value"], f"{fid['implementation']}; {fid['n_samples']} vs {fid['n_reference']} images"


def _device_name(prov: dict[str, Any]) -> str:
    return device_name(prov["device"])


def table1(profile: dict[str, Any], files: list[str]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    reference = paper_tables()["table1"]
    results = {json.loads(Path(f).read_text())["row"]: json.loads(Path(f).read_text()) for f in files}
    rows, notes = [], {}
    for key, label in TABLE1_LABEL.items():
        if key not in results:
            raise ConfigError(f"table1: no evaluation for row {key}")
        r = results[key]
        gen, gen_note = _fid_cell(r.get("fid_generation"))
        rec, rec_note = _fid_cell(r["fid_reconstruction"])
        notes[key] = {"generation": (r.get("fid_generation") or {}).get("reason") or gen_note,
                      "reconstruction": r["fid_reconstruction"].get("reason") or rec_note}
        rows.append({"model": label, "fid_generation": gen, "fid_reconstruction": rec,
                     "recon_median_psnr_01": r["reconstruction"]["median_psnr_01"],
                     "recon_psnr_reference_convention": r["reconstruction"]["reference_batch_psnr"]["median"],
                     "paper_fid_generation": reference[key]["generation"], "paper_fid_reconstruction": reference[key]["reconstruction"],
                     "fid_note": rec_note if rec == "n/a" else "", "profile": profile["name"], "data_source": r["data_source"]})
    return rows, {"fid": notes, "inputs": sorted(files), "seeds": sorted({r["train"]["seed"] for r in results.values()}),
                  "measured_on": [results[k]["provenance"]["device"] for k in results][:1]}


def table4(profile: dict[str, Any], files: list[str]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    reference = paper_tables()["table4"]
    problems = list(profile["generative"]["problems"])
    cells: dict[tuple[str, str], dict[str, Any]] = {}
    for f in files:
        r = json.loads(Path(f).read_text())
        cells[(r["row"], r["problem"])] = r
    rows = []
    for key, (task, label) in TABLE4_LABEL.items():
        row: dict[str, Any] = {"task": task, "model": label}
        for problem in problems:
            r = cells.get((key, problem))
            if r is None:
                raise ConfigError(f"table4: no evaluation for row {key}, problem {problem}")
            row[f"{problem}_median_psnr_01"] = r["median_psnr_01"]
            row[f"{problem}_psnr_reference_convention"] = r["reference_batch_psnr"]["median"]
            row[f"{problem}_paper"] = reference[key].get(problem)
            row["data_source"] = r["data_source"]
        row["profile"] = profile["name"]
        rows.append(row)
    seeds = sorted({r["train"]["seed"] for r in cells.values()})
    return rows, {"inputs": sorted(files), "seeds": seeds, "problems": problems,
                  "measured_on": [next(iter(cells.values()))["provenance"]["device"]]}


def table3(profile: dict[str, Any], timing_file: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    result = json.loads(Path(timing_file).read_text())
    reference = paper_tables()["table3"]
    device = _device_name(result["provenance"])
    rows = [{"method": r["method"], "iterations": r["iterations"], "batch_size": r["batch_size"],
             "ms_per_example": r["ms_per_example"], "ms_per_call": r["ms_per_call"],
             "adam_over_this": r["adam_over_this"], "returned_cost_mean": r["returned_cost_mean"],
             "paper_ms_batch1": reference.get(r["method"]), "device": device, "profile": profile["name"],
             "data_source": result["data_source"]} for r in result["rows"]]
    return rows, {"timing_file": timing_file, "measured_on": [result["provenance"]["device"]],
                  "seeds": [result.get("seed", 0)]}


def memory_table(profile: dict[str, Any], timing_file: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    result = json.loads(Path(timing_file).read_text())
    reference = paper_tables()["memory"]
    mem = {r["method"]: r for r in result["memory"]}
    rows = []
    for method, r in mem.items():
        key = "jiio" if method.startswith("jiio") else "adam"
        rows.append({"method": method, "batch_size": r["batch_size"], "peak_gib": r["peak_gib"], "measure": r["measure"],
                     "jiio_over_adam": mem["jiio40"]["peak_bytes"] / max(mem["adam40"]["peak_bytes"], 1),
                     "paper_gb": reference[key], "device": _device_name(result["provenance"]),
                     "profile": profile["name"], "data_source": result["data_source"]})
    return rows, {"timing_file": timing_file, "measured_on": [result["provenance"]["device"]], "seeds": [0]}


def figure3(profile: dict[str, Any], timing_file: str, out_png: str) -> None:
    """Reconstruction cost against wall-clock time, Adam vs JIIO, one panel per trained model (Figure 3), with its
    data as CSV and a provenance JSON beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    result = json.loads(Path(timing_file).read_text())
    curves = result["figure3"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["panel", "method", "iteration", "seconds", "cost_mean", "batch_size"],
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(curves)
    panels = list(dict.fromkeys(c["panel"] for c in curves))
    png = Path(out_png)
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for method in dict.fromkeys(c["method"] for c in curves if c["panel"] == panel):
            pts = [c for c in curves if c["panel"] == panel and c["method"] == method]
            ax.plot([p["seconds"] for p in pts], [p["cost_mean"] for p in pts], label=method,
                    lw=1.5 if method.startswith("adam") else 1.2)
        ax.set_xlabel("wall-clock time (s)")
        ax.set_ylabel("reconstruction cost (sum of squares)")
        ax.set_yscale("log")
        ax.set_title(panel, fontsize=9)
        ax.legend()
    fig.suptitle(f"profile {profile['name']}: {result['data_source']}; {_device_name(result['provenance'])}", fontsize=8)
    fig.tight_layout()
    tmp = png.with_name(f".{png.name}.tmp.png")
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(png)
    atomic_write_text(png.with_suffix(".csv"), buffer.getvalue())
    atomic_write_json(png.with_name(png.stem + ".provenance.json"),
                      provenance(profile, "cpu", seeds=[result.get("seed", 0)], figure="figure3",
                                 inputs={"timing_file": timing_file, "measured_on": [result["provenance"]["device"]]}))


T1_COLS = ["model", "fid_generation", "fid_reconstruction", "recon_median_psnr_01", "recon_psnr_reference_convention",
           "paper_fid_generation", "paper_fid_reconstruction", "fid_note", "profile", "data_source"]
T1_HEAD = ["model", "FID gen.", "FID recon.", "recon. median PSNR [0,1] (dB)", "recon. PSNR ref. convention (dB)",
           "paper FID gen. (reference)", "paper FID recon. (reference)", "FID note", "profile", "data"]
T3_COLS = ["method", "iterations", "batch_size", "ms_per_example", "ms_per_call", "adam_over_this", "returned_cost_mean",
           "paper_ms_batch1", "device", "profile", "data_source"]
MEM_COLS = ["method", "batch_size", "peak_gib", "jiio_over_adam", "measure", "paper_gb", "device", "profile", "data_source"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deqbench.generative_tables")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--profile", default=None)
    parser.add_argument("--table", required=True, choices=["table1", "table3", "table4", "memory", "figure3"])
    parser.add_argument("--out", required=True, help="CSV (or PNG for figure3); .md and .provenance.json beside it")
    parser.add_argument("inputs", nargs="+")
    args = parser.parse_args(argv)
    try:
        profile = load_profile(args.params, args.profile)
        tag = f"profile `{profile['name']}` (config {config_hash(profile)})"
        if args.table == "figure3":
            figure3(profile, args.inputs[0], args.out)
        elif args.table == "table1":
            rows, extra = table1(profile, args.inputs)
            note = (f"FID (lower is better) of generated samples and of test-set reconstructions, plus the reconstruction "
                    f"PSNR; {tag}. FID is torch-fidelity's Inception FID; `n/a` means it could not be computed (reason "
                    f"in fid_note). paper_* columns are the JIIO paper's Table 1 (CelebA 64x64), a reference only.")
            write_table("table1", "Table 1: generative modelling (FID)", note, rows, T1_COLS, T1_HEAD, profile, args.out, extra)
        elif args.table == "table4":
            rows, extra = table4(profile, args.inputs)
            cols = ["task", "model"]
            for p in extra["problems"]:
                cols += [f"{p}_median_psnr_01", f"{p}_psnr_reference_convention", f"{p}_paper"]
            cols += ["profile", "data_source"]
            note = (f"Inverse problems: `*_median_psnr_01` is the median over test images of PSNR in the [0, 1] pixel "
                    f"range (our convention); `*_psnr_reference_convention` is the reference code's (MSE per batch in "
                    f"[-1, 1] units, median over batches, about 6 dB lower); `*_paper` are the paper's Table 4 values "
                    f"(reference convention), a reference only. {tag}.")
            write_table("table4", "Table 4: inverse problems (median PSNR, dB)", note, rows, cols, cols, profile, args.out, extra)
        elif args.table == "table3":
            rows, extra = table3(profile, args.inputs[0])
            note = (f"Time for one latent optimisation (reconstruction) with the JIIO-MDEQ generator, Adam-40 vs JIIO-40 vs "
                    f"JIIO-100, timed side by side in one process with device synchronisation; {tag}. paper_ms_batch1 is "
                    f"the JIIO paper's Table 3 (RTX 2080 Ti, batch 1), a reference only.")
            write_table("table3", "Table 3: JIIO vs Adam optimisation time", note, rows, T3_COLS, T3_COLS, profile, args.out, extra)
        else:
            rows, extra = memory_table(profile, args.inputs[0])
            note = (f"Peak working memory of one reconstruction, JIIO-40 vs Adam-40 (appendix C.6); `measure` says what "
                    f"was measured (CUDA peak allocation, or peak RSS of a CPU child process); {tag}. paper_gb is the "
                    f"paper's GPU figure for CelebA at batch 48, a reference only.")
            write_table("memory", "Memory: JIIO vs Adam", note, rows, MEM_COLS, MEM_COLS, profile, args.out, extra)
    except (ConfigError, FileNotFoundError, KeyError, json.JSONDecodeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
