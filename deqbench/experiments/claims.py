"""The claims ledger: every quantitative claim of the three papers, checked against our tables.

Claims are declared once, in ``deqbench/tasks/claims.yaml``: an id, the paper, the statement, where in the paper it
is made, and either a check on cells of our tables or the reason it cannot be checked yet.  A cell is
``{table, where: {column: value, ...}, column}`` (``max`` / ``min`` as a ``where`` value picks that row).  Checks:

* ``ratio``: ``numerator / denominator`` within ``[at_least, at_most]`` (speed-ups, memory ratios);
* ``compare``: ``left <op> right`` (``>``, ``<``, ``>=``, ``<=``); ``right`` may be a number (a paper's threshold);
* ``within``: ``|left - right| <= tolerance`` (+ ``se`` standard errors of the two means, from their std columns);
* ``ordering``: ``cells`` strictly ``descending`` or ``ascending``;
* ``all``: a list of checks that must all hold.

``requires`` lists preconditions (e.g. clean accuracy above chance); when one fails the verdict is ``not measured``
with the reason, so a claim never "holds" on models that learned nothing.  The same check is also run on the
paper's own numbers (the tables' reference columns) as a sanity check of the declaration.  Our value only ever
comes from measured columns; a claim naming a reference column is rejected.

Besides the tables the tasks declare, the ledger reads ``gpu_check``: the headline rows of the last GPU check
(``results/gpu/gpu_check.csv`` and its ``gpu_check.json``, written by ``bench/gpu_check.py`` on the device), so the
speed and memory claims carry their paper-size GPU numbers with the device in their conditions.

Verdicts: ``holds``, ``does not hold`` or ``not measured: <reason>``; a verdict from a reduced-scale profile or
stand-in data says so in brackets.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import operator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from deqbench.experiments.config import ConfigError
from deqbench.experiments.io import atomic_write_json, atomic_write_text
from deqbench.experiments.provenance import provenance
from deqbench.experiments.runtime import device_name
from deqbench.experiments.tables import Column, render_csv, render_html, render_markdown

CLAIMS_FILE = Path(__file__).resolve().parents[1] / "tasks" / "claims.yaml"
#: Tables read from files other than ``<results>/<name>.csv``: name -> (CSV path under results, columns).
GPU_CHECK = "gpu_check"
EXTRA_TABLES = {GPU_CHECK: ("gpu/gpu_check.csv", ("measurement", "value", "unit", "target", "met", "note"))}
HOLDS, FAILS = "holds", "does not hold"
OPERATORS = {">": operator.gt, "<": operator.lt, ">=": operator.ge, "<=": operator.le}
COLUMNS = (
    Column("id"), Column("paper"), Column("source", "where in the paper"), Column("statement", "claim"),
    Column("paper_value", "paper's value"), Column("paper_check", "check on the paper's numbers"),
    Column("our_value", "our value"), Column("verdict"), Column("conditions"), Column("evidence"),
)


class NotMeasured(Exception):
    """A check could not be evaluated; the message is the reason."""


@dataclass
class Evaluation:
    holds: bool
    value: str
    cells: list[str]


# ----------------------------------------------------------------------------- reading tables


class Tables:
    """Our tables (CSV rows and provenance) under ``root``, and which column holds the paper's value of which."""

    def __init__(self, root: str | Path, reference_columns: Mapping[str, Mapping[str, str]],
                 needs: Mapping[str, str] | None = None):
        self.root = Path(root)
        self.reference_columns = reference_columns
        self.needs = dict(needs or {})  # table -> the real dataset it cannot run without
        self._rows: dict[str, list[dict[str, str]]] = {}

    def rows(self, table: str) -> list[dict[str, str]]:
        if table not in self._rows:
            path = self.root / (EXTRA_TABLES[table][0] if table in EXTRA_TABLES else f"{table}.csv")
            if not path.exists():
                if table in self.needs:
                    raise NotMeasured(f"{self.needs[table]}: {path} is built only on request, from the real "
                                      f"{self.needs[table]} files (no embedded stand-in)")
                raise NotMeasured(f"{path} not built")
            try:
                with path.open(encoding="utf-8") as fh:
                    self._rows[table] = list(csv.DictReader(fh))
            except (UnicodeDecodeError, csv.Error) as err:
                raise ConfigError(f"{path}: not a readable CSV table ({err}); delete it and rebuild it") from None
        return self._rows[table]

    def provenance(self, table: str) -> dict[str, Any]:
        if table == GPU_CHECK:  # the GPU check records its environment, not a pipeline provenance
            path = self.root / Path(EXTRA_TABLES[table][0]).with_suffix(".json")
            if not path.exists():
                return {}
            env = json.loads(path.read_text())["environment"]
            return {"profile": "paper-standin", "scale": "paper", "inputs": {"measured_on": [
                {"name": f"{env['device']}, torch {env['torch']}, git {env['git_revision'][:7]}"}]}}
        path = self.root / f"{table}.provenance.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def row(self, cell: Mapping[str, Any]) -> dict[str, str]:
        rows = self.rows(cell["table"])
        where = dict(cell.get("where", {}))
        extreme = {k: v for k, v in where.items() if v in ("max", "min")}
        matches = [r for r in rows if all(_same(r.get(k), v) for k, v in where.items() if k not in extreme)]
        for key, kind in extreme.items():
            numbers = [_number(r.get(key)) for r in matches]
            if not matches or any(n is None for n in numbers):
                break
            pick = max(numbers) if kind == "max" else min(numbers)
            matches = [r for r, n in zip(matches, numbers) if n == pick]
        if len(matches) != 1:
            raise NotMeasured(f"{cell['table']}: {len(matches)} rows match {where}")
        return matches[0]

    def value(self, cell: Mapping[str, Any], paper: bool = False) -> tuple[float, str]:
        """The cell's number (ours, or with ``paper`` the paper's from the reference column) and its label."""
        row = self.row(cell)
        column = cell["column"]
        if paper:
            column = self.reference_columns.get(cell["table"], {}).get(cell["column"])
            if column is None:
                raise NotMeasured(f"{cell['table']}.{cell['column']} has no paper column")
        text = row.get(column, "")
        number = _number(text)
        where = ", ".join(f"{k}={row.get(k)}" for k in cell.get("where", {}))
        label = f"{cell['table']}[{where}].{column}={text or 'empty'}"
        if number is None:
            note = row.get("fid_note") or ""
            raise NotMeasured(f"{label}{': ' + note if note and not paper else ''}")
        return number, label


