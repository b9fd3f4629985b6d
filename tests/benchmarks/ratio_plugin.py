"""pytest plugin of the speed benchmarks: ratio bookkeeping, the ratio report, and the check against a baseline.

``tests/benchmarks/conftest.py`` registers it (unless a top-level conftest or ``-p tests.benchmarks.ratio_plugin``
already did).  Options (in pytest-benchmark's option group):

``--benchmark-compare-ratios[=PATH]``
    compare every ratio measured in this run with the baseline (default ``bench/ratio_baseline.json``); a ratio
    whose method got slower relative to its reference by more than the tolerance fails the run (exit status 1) and
    prints a table.  Otherwise silent, apart from a note on ratios the baseline lacks.
``--benchmark-save-ratios[=PATH]``
    write the ratios measured in this run into the baseline (their device class's entries; others are kept).

Ratios are measured only when timing runs, so ``--benchmark-disable`` runs neither compare nor save.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from tests.benchmarks import ratios as R

REPO = Path(__file__).resolve().parents[2]
BASELINE = REPO / "bench" / "ratio_baseline.json"
STATE = pytest.StashKey[dict[str, Any]]()


class Recorder:
    """The medians, declared ratios and ``extra_info`` dicts of the benchmarks of one pytest session."""

    def __init__(self) -> None:
        self.medians: dict[str, dict[str, float]] = defaultdict(dict)
        self.declared: list[tuple[str, str, str, str]] = []  # (group, numerator, denominator, method)
        self.extra: dict[tuple[str, str], dict[str, Any]] = {}
        self.device_class: dict[str, str] = {}

    def declare(self, group: str, numerator: str, denominator: str, method: str | None = None) -> None:
        """Declare ``numerator / denominator`` in ``group``; ``method`` (default: the numerator) is the side it is about."""
        method = numerator if method is None else method
        if method not in (numerator, denominator):
            raise ValueError(f"method {method!r} is neither {numerator!r} nor {denominator!r}")
        for g, n, d, m in self.declared:
            if (g, n, d) == (group, numerator, denominator):
                if m != method:
                    raise ValueError(f"{group}: {numerator} / {denominator} declared with methods {m!r} and {method!r}")
                return
        self.declared.append((group, numerator, denominator, method))
        self._complete(group)

    def record(self, group: str, name: str, median: float, device_class: str, extra_info: dict[str, Any]) -> None:
        """Record a benchmark's median; every ratio it completes is written into its members' ``extra_info``."""
        self.medians[group][name] = median
        self.device_class[group] = device_class
        self.extra[(group, name)] = extra_info
        self._complete(group)

    def _complete(self, group: str) -> None:
        # pytest-benchmark keeps a reference to each fixture's extra_info dict and serialises it at session end,
        # so a ratio completed by a later benchmark still reaches the earlier member's saved JSON.
        for ratio in self.ratios():
            if ratio.group != group:
                continue
            info = {"ratio": ratio.value, "method": ratio.method, "reference": ratio.reference,
                    "device_class": ratio.device_class, "baseline_key": ratio.key}
            for member in (ratio.numerator, ratio.denominator):
                self.extra[(group, member)].setdefault("ratios", {})[f"{ratio.numerator} / {ratio.denominator}"] = info

    def ratios(self) -> list[R.Ratio]:
        """The declared ratios both of whose members were timed, in declaration order."""
        out = []
        for group, num, den, method in self.declared:
            medians = self.medians.get(group, {})
            if num in medians and den in medians and medians[den] > 0:
                out.append(R.Ratio(self.device_class[group], group, num, den, method, medians[num] / medians[den]))
        return out


_RECORDERS: list[Recorder] = [Recorder()]


def current() -> Recorder:
    """The recorder of the running pytest session (a pytester run inside a session gets its own)."""
    return _RECORDERS[-1]


def pytest_addoption(parser: pytest.Parser) -> None:
    """The options --benchmark-compare-ratios[=PATH] and --benchmark-save-ratios[=PATH]."""
    group = parser.getgroup("benchmark")
    group.addoption("--benchmark-compare-ratios", dest="deqbench_compare_ratios", nargs="?", const=str(BASELINE),
                    default=None, metavar="PATH",
                    help="fail if a speed ratio regressed beyond tolerance against the baseline "
                         f"(default {BASELINE.relative_to(REPO)}); write it as --benchmark-compare-ratios=PATH "
                         "or after the test paths")
    group.addoption("--benchmark-save-ratios", dest="deqbench_save_ratios", nargs="?", const=str(BASELINE),
                    default=None, metavar="PATH",
                    help="write this run's speed ratios into the baseline, replacing the entries of the "
                         f"device classes measured (default {BASELINE.relative_to(REPO)})")


def _path_option(config: pytest.Config, dest: str, flag: str) -> Path | None:
    """The path of a ratio option; a directory means the option swallowed a test path."""
    value = config.getoption(dest, None)
    if value is None:
        return None
    path = Path(value)
    if path.is_dir() or path.suffix != ".json":
        raise pytest.UsageError(f"{flag} takes a .json path, got {value!r}: write {flag}=PATH, or put {flag} "
                                "after the test paths")
    return path


def pytest_configure(config: pytest.Config) -> None:
    """Start a fresh recorder for this session and check the option values."""
    compare = _path_option(config, "deqbench_compare_ratios", "--benchmark-compare-ratios")
    save = _path_option(config, "deqbench_save_ratios", "--benchmark-save-ratios")
    config.stash[STATE] = {"compare": compare, "save": save, "verdicts": None, "missing": [], "saved": None}
    _RECORDERS.append(Recorder())


def pytest_unconfigure(config: pytest.Config) -> None:
    """Drop this session's recorder."""
    if STATE in config.stash and len(_RECORDERS) > 1:
        _RECORDERS.pop()


