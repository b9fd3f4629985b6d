"""MOptEqs Figure 2 (Average D / H, channel heatmaps) and Figure 3(a) (perturbation direction): computation on tiny
untrained models, and the table specs' build, draw and metrics (deqbench.tasks.moptqs.analysis)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from deqbench.experiments.tables import write_table
from deqbench.models.moptqs import MOptEqs, MOptEqsConfig
from deqbench.tasks.moptqs import analysis
from deqbench.tasks.moptqs.settings import ModelParams, TableJob

SOLVE = {"solver": "anderson", "max_iter": 30, "tol": 1e-4, "solver_options": {"m": 5}, "backward": "none"}
EPS = (0.0, 0.1, 0.3)


@pytest.fixture(autouse=True)
def _single_thread(single_thread):
    """Every test here uses tiny tensors (conftest.single_thread)."""


def tiny(**kw) -> MOptEqs:
    """An untrained C = 4, 8 px single-view model in eval mode, PE off."""
    base = dict(channels=4, image_size=8, pe_eps=0.0, head_pool=2, head_hidden=0, branches=3, lam=0.05)
    base.update(kw)
    torch.manual_seed(0)
    return MOptEqs(MOptEqsConfig(**base)).eval()


def params(label: str, coupling: str) -> ModelParams:
    return ModelParams(label=label, layout="single_view", branches=3, channels=4, coupling=coupling)


def job(table: str, *models: tuple[str, ModelParams]) -> TableJob:
    return TableJob(table=table, rows=tuple(("cifar10", key, m) for key, m in models), seeds=(0,), profile="smoke",
                    scale="reduced")


@pytest.fixture(scope="module")
def data() -> dict:
    gen = torch.Generator().manual_seed(1)
    images, labels = torch.rand(6, 3, 8, 8, generator=gen), torch.randint(0, 10, (6,), generator=gen)
    return {"test": {"images": images, "labels": labels},
            "meta": {"name": "tiny", "stand_in_for": "cifar10"}}


def write(path: Path, record: dict) -> str:
    path.write_text(json.dumps(record))
    return str(path)


# ----------------------------------------------------------------------------- Figure 2


def test_dh_statistics_rows_and_heatmaps(data):
    models = [("m", "MOptEqs", tiny()), ("p", "POptEqs", tiny(coupling="none"))]
    out = analysis.run_figure2_data(models, data, 4, 30, torch.device("cpu"))
    assert out["data_source"] == "tiny (embedded stand-in for cifar10)" and out["n_samples"] == 4
    assert [(r["model_key"], r["sample"]) for r in out["rows"]] == [(k, s) for k in "mp" for s in range(4)]
    for r in out["rows"]:
        assert all(math.isfinite(r[c]) for c in ("average_d", "average_h", "average_d_raw", "average_h_raw"))
        assert 0 <= r["average_d"] <= 1 + 1e-6 and abs(r["average_h"]) <= 1 + 1e-6  # sums of cosines / (L C^2), (L C)
    for key in "mp":
        heat = torch.tensor(out["heatmaps"][key])
        assert heat.shape == (4, 4) and float(heat.min()) >= 0 and float(heat.max()) <= 1 + 1e-6
        assert torch.tensor(out["heatmaps_raw"][key]).shape == (4, 4)
    json.dumps(out)
    subset = analysis.run_figure2_data(models, data, 3, 30, torch.device("cpu"), seed=5)
    assert len(subset["test_indices"]) == 3 and subset["test_indices"] == \
        analysis.run_figure2_data(models, data, 3, 30, torch.device("cpu"), seed=5)["test_indices"]


def test_refuses_training_mode_one_branch_and_pe_at_test():
    images = torch.rand(2, 3, 8, 8)
    with pytest.raises(ValueError, match="pe_at_eval"):
        analysis.perturbation_curves(tiny(pe_eps=0.1, pe_at_eval=True), images, torch.zeros(2), (0.1,), 1, 0, SOLVE)
    with pytest.raises(ValueError, match="eval mode"):
        analysis.dh_statistics([("m", "MOptEqs", tiny().train())], images, 10)
    with pytest.raises(ValueError, match="one branch"):
        analysis.dh_statistics([("m", "MOptEqs", tiny(branches=1))], images, 10)


def test_figure2_build_draw_metrics(data, tmp_path):
    models = [("m", "MOptEqs", tiny()), ("p", "POptEqs", tiny(coupling="none"))]
    out = analysis.run_figure2_data(models, data, 3, 30, torch.device("cpu"))
    f = write(tmp_path / "fig2.json", out)
    spec_job = job("moptqs_figure2", ("m", params("MOptEqs", "hhd")), ("p", params("POptEqs", "none")))
    built = analysis.FIGURE2.build(spec_job, [f])
    kinds = [r["kind"] for r in built.rows]
    assert kinds.count("mean") == 2 and kinds.count("sample") == 6 and kinds.count("heatmap") == 2 * 16
    cell = next(r for r in built.rows if (r["kind"], r["model_key"], r.get("i"), r.get("j")) == ("heatmap", "p", 1, 2))
    assert cell["value"] == out["heatmaps"]["p"][1][2] and cell["value_raw"] == out["heatmaps_raw"]["p"][1][2]
    mean = next(r for r in built.rows if r["kind"] == "mean" and r["model_key"] == "m")
    assert math.isclose(mean["average_h"], sum(r["average_h"] for r in out["rows"] if r["model_key"] == "m") / 3)
    outputs = write_table(analysis.FIGURE2, built, tmp_path / "moptqs_figure2.csv", {"profile": "smoke"})
    assert outputs["png"].stat().st_size > 0
    metrics = json.loads(outputs["metrics"].read_text())
    assert set(metrics) >= {"m", "p"} and metrics["m"]["diagonal_dominance"] > 0
    assert analysis.diagonal_dominance([[1.0, 0.5], [0.25, 1.0]]) == pytest.approx(1 / 0.375)
    with pytest.raises(Exception, match="differ from the declared"):
        analysis.FIGURE2.build(job("moptqs_figure2", ("m", params("MOptEqs", "hhd"))), [f])


# ----------------------------------------------------------------------------- Figure 3(a)


def test_perturbation_deltas():
    model, images = tiny(branches=1), torch.rand(3, 3, 8, 8)
    delta = analysis.reconstructed_delta(model, images, 0.2, SOLVE)
    assert delta.shape == model.inject(images).features.shape
    assert torch.all((delta == 0) | (delta.abs() == torch.tensor(0.2, dtype=delta.dtype))) and bool(delta.any())
    gen = torch.Generator().manual_seed(0)
    binomial = analysis.random_feature_delta("binomial", 0.2, delta.shape, gen)
    uniform = analysis.random_feature_delta("uniform", 0.2, delta.shape, gen)
    assert set(binomial.unique().tolist()) == {-0.2, 0.2}
    assert float(uniform.abs().max()) <= 0.2 and len(uniform.unique()) > 10
    with pytest.raises(ValueError, match="unknown random perturbation"):
        analysis.random_feature_delta("gauss", 0.2, delta.shape, gen)


def test_perturbation_curves_clean_at_zero_deterministic_and_reconstructed_subtracted(data, monkeypatch):
    model = tiny(branches=1)
    images, labels = data["test"]["images"], data["test"]["labels"]
    rows = analysis.perturbation_curves(model, images, labels, EPS, 2, 7, SOLVE, batch_size=4)
    assert len(rows) == 3 * len(EPS) and all(r["n"] == 6 for r in rows)
    clean = {r["accuracy"] for r in rows if r["eps"] == 0}
    assert len(clean) == 1
    assert {r["trials"] for r in rows if r["eps"] > 0 and r["kind"] != "reconstructed"} == {2}
    assert rows == analysis.perturbation_curves(model, images, labels, EPS, 2, 7, SOLVE, batch_size=4)
    deltas = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda x, feature_delta=None, **kw: (
        deltas.append(feature_delta), forward(x, feature_delta=feature_delta, **kw))[1])
    analysis.perturbation_curves(model, images[:2], labels[:2], (0.1,), 1, 0, SOLVE)
    expected = -analysis.reconstructed_delta(model, images[:2], 0.1, SOLVE)
    assert deltas[0] is None and torch.equal(deltas[1], expected)  # clean, then g(x) - delta
    assert all(float(d.abs().max()) <= 0.1 + 1e-6 for d in deltas[1:])


def test_figure3a_build_draw_metrics(data, tmp_path):
    model = tiny(branches=1)
    out = analysis.run_figure3a_data(model, data, EPS, 2, 7, SOLVE, 5, torch.device("cpu"), model_key="one",
                                     label="MOptEqs (one branch)")
    assert out["n"] == 5 and out["data_source"].startswith("tiny")
    f = write(tmp_path / "fig3a.json", out)
    built = analysis.FIGURE3A.build(job("moptqs_figure3a", ("one", params("MOptEqs", "hhd"))), [f])
    recon = [r for r in built.rows if r["kind"] == "reconstructed" and r["eps"] > 0]
    assert all("drop_vs_random" in r for r in recon)
    drop = next(r for r in built.rows if r["kind"] == "min_drop")
    assert drop["drop_vs_random"] == min(r["drop_vs_random"] for r in recon)
    outputs = write_table(analysis.FIGURE3A, built, tmp_path / "moptqs_figure3a.csv", {"profile": "smoke"})
    assert outputs["png"].stat().st_size > 0
    metrics = json.loads(outputs["metrics"].read_text())
    assert {"reconstructed", "binomial", "uniform"} <= set(metrics)
    assert all(metrics[k]["eps"] == 0.3 for k in analysis.KINDS)
    assert metrics["min_drop_vs_random"] == drop["drop_vs_random"]
    assert "MOptEqs (one branch) on 5 test images" in json.loads(outputs["provenance"].read_text())["caption"]