def _number(text: Any) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _same(actual: str | None, wanted: Any) -> bool:
    a, w = _number(actual), _number(wanted)
    if a is not None and w is not None:
        return math.isclose(a, w, rel_tol=1e-9)
    return str(actual) == str(wanted)


# ----------------------------------------------------------------------------- checks


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def evaluate(check: Mapping[str, Any], tables: Tables, paper: bool = False) -> Evaluation:
    """Evaluate one check on our numbers (or, with ``paper``, on the paper's reference numbers)."""
    (kind, spec), = check.items()
    if kind == "all":
        parts = [evaluate(sub, tables, paper) for sub in spec]
        return Evaluation(all(p.holds for p in parts), "; ".join(p.value for p in parts),
                          [c for p in parts for c in p.cells])
    if kind == "ratio":
        (num, a), (den, b) = tables.value(spec["numerator"], paper), tables.value(spec["denominator"], paper)
        if den == 0:
            raise NotMeasured(f"{b}: zero denominator")
        ratio = num / den
        ok = ratio >= spec.get("at_least", -math.inf) and ratio <= spec.get("at_most", math.inf)
        return Evaluation(ok, f"{_fmt(ratio)}x ({_fmt(num)} / {_fmt(den)})", [a, b])
    if kind == "compare":
        left, a = tables.value(spec["left"], paper)
        if isinstance(spec["right"], (int, float)):
            right, b = float(spec["right"]), f"threshold {spec['right']}"
        else:
            right, b = tables.value(spec["right"], paper)
        margin = spec.get("margin", 0.0)
        # ``margin`` shifts the bound (e.g. >= with margin -1: at most 1 below); ties within 1e-9 count as met.
        bound = margin if spec["op"] in (">", ">=") else -margin
        slack = {">=": -1e-9, "<=": 1e-9}.get(spec["op"], 0.0)
        ok = OPERATORS[spec["op"]](left - right, bound + slack)
        return Evaluation(ok, f"{_fmt(left)} {spec['op']} {_fmt(right)}", [a, b])
    if kind == "within":
        (left, a), (right, b) = tables.value(spec["left"], paper), tables.value(spec["right"], paper)
        tolerance, note = spec["tolerance"], ""
        if "se" in spec:
            try:
                tolerance += _standard_errors(spec, tables, paper)
            except NotMeasured:  # one seed: no spread to widen the tolerance by
                note = ", no seed spread"
        diff = left - right
        return Evaluation(abs(diff) <= tolerance, f"{_fmt(left)} vs {_fmt(right)} (diff {diff:+.3g}, allowed "
                                                  f"+-{_fmt(tolerance)}{note})", [a, b])
    if kind == "ordering":
        values = [tables.value(c, paper) for c in spec["cells"]]
        numbers = [v for v, _ in values]
        cmp = operator.gt if spec.get("order", "descending") == "descending" else operator.lt
        ok = all(cmp(x, y) for x, y in zip(numbers, numbers[1:]))
        sign = " > " if spec.get("order", "descending") == "descending" else " < "
        return Evaluation(ok, sign.join(_fmt(v) for v in numbers), [label for _, label in values])
    raise ConfigError(f"unknown check kind {kind!r}")