def environment(device_class: str) -> dict[str, Any]:
    """Where a baseline was measured: device, versions, threads, commit and date."""
    import torch

    env: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                           "platform": platform.platform(), "torch_threads": torch.get_num_threads(),
                           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "cpu_count": os.cpu_count()}
    if device_class == "cuda" and torch.cuda.is_available():
        env["device"] = torch.cuda.get_device_name()
        env["cuda"] = torch.version.cuda
    else:
        env["device"] = _cpu_model()
    try:
        env["commit"] = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=7"], cwd=REPO,
                                       capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        env["commit"] = None
    env["measured"] = datetime.date.today().isoformat()
    return env


def _cpu_model() -> str:
    """The CPU's model name (platform.processor() is empty on most Linux systems)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Compare with and/or save the baseline; a regression turns a passing run into exit status 1."""
    state = session.config.stash.get(STATE, None)
    measured = current().ratios()
    if state is None or not measured:
        return
    if state["compare"] is not None:
        baseline = R.load_baseline(state["compare"])
        state["verdicts"] = R.compare(measured, baseline)
        state["missing"] = R.not_measured(measured, baseline)
        if R.regressions(state["verdicts"]) and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
    if state["save"] is not None:
        baseline = R.load_baseline(state["save"])
        classes = sorted({r.device_class for r in measured})
        R.save_baseline(state["save"], R.update_baseline(baseline, measured, {c: environment(c) for c in classes}))
        state["saved"] = (len(measured), classes)


def _write_ratios(tr: Any, measured: list[R.Ratio], medians: dict[str, dict[str, float]]) -> None:
    """The side-by-side ratio section, and the JSON of $DEQBENCH_BENCH_JSON."""
    tr.section("deqbench ratios (same process, same device)")
    rows = []
    for r in measured:
        a, b = medians[r.group][r.numerator], medians[r.group][r.denominator]
        rows.append({"group": r.group, "numerator": r.numerator, "denominator": r.denominator, "method": r.method,
                     "device_class": r.device_class, "key": r.key, "numerator_ms": a * 1e3,
                     "denominator_ms": b * 1e3, "ratio": r.value})
        tr.write_line(f"{r.group:<42} {r.numerator:>14} / {r.denominator:<14} = {r.value:7.2f}x"
                      f"   ({a * 1e3:.2f} ms / {b * 1e3:.2f} ms; method {r.method})")
    out = os.environ.get("DEQBENCH_BENCH_JSON")
    if out:
        import torch

        info = {"torch": torch.__version__, "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
        with open(out, "w") as fh:
            json.dump({"environment": info, "ratios": rows, "medians_s": medians}, fh, indent=2)


@pytest.hookimpl(wrapper=True)
def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> Any:
    """Report after every other summary (pytest-benchmark's tables, pytest's short summary), even if one raised."""
    try:
        return (yield)
    finally:
        _report(terminalreporter, config)


def _report(terminalreporter: Any, config: pytest.Config) -> None:
    """Print the ratios, then the baseline check: a table on regression, a note on new ratios, else nothing."""
    recorder = current()
    measured = recorder.ratios()
    state = config.stash.get(STATE, None)
    if not measured:
        quiet = config.getoption("benchmark_disable", False) or config.getoption("collectonly", False)
        if state is not None and (state["compare"] or state["save"]) and not quiet:
            terminalreporter.write_line("deqbench ratios: no ratio was measured, nothing compared or saved",
                                        yellow=True)
        return
    tr = terminalreporter
    _write_ratios(tr, measured, recorder.medians)
    if state is None:
        return
    verdicts = state["verdicts"]
    if verdicts is not None:
        failed = R.regressions(verdicts)
        new = [v for v in verdicts if v.status == R.NEW]
        if failed:
            tr.section(f"deqbench ratio regressions against {state['compare']}", red=True, bold=True)
            tr.write_line("slowdown: how many times slower the method became relative to its reference "
                          "(now/baseline when the method is the numerator, baseline/now when it is the denominator)")
            for line in R.format_table(verdicts):
                tr.write_line(line)
            if state["missing"]:
                tr.write_line(f"({len(state['missing'])} baseline ratio(s) of these device classes not run)")
            names = ", ".join(v.ratio.key for v in failed)
            tr.write_line(f"{len(failed)} ratio(s) regressed beyond tolerance (exit status 1): {names}", red=True, bold=True)
        elif new:
            tr.write_line(f"deqbench ratios: nothing regressed; {len(new)} ratio(s) not in {state['compare']} "
                          "(new, not compared): " + ", ".join(f"{v.ratio.device_class}: {v.ratio.key}" for v in new))
    if state["saved"] is not None:
        count, classes = state["saved"]
        tr.write_line(f"deqbench ratios: wrote {count} ratio(s) of {', '.join(classes)} to {state['save']}")
