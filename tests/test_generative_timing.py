"""Table 3 over distinct test images, Figure 3 from a tracing run and Figure 4 (accelerators inside JIIO) on the
smoke profile's tiny models, on the CPU."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from deqbench.experiments import cli
from deqbench.experiments.config import deep_merge, load_profile
from deqbench.experiments.io import atomic_torch_save
from deqbench.tasks.jiio_generative import TASK, acceleration, methods, task, timing

CPU = torch.device("cpu")
REPO = Path(__file__).resolve().parents[1]


def settings(**block):
    return TASK.settings(deep_merge(load_profile(REPO / "params.yaml", "smoke"), {"jiio_generative": block}))


@pytest.fixture(scope="module")
def faces():
    return task.prepare_faces(settings().prepare())


def test_distinct_batches_are_bounded_by_the_limit_and_the_test_set():
    test = torch.arange(5, dtype=torch.uint8).view(5, 1, 1, 1).expand(5, 1, 2, 2).contiguous()
    ids = lambda b: [int((t[0, 0, 0] + 1) * 127.5 + 0.5) for t in b]  # image index, back from the model range
    batches, n = timing.distinct_batches(test, 1, 200, CPU)
    assert n == 5 and [ids(b) for b in batches] == [[0], [1], [2], [3], [4]]
    batches, n = timing.distinct_batches(test, 2, 5, CPU)
    assert n == 4 and [ids(b) for b in batches] == [[0, 1], [2, 3]]  # whole batches only
    batches, n = timing.distinct_batches(test, 4, 3, CPU)
    assert n == 3 and [ids(b) for b in batches] == [[0, 1, 2, 0]]  # fewer images than one batch: repeats


def test_batch1_timing_visits_distinct_examples_and_figure3_is_traced(faces, monkeypatch):
    job = settings(timing={"batch_sizes": [1], "distinct_examples": 3, "repeats": 1, "warmup": 0,
                           "trace_batch": 1}).timing()
    seen: list[tuple[str, torch.Tensor]] = []
    real_run = timing._run

    def spy(model, clean, solve):
        seen.append((type(solve).__name__ + str(getattr(solve, "iterations", "")), clean.clone()))
        return real_run(model, clean, solve)

    monkeypatch.setattr(timing, "_run", spy)
    out = timing.time_methods(job, None, faces, CPU, progress=False)
    names = ["adam3", "jiio40", "jiio12"]
    assert [r["method"] for r in out["rows"]] == names
    for row in out["rows"]:
        assert row["distinct_examples"] == 3 and row["calls"] == 3 and len(row["samples_ms"]) == 3
        assert row["ms_per_example"] > 0 and row["ms_per_example_std"] >= 0
    timed = seen[:9]  # three calls, the methods interleaved on each image
    assert [n for n, _ in timed] == ["AdamSolve", "JIIOSolve40", "JIIOSolve12"] * 3
    images = methods.to_model_range(faces["test"][:3], CPU)
    for i, (_, clean) in enumerate(timed):
        assert clean.shape[0] == 1 and torch.equal(clean[0], images[i // 3])
    # Figure 3: a separate traced run per method, real increasing timestamps, one point per iteration.
    assert len(seen) == 9 + 2  # one panel (no JIIO-100 checkpoint): Adam and JIIO-40
    for method, iters in (("adam3", 3), ("jiio40", 40)):
        pts = [c for c in out["figure3"] if c["method"] == method]
        assert [p["iteration"] for p in pts] == list(range(1, iters + 1))
        assert all(b["seconds"] > a["seconds"] for a, b in zip(pts, pts[1:]))
    assert {r["method"]: r["iterations"] for r in out["figure3_runs"]} == {"adam3": 3, "jiio40": 40}


def test_accelerated_jiio_with_type_I_is_the_reconstruction_jiio(faces):
    """Figure 4's Anderson Type-I run is exactly the JIIO the tables use (same set-up, same accelerator)."""
    gen = settings()
    job = gen.acceleration()
    assert job.jiio.anderson_kind == "I"
    torch.manual_seed(0)
    decoder = methods.generator_of(methods.build_model(job.arch, 1)).eval()
    clean = methods.to_model_range(faces["test"][:2], CPU)
    with torch.no_grad():
        ours = acceleration.jiio_accelerated(decoder, clean, job.jiio, "anderson_I")
        ref = methods.jiio_reconstruct(decoder, clean, None, job.jiio)
    assert torch.equal(ours.trace_cost, ref.trace_cost) and torch.equal(ours.x, ref.x)


def test_figure4_stage_and_table_give_one_curve_per_accelerator(faces, tmp_path):
    gen = settings()
    data, ckpt = tmp_path / "faces.pt", tmp_path / "mdeq_vae.pt"
    atomic_torch_save(data, faces)
    task.train(gen.train("mdeq_vae", "reconstruct"), faces, 0, ckpt, tmp_path / "p.pt", CPU, progress=False)
    common = ["--params", str(REPO / "params.yaml"), "--profile", "smoke", "--threads", "1", "--no-progress"]
    result = tmp_path / "acceleration.json"
    assert cli.main([*common, "jiio_generative", "acceleration", "--data", str(data), "--checkpoint", str(ckpt),
                     "--out", str(result)]) == 0
    out_csv = tmp_path / "results" / "figure4.csv"
    assert cli.main([*common, "jiio_generative", "table", "figure4", str(result), "--out", str(out_csv)]) == 0
    rows = list(csv.DictReader(out_csv.open()))
    iterations = gen.params.jiio.test_iterations
    assert list(rows[0])[:4] == ["solver", "iteration", "cost", "kkt_residual"]
    assert list(dict.fromkeys(r["solver"] for r in rows)) == ["broyden", "anderson_I", "anderson_II"]
    for solver in acceleration.ACCELERATORS:
        curve = [r for r in rows if r["solver"] == solver]
        assert [int(r["iteration"]) for r in curve] == list(range(1, iterations + 1))
        assert all(float(r["cost"]) > 0 and float(r["kkt_residual"]) > 0 for r in curve)
        assert {r["final_cost"] for r in curve} == {curve[-1]["cost"]}  # the per-solver summary on every row
        assert float(curve[0]["best_cost"]) <= float(curve[0]["cost"]) + 1e-9
        assert curve[0]["n_images"] == str(gen.params.acceleration.images)
        assert "embedded stand-in" in curve[0]["data_source"]
    assert (tmp_path / "results" / "figure4.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    prov = json.loads((tmp_path / "results" / "figure4.provenance.json").read_text())
    assert "embedded stand-in" in prov["caption"] and prov["inputs"]["model"] == "mdeq_vae"
    metrics = json.loads((tmp_path / "results" / "metrics" / "figure4.json").read_text())
    assert {f"{s}/final_cost" for s in acceleration.ACCELERATORS} <= set(metrics)
