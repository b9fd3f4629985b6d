"""The speed-ratio baseline check of the benchmarks: its pure logic, and a tiny benchmark run through the plugin
(saved, compared unchanged, and compared with a sleep injected into the method) with pytester."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.benchmarks import ratios as R

pytest_plugins = ["pytester"]

BASELINE = Path(__file__).resolve().parents[1] / "bench" / "ratio_baseline.json"


def _ratio(value: float, method: str = "num", group: str = "g cpu", device_class: str = "cpu") -> R.Ratio:
    """A measured ``num / den`` ratio."""
    return R.Ratio(device_class, group, "num", "den", method, value)


def _baseline(value: float, method: str = "num", tolerance: float = 0.5, entry_tolerance: float | None = None) -> dict:
    """A CPU baseline with one entry, ``g cpu :: num / den``, and the device class's tolerance."""
    entry = {"ratio": value, "method": method}
    if entry_tolerance is not None:
        entry["tolerance"] = entry_tolerance
    return {"devices": {"cpu": {"tolerance": tolerance, "ratios": {R.ratio_key("g cpu", "num", "den"): entry}}}}


@pytest.mark.parametrize("method, now, status", [
    ("num", 2.0, R.OK), ("num", 2.9, R.OK), ("num", 3.1, R.REGRESSED), ("num", 1.3, R.FASTER),
    ("den", 2.0, R.OK), ("den", 1.4, R.OK), ("den", 1.3, R.REGRESSED), ("den", 3.1, R.FASTER),
])
def test_direction_follows_the_method(method, now, status):
    """Method in the numerator: a larger ratio is slower; in the denominator: a smaller one (tolerance 50 %)."""
    (verdict,) = R.compare([_ratio(now, method)], _baseline(2.0, method))
    assert verdict.status == status
    expected = now / 2.0 if method == "num" else 2.0 / now
    assert verdict.slowdown == pytest.approx(expected)


def test_tolerance_per_entry_overrides_the_device_class():
    assert R.compare([_ratio(2.5)], _baseline(2.0, tolerance=0.5))[0].status == R.OK
    (verdict,) = R.compare([_ratio(2.5)], _baseline(2.0, tolerance=0.5, entry_tolerance=0.1))
    assert verdict.status == R.REGRESSED and verdict.tolerance == 0.1


def test_new_ratios_are_reported_not_failed():
    baseline = _baseline(2.0)
    verdicts = R.compare([_ratio(9.0, group="other cpu"), _ratio(9.0, device_class="cuda"), _ratio(9.0, method="den")],
                         baseline)
    # another group, a device class the baseline lacks, and a baseline taken with the other side as the method
    assert [v.status for v in verdicts] == [R.NEW, R.NEW, R.NEW]
    assert R.regressions(verdicts) == []
    assert R.compare([_ratio(9.0)], R.empty_baseline())[0].status == R.NEW


def test_not_measured_lists_baseline_entries_of_measured_classes_only():
    baseline = _baseline(2.0)
    baseline["devices"]["cuda"] = {"ratios": {"x cuda :: a / b": {"ratio": 1.0, "method": "a"}}}
    assert R.not_measured([_ratio(1.0, group="other cpu")], baseline) == [("cpu", R.ratio_key("g cpu", "num", "den"))]
    assert R.not_measured([_ratio(1.0)], baseline) == []


def test_update_keeps_other_entries_tolerances_and_notes(tmp_path):
    baseline = _baseline(2.0, tolerance=0.7, entry_tolerance=0.2)
    baseline["devices"]["cpu"]["ratios"]["kept cpu :: a / b"] = {"ratio": 1.0, "method": "a"}
    baseline["devices"]["cuda"] = {"tolerance": 0.3, "note": "not measured yet", "ratios": {}}
    updated = R.update_baseline(baseline, [_ratio(3.0)], {"cpu": {"device": "test"}})
    cpu = updated["devices"]["cpu"]
    assert cpu["tolerance"] == 0.7 and cpu["environment"] == {"device": "test"}
    assert cpu["ratios"][R.ratio_key("g cpu", "num", "den")] == {"ratio": 3.0, "method": "num", "reference": "den",
                                                                 "tolerance": 0.2}
    assert "kept cpu :: a / b" in cpu["ratios"]
    assert updated["devices"]["cuda"]["note"] == "not measured yet"
    assert baseline["devices"]["cpu"]["ratios"][R.ratio_key("g cpu", "num", "den")]["ratio"] == 2.0  # a copy
    path = tmp_path / "b.json"
    R.save_baseline(path, updated)
    assert R.load_baseline(path) == updated
    assert R.load_baseline(tmp_path / "missing.json") == R.empty_baseline()


def test_table_names_every_column():
    verdicts = R.compare([_ratio(3.5), _ratio(1.0, group="new cpu")], _baseline(2.0))
    table = "\n".join(R.format_table(verdicts))
    for text in ("g cpu :: num / den", "2.000", "3.500", "1.75x", "+50%", R.REGRESSED, "new cpu :: num / den", R.NEW):
        assert text in table


def test_committed_baseline_is_well_formed():
    """Every committed entry names its method (one of the two members) and has a positive ratio and a tolerance."""
    baseline = R.load_baseline(BASELINE)
    assert set(baseline["devices"]) >= {"cpu", "cuda"}
    assert baseline["devices"]["cpu"]["ratios"], "the CPU baseline is empty"
    for block in baseline["devices"].values():
        assert 0 < block["tolerance"]
        for key, entry in block["ratios"].items():
            numerator, denominator = key.split(" :: ")[1].split(" / ")
            assert entry["method"] in (numerator, denominator) and entry["ratio"] > 0, key


