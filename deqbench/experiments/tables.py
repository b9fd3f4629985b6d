"""Declarative tables: one :class:`TableSpec` per paper table or figure, one builder that writes them all.

A spec declares the table once: its columns (with units, and which columns hold the paper's reference values),
the paper and table number those values come from, the caption, how rows are assembled from per-job result
files, the numbers DVC tracks as metrics and, for figures, how to draw them.  :func:`write_table` writes
``<name>.csv``, ``<name>.md``, ``<name>.html`` (for the report), ``<name>.provenance.json``, ``metrics/<name>.json``
and, for figures, ``<name>.png``,
all atomically.  Paper values only ever appear in reference columns, whose headers say so.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from deqbench.experiments.io import atomic_write_json, atomic_write_text


@dataclass(frozen=True)
class Column:
    """One column: ``key`` in the rows, a header, a unit, and for a paper column the measured column it refers to."""

    key: str
    header: str = ""
    unit: str = ""
    reference_for: str | None = None  # this column holds the paper's value of column ``reference_for``

    @property
    def title(self) -> str:
        text = self.header or self.key
        if self.unit:
            text += f" ({self.unit})"
        return text + (" [paper, reference]" if self.reference_for else "")


@dataclass(frozen=True)
class TableRows:
    """What a spec's ``build`` returns: the rows, the caption's fields and extra provenance (inputs, devices...)."""

    rows: list[dict[str, Any]]
    caption_fields: Mapping[str, Any] = field(default_factory=dict)
    provenance: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TableSpec:
    """A paper table or figure as deqbench reproduces it.

    ``build(settings, input_files)`` assembles the rows from per-job JSON results; ``settings`` is the typed
    object ``settings_of(task_settings)`` returns (what the table reads, hashed for reruns).  ``caption`` is a
    format string filled from ``TableRows.caption_fields``.  ``metrics(rows)`` gives the numbers DVC tracks;
    ``draw(rows, png_path, caption)`` makes a figure's PNG; ``plot`` is its DVC plot (x and y columns).
    """

    name: str
    task: str
    paper: str
    source: str
    title: str
    caption: str
    columns: tuple[Column, ...]
    settings_of: Callable[[Any], Any]
    build: Callable[[Any, Sequence[str]], TableRows]
    metrics: Callable[[list[dict[str, Any]]], dict[str, Any]] | None = None
    draw: Callable[[list[dict[str, Any]], Path, str], None] | None = None
    plot: Mapping[str, str] | None = None
    # A real dataset the table cannot run without and that has no embedded stand-in (e.g. "ImageNet"): such a table
    # is built only when asked for by name, and its claims read "not measured" until then.
    needs: str | None = None

    def reference_columns(self) -> dict[str, str]:
        """Measured column -> the column holding the paper's value of it."""
        return {c.reference_for: c.key for c in self.columns if c.reference_for}

    def outputs(self, root: str = "results") -> dict[str, str]:
        """Every file :func:`write_table` writes for this spec, by kind."""
        out = {"csv": f"{root}/{self.name}.csv", "md": f"{root}/{self.name}.md", "html": f"{root}/{self.name}.html",
               "provenance": f"{root}/{self.name}.provenance.json", "metrics": f"{root}/metrics/{self.name}.json"}
        if self.draw is not None:
            out["png"] = f"{root}/{self.name}.png"
        return out


def format_cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.1f}"
    return str(value)


def render_csv(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[c.key for c in columns], lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c.key: format_cell(row.get(c.key)) for c in columns})
    return buffer.getvalue()


def render_markdown(title: str, caption: str, rows: Sequence[Mapping[str, Any]], columns: Sequence[Column]) -> str:
    lines = [f"# {title}", "", caption, "", "| " + " | ".join(c.title for c in columns) + " |",
             "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(format_cell(row.get(c.key)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


HTML_STYLE = ("body{font-family:sans-serif;font-size:13px}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
              "padding:2px 6px;text-align:left}th.ref,td.ref{background:#f3f0e6;color:#555}caption{text-align:left;"
              "padding:4px 0;max-width:90em}")


def render_html(title: str, caption: str, rows: Sequence[Mapping[str, Any]], columns: Sequence[Column]) -> str:
    """A standalone HTML table (what the Snakemake report shows); the paper's reference columns are shaded."""
    cls = [' class="ref"' if c.reference_for else "" for c in columns]
    head = "".join(f"<th{k}>{html.escape(c.title)}</th>" for c, k in zip(columns, cls))
    body = "".join("<tr>" + "".join(f"<td{k}>{html.escape(format_cell(row.get(c.key)))}</td>" for c, k in zip(columns, cls))
                   + "</tr>\n" for row in rows)
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{HTML_STYLE}</style></head><body><h2>{html.escape(title)}</h2><table><caption>"
            f"{html.escape(caption)}</caption><tr>{head}</tr>\n{body}</table></body></html>\n")


def caption_of(spec: TableSpec, built: TableRows) -> str:
    return spec.caption.format(**built.caption_fields) + f" Paper columns: {spec.source}, a reference, not our measurement."


def write_table(spec: TableSpec, built: TableRows, out_csv: str | Path, provenance: Mapping[str, Any]) -> dict[str, Path]:
    """Write every output of ``spec`` next to ``out_csv`` (its metrics under ``metrics/``), atomically."""
    csv_path = Path(out_csv)
    if csv_path.name != f"{spec.name}.csv":
        raise ValueError(f"{spec.name} is written as {spec.name}.csv, not {csv_path.name}")
    outputs = {k: Path(v) for k, v in spec.outputs(str(csv_path.parent)).items()}
    caption = caption_of(spec, built)
    record = {**provenance, "table": spec.name, "paper": spec.paper, "source": spec.source, "caption": caption,
              "inputs": dict(built.provenance)}
    atomic_write_json(outputs["provenance"], record)
    metrics = spec.metrics(built.rows) if spec.metrics is not None else {}
    atomic_write_json(outputs["metrics"], {"table": spec.name, "profile": provenance.get("profile"), **metrics})
    if spec.draw is not None:
        spec.draw(built.rows, outputs["png"], caption)
    atomic_write_text(outputs["md"], render_markdown(spec.title, caption, built.rows, spec.columns))
    atomic_write_text(outputs["html"], render_html(spec.title, caption, built.rows, spec.columns))
    atomic_write_text(outputs["csv"], render_csv(built.rows, spec.columns))
    return outputs


def read_results(files: Sequence[str | Path]) -> list[dict[str, Any]]:
    """The per-job JSON results a table is assembled from, with their file names."""
    out = []
    for f in files:
        record = json.loads(Path(f).read_text())
        record["_file"] = str(f)
        out.append(record)
    return out


def measured_on(results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The distinct devices that produced ``results`` (from their provenance)."""
    devices: list[dict[str, Any]] = []
    for r in results:
        device = r.get("provenance", {}).get("device")
        if device and device not in devices:
            devices.append(device)
    return devices
