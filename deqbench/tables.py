"""Assemble result tables (CSV + Markdown + provenance JSON) from per-run outputs.

Measured values and the paper's printed values sit side by side; the
paper's are only ever in the ``paper_value`` columns, labelled as reference.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

import yaml

from deqbench.experiments.config import ConfigError, config_hash, load_profile
from deqbench.experiments.io import atomic_write_json, atomic_write_text
from deqbench.experiments.provenance import provenance

REFERENCE = Path(__file__).with_name("reference") / "jiio_paper_tables.yaml"
DATASET_LABEL = {"mnist": "MNIST", "cifar10": "CIFAR-10"}
METHOD_ORDER = ("clean", "pgd", "jio")


def paper_tables() -> dict[str, Any]:
    return yaml.safe_load(REFERENCE.read_text())


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.1f}"
    return str(value)


def device_name(device: dict[str, Any]) -> str:
    """A provenance device record as a table cell: the GPU name, or the CPU and its thread count."""
    return device.get("name") or f"cpu ({device.get('cpu')}, {device.get('threads')} threads)"


def _write_csv(rows: list[dict[str, Any]], columns: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: _fmt(row.get(c)) for c in columns})
    return buffer.getvalue()


def _write_markdown(title: str, note: str, rows: list[dict[str, Any]], columns: list[str], headers: list[str]) -> str:
    lines = [f"# {title}", "", note, "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def adversarial_table(
    table: str, profile: dict[str, Any], eval_files: list[str], datasets: list[str] | None = None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows (dataset, train method, test method) with mean and std over seeds (all of the
    experiment's datasets, or the subset ``datasets``)."""
    reference = paper_tables().get(table, {})
    eps = profile["experiments"][table]["eps"]
    cells: dict[tuple[str, str, str], list[float]] = {}
    sources: dict[str, str] = {}
    seeds: set[int] = set()
    devices: list[dict[str, Any]] = []
    for path in eval_files:
        result = json.loads(Path(path).read_text())
        train = result["train"]
        if abs(result["eps"] - eps) > 1e-12:
            raise ConfigError(f"{path}: evaluated at eps={result['eps']}, but {table} uses eps={eps}")
        sources[train["dataset"]] = result["data_source"]
        device = result.get("provenance", {}).get("device")
        if device and device not in devices:
            devices.append(device)
        seeds.add(train["seed"])
        for test_method, acc in result["accuracy"].items():
            cells.setdefault((train["dataset"], train["method"], test_method), []).append(acc)
    rows = []
    wanted = profile["experiments"][table]["datasets"]
    if datasets:
        unknown = sorted(set(datasets) - set(wanted))
        if unknown:
            raise ConfigError(f"--datasets {unknown} not in experiments.{table}.datasets {wanted}")
        wanted = [d for d in wanted if d in datasets]
    for dataset in wanted:
        for train_method in METHOD_ORDER:
            for test_method in METHOD_ORDER:
                values = cells.get((dataset, train_method, test_method))
                if not values:
                    raise ConfigError(f"{table}: no evaluation for dataset={dataset} train={train_method} test={test_method}")
                paper = reference.get(dataset, {}).get(train_method, {}).get(test_method)
                rows.append({
                    "dataset": DATASET_LABEL[dataset],
                    "eps": eps,
                    "train_method": train_method,
                    "test_method": test_method,
                    "accuracy_mean": statistics.fmean(values),
                    "accuracy_std": statistics.stdev(values) if len(values) > 1 else float("nan"),
                    "n_seeds": len(values),
                    "paper_value": paper[0] if paper else None,
                    "paper_std": paper[1] if paper else None,
                    "profile": profile["name"],
                    "data_source": sources[dataset],
                })
    return rows, {"seeds": sorted(seeds), "eval_files": sorted(eval_files), "measured_on": devices}


ADV_COLUMNS = ["dataset", "eps", "train_method", "test_method", "accuracy_mean", "accuracy_std", "n_seeds",
               "paper_value", "paper_std", "profile", "data_source"]
ADV_HEADERS = ["dataset", "eps", "train", "test", "accuracy % (mean)", "std", "seeds", "paper (reference)",
               "paper std (reference)", "profile", "data"]

TIMING_COLUMNS = ["method", "iterations", "batch_size", "ms_per_example", "ms_per_call", "pgd_over_jio",
                  "paper_value_ms", "paper_ratio", "device", "profile", "data_source"]


def timing_table(profile: dict[str, Any], timing_file: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    result = json.loads(Path(timing_file).read_text())
    reference = paper_tables()["table2"]
    device = result["provenance"]["device"]
    name = device_name(device)
    rows = []
    for row in result["rows"]:
        rows.append({**row, "paper_value_ms": reference[row["method"]], "paper_ratio": reference["pgd"] / reference["jio"],
                     "device": name, "profile": profile["name"], "data_source": result["data_source"]})
    return rows, {"timing_file": timing_file, "measured_on": [device], "seeds": result["provenance"].get("seeds")}


def write_table(
    name: str, title: str, note: str, rows: list[dict[str, Any]], columns: list[str], headers: list[str],
    profile: dict[str, Any], out_csv: str, extra: dict[str, Any],
) -> None:
    csv_path = Path(out_csv)
    md_path = csv_path.with_suffix(".md")
    prov_path = csv_path.with_name(csv_path.stem + ".provenance.json")
    # The table is assembled on the CPU; the devices that measured its numbers are in ``measured_on``.
    atomic_write_json(prov_path, provenance(profile, "cpu", seeds=extra.get("seeds"), table=name, inputs=extra))
    atomic_write_text(md_path, _write_markdown(title, note, rows, columns, headers))
    atomic_write_text(csv_path, _write_csv(rows, columns))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deqbench.tables")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--profile", default=None)
    parser.add_argument("--table", required=True, choices=["table2", "table5", "table8"])
    parser.add_argument("--out", required=True, help="CSV path; .md and .provenance.json are written beside it")
    parser.add_argument("--datasets", nargs="*", default=None, help="restrict an adversarial table to these datasets")
    parser.add_argument("inputs", nargs="+")
    args = parser.parse_args(argv)
    try:
        profile = load_profile(args.params, args.profile)
        tag = f"profile `{profile['name']}` (config {config_hash(profile)})"
        if args.table == "table2":
            rows, extra = timing_table(profile, args.inputs[0])
            note = (f"Time to compute an adversarial example of an MDEQ, PGD vs JIO, measured side by side in one process; "
                    f"{tag}. `paper_value_ms` is the JIIO paper's Table 2 (RTX 2080 Ti), a reference, not our measurement.")
            write_table("table2", "Table 2: time to compute an adversarial example", note, rows, TIMING_COLUMNS, TIMING_COLUMNS,
                        profile, args.out, extra)
        else:
            rows, extra = adversarial_table(args.table, profile, args.inputs, args.datasets)
            eps = profile["experiments"][args.table]["eps"]
            title = {"table5": "Table 5", "table8": "Table 8"}[args.table] + f": L2 adversarial training, eps = {eps:g}"
            note = (f"Accuracy (%) of MDEQ classifiers; rows: training method, columns: attack at test time; mean and "
                    f"sample std over seeds {extra['seeds']}; {tag}. The paper columns are the JIIO paper's printed "
                    f"values, a reference only.")
            write_table(args.table, title, note, rows, ADV_COLUMNS, ADV_HEADERS, profile, args.out, extra)
    except (ConfigError, FileNotFoundError, KeyError, json.JSONDecodeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