def _standard_errors(spec: Mapping[str, Any], tables: Tables, paper: bool) -> float:
    """``k`` standard errors of the difference of two means, from their std and count columns (for the paper's
    numbers: the paper's std with our seed count, as the paper does not print its own)."""
    se = spec["se"]
    total = 0.0
    for side in ("left", "right"):
        cell = spec[side]
        std, _ = tables.value({**cell, "column": se["std_column"]}, paper)
        count, _ = tables.value({**cell, "column": se["count_column"]})
        total += std**2 / max(count, 1.0)
    return se["k"] * math.sqrt(total)


# ----------------------------------------------------------------------------- the ledger


def _substitute(value: Any, names: Mapping[str, Any]) -> Any:
    if isinstance(value, str):
        for name, replacement in names.items():
            value = value.replace("{" + name + "}", str(replacement))
        return value
    if isinstance(value, Mapping):
        return {k: _substitute(v, names) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, names) for v in value]
    return value


def expand(claim: Mapping[str, Any]) -> dict[str, Any]:
    """A claim with ``for_each`` becomes one ``all`` check over every combination of the listed values (and its
    ``requires`` one precondition per combination)."""
    claim = dict(claim)
    loops = claim.pop("for_each", None)
    if loops and "check" in claim:
        combos = [dict(zip(loops, values)) for values in itertools.product(*loops.values())]
        claim["check"] = {"all": [_substitute(claim["check"], combo) for combo in combos]}
        if "requires" in claim:  # preconditions that name a loop variable hold for every combination
            expanded = [_substitute(need, combo) for combo in combos for need in claim["requires"]]
            claim["requires"] = [need for i, need in enumerate(expanded) if need not in expanded[:i]]
    return claim


def load_claims(path: str | Path = CLAIMS_FILE) -> list[dict[str, Any]]:
    data = yaml.safe_load(Path(path).read_text())
    claims = [expand(c) for c in data["claims"]]
    ids = [c["id"] for c in claims]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ConfigError(f"{path}: duplicate claim ids {duplicates}")
    return claims


