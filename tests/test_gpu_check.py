"""bench/gpu_check.py's report logic (no GPU needed): Table 2 headlines per engineering level, merging runs."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _attack_row(method: str, engineering: str, batch: int, ms: float, ratio: float) -> dict:
    return {"method": method, "iterations": 80 if method == "jio" else 20, "engineering": engineering,
            "batch_size": batch, "ms_per_example": ms, "pgd_over_jio": ratio}


def _run(path: Path, sections: dict, headlines: list[dict], device: str = "GPU X") -> Path:
    path.mkdir()
    (path / "gpu_check.json").write_text(json.dumps(
        {"environment": {"device": device, "git_revision": "abc"}, "sections": sections, "headlines": headlines}))
    return path


def test_merge_keeps_one_row_per_measurement_and_splits_graphed_from_eager(gpu_check, tmp_path):
    table2 = {"modes": {"full": [_attack_row("pgd", "eager", 96, 18.0, 3.0), _attack_row("jio", "eager", 96, 6.0, 3.0),
                                 _attack_row("pgd", "graphed", 96, 17.0, 5.7),
                                 _attack_row("jio", "graphed", 96, 3.0, 5.7)]}}
    # the first run's stored table2 rows were wrong (eager under the graphed name); --merge re-derives them
    stale = [{"measurement": "table2 jiio-80 ms/example batch 96", "value": 6.0, "unit": "ms", "target": "",
              "met": "", "note": ""}]
    meta = [{"measurement": "meta Adam-20 / JIIO-100 batch 20 tasks", "value": 5.4, "unit": "x", "target": "",
             "met": "", "note": ""}]
    overhead = [{"measurement": "overhead anderson / bare conv", "value": 1.7, "unit": "x", "target": "<= 1.5",
                 "met": "false", "note": ""}]
    first = _run(tmp_path / "a", {"table2": table2, "meta": {}}, stale + meta)
    second = _run(tmp_path / "b", {"overhead": {}}, overhead)
    assert gpu_check.merge_runs([first, second], tmp_path / "out") == 0
    with (tmp_path / "out" / "gpu_check.csv").open() as fh:
        rows = {r["measurement"]: r for r in csv.DictReader(fh)}
    assert float(rows["table2 jiio-80 ms/example batch 96"]["value"]) == 3.0
    assert rows["table2 jiio-80 ms/example batch 96"]["met"] == "false"  # target <= 2.5
    assert float(rows["table2 jiio-80 ms/example batch 96 eager"]["value"]) == 6.0
    assert float(rows["table2 pgd-20 / jiio-80 batch 96"]["value"]) == 5.7
    assert float(rows["meta Adam-20 / JIIO-100 batch 20 tasks"]["value"]) == 5.4
    assert float(rows["overhead anderson / bare conv"]["value"]) == 1.7
    merged = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert set(merged["sections"]) == {"table2", "meta", "overhead"} and len(merged["runs"]) == 2


def test_merge_refuses_runs_from_different_devices(gpu_check, tmp_path):
    first = _run(tmp_path / "a", {}, [], device="GPU X")
    second = _run(tmp_path / "b", {}, [], device="GPU Y")
    assert gpu_check.merge_runs([first, second], tmp_path / "out") == 2
    assert not (tmp_path / "out" / "gpu_check.csv").exists()
