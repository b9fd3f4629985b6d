"""Speed ratios and their committed baseline: pure functions, no pytest and no torch.

A ratio is ``numerator / denominator``, both medians timed in the same process on the same device, so it carries
over between machines where absolute times do not.  Each ratio names its *method*, the side whose speed the ratio
is about, the other side being its *reference*: in ``anderson / bare`` the method is the numerator (Anderson's cost
over bare f), in ``pgd-20 / jiio-80`` it is the denominator (the claim is that JIIO is faster than PGD).

The *slowdown* of a measurement against its baseline is how many times slower the method became relative to its
reference: ``now / baseline`` when the method is the numerator, ``baseline / now`` when it is the denominator.  A
slowdown above ``1 + tolerance`` is a regression; one below ``1 / (1 + tolerance)`` is reported as faster.

The baseline file (``bench/ratio_baseline.json``) holds, per device class (``cpu``, ``cuda``), a default relative
tolerance, the environment it was measured in, and the ratios keyed by :func:`ratio_key`.  An entry may carry its
own ``tolerance``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

OK, REGRESSED, FASTER, NEW = "ok", "REGRESSED", "faster", "new"
DEFAULT_TOLERANCE = 0.5


def ratio_key(group: str, numerator: str, denominator: str) -> str:
    """The baseline key of a ratio: its benchmark group (which names the device and the shapes) and both members.

    The group already pins the problem size of its device class, so a ratio measured at another size gets another
    key (reported as new) instead of being compared with a number it cannot be compared with.
    """
    return f"{group} :: {numerator} / {denominator}"


@dataclass(frozen=True)
class Ratio:
    """One measured ratio: ``numerator / denominator`` in ``group`` on a device of ``device_class``."""

    device_class: str
    group: str
    numerator: str
    denominator: str
    method: str
    value: float

    @property
    def key(self) -> str:
        """The baseline key (see :func:`ratio_key`)."""
        return ratio_key(self.group, self.numerator, self.denominator)

    @property
    def reference(self) -> str:
        """The side that is not the method."""
        return self.denominator if self.method == self.numerator else self.numerator


@dataclass(frozen=True)
class Verdict:
    """A measured ratio set against its baseline entry (``baseline`` is None for a ratio the baseline lacks)."""

    ratio: Ratio
    baseline: float | None
    tolerance: float | None
    slowdown: float | None
    status: str


def slowdown(now: float, baseline: float, method_is_numerator: bool) -> float:
    """How many times slower the method became relative to its reference (above 1: slower, below 1: faster)."""
    if now <= 0 or baseline <= 0:
        raise ValueError(f"ratios must be positive, got now={now} baseline={baseline}")
    return now / baseline if method_is_numerator else baseline / now


def judge(ratio: Ratio, entry: dict[str, Any] | None, default_tolerance: float) -> Verdict:
    """Compare one ratio with its baseline entry (``{"ratio": x, "method": name, "tolerance": t?}`` or None)."""
    if entry is None or entry.get("method", ratio.method) != ratio.method:
        # A baseline measured with the other side as the method cannot say which way is slower: treat as new.
        return Verdict(ratio, None, None, None, NEW)
    base = float(entry["ratio"])
    tolerance = float(entry.get("tolerance", default_tolerance))
    factor = slowdown(ratio.value, base, ratio.method == ratio.numerator)
    if factor > 1.0 + tolerance:
        status = REGRESSED
    elif factor < 1.0 / (1.0 + tolerance):
        status = FASTER
    else:
        status = OK
    return Verdict(ratio, base, tolerance, factor, status)


def compare(measured: Iterable[Ratio], baseline: dict[str, Any]) -> list[Verdict]:
    """Judge every measured ratio against the entry of its device class and key in ``baseline``."""
    devices = baseline.get("devices", {})
    verdicts = []
    for ratio in measured:
        block = devices.get(ratio.device_class, {})
        default = float(block.get("tolerance", DEFAULT_TOLERANCE))
        verdicts.append(judge(ratio, block.get("ratios", {}).get(ratio.key), default))
    return verdicts


def not_measured(measured: Iterable[Ratio], baseline: dict[str, Any]) -> list[tuple[str, str]]:
    """(device class, key) of the baseline entries of the measured device classes that this run did not measure."""
    measured = list(measured)
    seen = {(r.device_class, r.key) for r in measured}
    classes = {r.device_class for r in measured}
    return [(cls, key) for cls in sorted(classes) for key in baseline.get("devices", {}).get(cls, {}).get("ratios", {})
            if (cls, key) not in seen]


def regressions(verdicts: Iterable[Verdict]) -> list[Verdict]:
    """The verdicts that fail the comparison."""
    return [v for v in verdicts if v.status == REGRESSED]


def empty_baseline() -> dict[str, Any]:
    """A baseline with no device classes."""
    return {"devices": {}}


def load_baseline(path: str | Path) -> dict[str, Any]:
    """Read a baseline file; a missing file is an empty baseline (every ratio is then new)."""
    path = Path(path)
    if not path.exists():
        return empty_baseline()
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("devices", {}), dict):
        raise ValueError(f"{path}: not a ratio baseline (expected an object with a 'devices' object)")
    data.setdefault("devices", {})
    return data


def update_baseline(baseline: dict[str, Any], measured: Iterable[Ratio], environments: dict[str, dict[str, Any]],
                    default_tolerance: float = DEFAULT_TOLERANCE) -> dict[str, Any]:
    """A copy of ``baseline`` with the measured ratios written into their device classes.

    Entries this run did not measure are kept (a run of a subset updates that subset); each measured device class
    gets ``environments[class]`` as its environment.  Tolerances already in the file (per class or per entry) stay.
    """
    out = json.loads(json.dumps(baseline))
    devices = out.setdefault("devices", {})
    for ratio in measured:
        block = devices.setdefault(ratio.device_class, {})
        block.setdefault("tolerance", default_tolerance)
        block["environment"] = environments.get(ratio.device_class, {})
        block.pop("note", None)  # a "not measured yet" note no longer applies
        entries = block.setdefault("ratios", {})
        old = entries.get(ratio.key, {})
        entry = {"ratio": round(ratio.value, 4), "method": ratio.method, "reference": ratio.reference}
        if "tolerance" in old:
            entry["tolerance"] = old["tolerance"]
        entries[ratio.key] = entry
    for block in devices.values():
        if "ratios" in block:
            block["ratios"] = dict(sorted(block["ratios"].items()))
    return out


def save_baseline(path: str | Path, baseline: dict[str, Any]) -> None:
    """Write a baseline file (indented, keys in a stable order, trailing newline)."""
    Path(path).write_text(json.dumps(baseline, indent=2) + "\n")


def format_table(verdicts: Iterable[Verdict]) -> list[str]:
    """A plain-text table: ratio, method, baseline, now, slowdown of the method, tolerance, verdict."""
    rows = [("device", "ratio (group :: numerator / denominator)", "method", "baseline", "now", "slowdown",
             "tolerance", "verdict")]
    for v in verdicts:
        r = v.ratio
        rows.append((r.device_class, r.key, r.method, "-" if v.baseline is None else f"{v.baseline:.3f}",
                     f"{r.value:.3f}", "-" if v.slowdown is None else f"{v.slowdown:.2f}x",
                     "-" if v.tolerance is None else f"+{v.tolerance:.0%}", v.status))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        left = [cell.ljust(w) for cell, w in zip(row[:3], widths[:3])]
        right = [cell.rjust(w) for cell, w in zip(row[3:], widths[3:])]
        lines.append("  ".join(left + right).rstrip())
        if n == 0:
            lines.append("-" * len(lines[0]))
    return lines