def cells_of(check: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Every cell a check reads (for validation and evidence)."""
    (kind, spec), = check.items()
    if kind == "all":
        return [c for sub in spec for c in cells_of(sub)]
    if kind == "ordering":
        return list(spec["cells"])
    return [spec[k] for k in ("numerator", "denominator", "left", "right") if isinstance(spec.get(k), Mapping)]


def _checks(check: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The leaf checks of a (possibly ``all``) check."""
    (kind, spec), = check.items()
    return [leaf for sub in spec for leaf in _checks(sub)] if kind == "all" else [check]


def _conditions(claim: Mapping[str, Any], tables: Tables) -> tuple[str, str]:
    """(conditions text, bracketed scale note for the verdict) from the evidence tables' rows and provenance."""
    names = sorted({c["table"] for c in cells_of(claim["check"])})
    profiles, scales, data, devices = set(), set(), set(), set()
    for name in names:
        prov = tables.provenance(name)
        profiles.add(str(prov.get("profile", "unknown")))
        scales.add(str(prov.get("scale", "unknown")))
        for device in prov.get("inputs", {}).get("measured_on", []):
            devices.add(device_name(device))
        for row in tables.rows(name):
            if row.get("data_source"):
                data.add(row["data_source"])
    notes = []
    if "reduced" in scales:
        notes.append("reduced scale")
    if "unknown" in scales:
        notes.append("scale unknown: no provenance")
    if any("stand-in" in d for d in data):
        notes.append("stand-in data")
    text = (f"profile {', '.join(sorted(profiles))} ({', '.join(sorted(scales))} scale); "
            + (f"data: {'; '.join(sorted(data))}; " if data else "")
            + f"device: {', '.join(sorted(devices)) or 'unknown'}")
    if claim.get("conditions"):
        text += f"; {claim['conditions']}"
    return text, f" ({', '.join(notes)})" if notes else ""


def assess(claim: Mapping[str, Any], tables: Tables) -> dict[str, Any]:
    """One row of the ledger."""
    row = {k: claim.get(k, "") for k in ("id", "paper", "source", "statement")}
    row["paper_value"] = claim.get("paper_value", "")
    if "check" not in claim:
        row.update(verdict=f"not measured: {claim['not_measured']}", our_value="", paper_check="", conditions="",
                   evidence="")
        return row
    try:
        paper = evaluate(claim["check"], tables, paper=True)
        row["paper_check"] = HOLDS if paper.holds else FAILS
        row["paper_value"] = row["paper_value"] or paper.value
    except NotMeasured:
        row["paper_check"] = "-"
    try:
        for need in claim.get("requires", []):
            value, label = tables.value(need["cell"])
            if value < need.get("at_least", -math.inf) or value > need.get("at_most", math.inf):
                raise NotMeasured(f"{need['why']} ({label})")
        ours = evaluate(claim["check"], tables)
        conditions, note = _conditions(claim, tables)
        row.update(our_value=ours.value, verdict=(HOLDS if ours.holds else FAILS) + note, conditions=conditions,
                   evidence="; ".join(ours.cells))
    except NotMeasured as reason:
        row.update(our_value="", verdict=f"not measured: {reason}", conditions="", evidence="")
    return row


def validate(claims: Sequence[Mapping[str, Any]], reference_columns: Mapping[str, Mapping[str, str]],
             columns: Mapping[str, Sequence[str]]) -> None:
    """Every check names declared tables and measured (not reference) columns; unchecked claims say why."""
    for claim in claims:
        where = f"claim {claim.get('id')}"
        missing = [k for k in ("id", "paper", "source", "statement") if not claim.get(k)]
        if missing:
            raise ConfigError(f"{where}: missing {missing}")
        if ("check" in claim) == ("not_measured" in claim):
            raise ConfigError(f"{where}: give exactly one of 'check' and 'not_measured'")
        if "not_measured" in claim and not claim.get("paper_value"):
            raise ConfigError(f"{where}: an unchecked claim needs its paper_value")
        if "check" not in claim:
            continue
        cells = cells_of(claim["check"]) + [r["cell"] for r in claim.get("requires", [])]
        for cell in cells:
            table, column = cell["table"], cell["column"]
            if table not in columns:
                raise ConfigError(f"{where}: unknown table {table!r}")
            for name in (column, *cell.get("where", {})):
                if name not in columns[table]:
                    raise ConfigError(f"{where}: table {table} has no column {name!r}")
            if column in reference_columns.get(table, {}).values():
                raise ConfigError(f"{where}: {table}.{column} is a paper column; our value must be measured")
        for check in _checks(claim["check"]):
            if "se" in check.get("within", {}):
                se = check["within"]["se"]
                for side in ("left", "right"):
                    table = check["within"][side]["table"]
                    for name in (se["std_column"], se["count_column"]):
                        if name not in columns[table]:
                            raise ConfigError(f"{where}: table {table} has no column {name!r}")


def ledger(tables: Tables, claims: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [assess(c, tables) for c in claims]


def summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    counts = {"holds": 0, "does_not_hold": 0, "not_measured": 0}
    for r in rows:
        key = "holds" if r["verdict"].startswith(HOLDS) else "does_not_hold" if r["verdict"].startswith(FAILS) else "not_measured"
        counts[key] += 1
    return counts


def write_ledger(rows: Sequence[Mapping[str, Any]], out_csv: str | Path, record: Mapping[str, Any]) -> None:
    out = Path(out_csv)
    counts = summary(rows)
    caption = (f"Every quantitative claim of the JIIO, MOptEqs and (Implicit)^2 papers: {counts['holds']} hold, "
               f"{counts['does_not_hold']} do not hold, {counts['not_measured']} not measured. The paper's value is "
               f"the paper's own number; ours comes only from our tables (evidence column). A bracket after the "
               f"verdict says it comes from a reduced-scale profile or stand-in data.")
    atomic_write_json(out.with_name(out.stem + ".provenance.json"), {**record, "counts": counts, "caption": caption})
    atomic_write_json(out.parent / "metrics" / f"{out.stem}.json", {"table": out.stem, **counts})
    atomic_write_text(out.with_suffix(".md"), render_markdown("Claims ledger", caption, rows, COLUMNS))
    atomic_write_text(out.with_suffix(".html"), render_html("Claims ledger", caption, rows, COLUMNS))
    atomic_write_text(out, render_csv(rows, COLUMNS))


def declared_tables(specs: Mapping[str, Any]) -> tuple[dict[str, dict[str, str]], dict[str, list[str]]]:
    """(reference columns, columns) of every table a claim may read: the tasks' declared tables and EXTRA_TABLES."""
    reference = {name: spec.reference_columns() for name, spec in specs.items()}
    columns = {name: [c.key for c in spec.columns] for name, spec in specs.items()}
    columns.update({name: list(cols) for name, (_, cols) in EXTRA_TABLES.items()})
    return reference, columns


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", default="results", help="directory holding the tables (default: results)")
    parser.add_argument("--out", default="results/claims.csv", help="ledger CSV; .md and provenance beside it")
    parser.add_argument("--claims", default=str(CLAIMS_FILE), help="claims file (default: the shipped ledger)")


def run(args: argparse.Namespace) -> None:
    """``deqbench claims``: evaluate every claim on the tables in ``--results`` and write the ledger."""
    from deqbench.experiments.registry import all_tables

    specs = all_tables()
    reference, columns = declared_tables(specs)
    claims = load_claims(args.claims)
    validate(claims, reference, columns)
    needs = {name: spec.needs for name, spec in specs.items() if spec.needs}
    rows = ledger(Tables(args.results, reference, needs), claims)
    write_ledger(rows, args.out, provenance({"claims_file": str(args.claims), "results": str(args.results)}, "cpu"))
    counts = summary(rows)
    print(f"claims: {counts['holds']} hold, {counts['does_not_hold']} do not hold, {counts['not_measured']} not "
          f"measured -> {args.out}")