TINY = '''
import os
import time

from tests.benchmarks.conftest import expect_ratio, run_benchmark

GROUP = "tiny loop cpu"


def work(n=20000):
    total = 0
    for i in range(n):
        total += i
    return total


def method():
    delay = float(os.environ.get("TINY_SLEEP", "0"))
    if delay:
        time.sleep(delay)  # the injected slowdown
    return work()


def test_bare(benchmark):
    run_benchmark(benchmark, GROUP, "bare", work, "cpu", rounds=5)


def test_old(benchmark):
    run_benchmark(benchmark, GROUP, "old", lambda: work(80000), "cpu", rounds=5)


def test_method(benchmark):
    expect_ratio(GROUP, "method", "bare")  # the method is the numerator
    expect_ratio(GROUP, "old", "method", method="method")  # ... and here the denominator
    run_benchmark(benchmark, GROUP, "method", method, "cpu", rounds=5)
'''


def test_injected_slowdown_is_reported_as_a_regression(pytester, monkeypatch):
    """Save a baseline, compare an unchanged run (silent, exit 0), then one whose method sleeps (table, exit 1)."""
    pytester.makeconftest('pytest_plugins = ["tests.benchmarks.ratio_plugin"]\n')
    pytester.makepyfile(test_tiny=TINY)
    baseline = pytester.path / "baseline.json"
    args = ["--benchmark-only", "-p", "no:cacheprovider", "-q"]
    monkeypatch.delenv("TINY_SLEEP", raising=False)
    monkeypatch.delenv("DEQBENCH_BENCH_JSON", raising=False)

    saved = pytester.runpytest(*args, f"--benchmark-save-ratios={baseline}", "--benchmark-json=bench.json")
    assert saved.ret == 0, saved.stdout.str()
    data = json.loads(baseline.read_text())
    entries = data["devices"]["cpu"]["ratios"]
    assert set(entries) == {"tiny loop cpu :: method / bare", "tiny loop cpu :: old / method"}
    assert entries["tiny loop cpu :: old / method"]["method"] == "method"
    # the ratios are in pytest-benchmark's own JSON, in every member's extra_info
    saved_json = {b["name"]: b["extra_info"] for b in json.loads((pytester.path / "bench.json").read_text())["benchmarks"]}
    assert set(saved_json["test_method"]["ratios"]) == {"method / bare", "old / method"}
    assert set(saved_json["test_bare"]["ratios"]) == {"method / bare"}
    assert saved_json["test_old"]["ratios"]["old / method"]["ratio"] == pytest.approx(
        entries["tiny loop cpu :: old / method"]["ratio"], rel=1e-3)
    # a wide tolerance, so that only the injected sleep (tens of times the work) can fail this test on a loaded machine
    data["devices"]["cpu"]["tolerance"] = 5.0
    baseline.write_text(json.dumps(data))

    same = pytester.runpytest(*args, f"--benchmark-compare-ratios={baseline}")
    assert same.ret == 0, same.stdout.str()
    assert "REGRESSED" not in same.stdout.str() and "regress" not in same.stdout.str()

    monkeypatch.setenv("TINY_SLEEP", "0.05")
    slow = pytester.runpytest(*args, f"--benchmark-compare-ratios={baseline}")
    out = slow.stdout.str()
    assert slow.ret == 1, out
    assert "deqbench ratio regressions against" in out
    assert "2 ratio(s) regressed beyond tolerance" in out
    for key in ("tiny loop cpu :: method / bare", "tiny loop cpu :: old / method"):
        assert any(key in line and "REGRESSED" in line for line in out.splitlines()), key


def test_disabled_benchmarks_compare_nothing(pytester, monkeypatch):
    """Under --benchmark-disable nothing is timed, so a comparison with a baseline the run would fail is skipped."""
    pytester.makeconftest('pytest_plugins = ["tests.benchmarks.ratio_plugin"]\n')
    pytester.makepyfile(test_tiny=TINY)
    baseline = pytester.path / "baseline.json"
    key = "tiny loop cpu :: method / bare"
    baseline.write_text(json.dumps({"devices": {"cpu": {"tolerance": 0.01, "ratios": {key: {"ratio": 1e-6, "method": "method"}}}}}))
    monkeypatch.setenv("TINY_SLEEP", "0.01")
    result = pytester.runpytest("--benchmark-disable", "-p", "no:cacheprovider", "-q",
                                f"--benchmark-compare-ratios={baseline}")
    assert result.ret == 0, result.stdout.str()
    assert "REGRESSED" not in result.stdout.str() and "deqbench ratios" not in result.stdout.str()


def test_a_path_swallowed_by_the_option_is_a_usage_error(pytester):
    pytester.makeconftest('pytest_plugins = ["tests.benchmarks.ratio_plugin"]\n')
    pytester.makepyfile(test_tiny=TINY)
    pytester.mkdir("sub")
    result = pytester.runpytest("-p", "no:cacheprovider", "--benchmark-compare-ratios", "sub")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--benchmark-compare-ratios=PATH" in result.stderr.str() + result.stdout.str()
