"""The diagnostic tools under tools/ run and report what they say they report."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_relative_spread_matches_closed_form():
    probe = _load("jiio_meta_probe")
    rows = torch.tensor([[1.0, 1.0], [3.0, 3.0]])
    # per-feature sd sqrt(2) (norm 2) over a mean (2, 2) of norm 2 sqrt(2)
    assert math.isclose(probe.relative_spread(rows), 1 / math.sqrt(2), rel_tol=1e-6)
    assert probe.relative_change(torch.tensor([3.0, 4.0]) * 1.5, torch.tensor([3.0, 4.0])) == 0.5


def test_jiio_meta_probe_reports_every_measurement_on_the_smoke_profile(capsys):
    probe = _load("jiio_meta_probe")
    for head in ("none", "task"):
        report = probe.main(["--profile", "smoke", "--params", str(ROOT / "params.yaml"), "--tasks", "2",
                             "--adam-steps", "2", "--block-groups", "2", "--pooled-norm", head])
        assert '"support_at_jiio_x"' in capsys.readouterr().out
        assert report["groups"] == {"block_groups": 2, "pooled_norm": head}
        assert math.isclose(report["chance_ce"], math.log(5))
        assert len(report["z_change_for_random_x"]) == len(report["z_spread_over_images"]) == 2
        for key in ("support_at_x0", "support_at_jiio_x", "support_at_adam_x"):
            assert 0.0 <= report[key]["accuracy"] <= 1.0 and math.isfinite(report[key]["ce"])
        assert report["z_change_for_random_x"][0] > 0  # the FiLM layers start non-zero, so x moves z*
