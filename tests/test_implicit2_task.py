"""The (Implicit)^2 task (deqbench.tasks.implicit2): settings and their errors, the PSNR of spec C.3, paired init,
every stage on tiny settings, and the table builders' means / std / paired differences from per-run results."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from deqbench.experiments.config import ConfigError, deep_merge, load_profile
from deqbench.experiments.tables import write_table
from deqbench.tasks.implicit2 import TASK, cost, task
from deqbench.tasks.implicit2.settings import model_config
from deqbench.tasks.implicit2.tables import PAPER_IMAGES, PAPER_VIDEO, TABLES
from deqbench.data.implicit2 import make_coordinate_image
from deqbench.tasks.implicit2.training import build_model, psnr, psnr_from_mse, trivial_baselines

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
CPU = torch.device("cpu")
SPECS = {spec.name: spec for spec in TABLES}


def settings(profile: str = "smoke", **block: Any):
    """The implicit2 settings of ``profile`` with ``block`` merged into its implicit2 block."""
    return TASK.settings(deep_merge(load_profile(PARAMS, profile), {"implicit2": block}))


TINY = dict(data={"resolution": 8}, train={"steps": 2, "log_every": 1},
            generalization={"sizes": {"1L-256D": "1L-4D", "1L-512D": "1L-8D", "4L-256D": "2L-4D"}})


def test_psnr_is_the_spec_formula_with_clipping():
    target = torch.full((10, 3), 0.3)
    assert math.isclose(float(psnr(torch.zeros(10, 3), target)), -10 * math.log10(0.2**2), rel_tol=1e-6)
    # (y_hat + 1) / 2 is clipped to [0, 1]: a prediction of 3 scores as 1
    assert math.isclose(float(psnr(torch.full((10, 3), 3.0), target)), -10 * math.log10(0.7**2), rel_tol=1e-6)
    assert math.isclose(psnr_from_mse(0.04), -10 * math.log10(0.01))  # model-range MSE / 4


def test_trivial_baselines_closed_forms():
    """A constant image is exact for every baseline (the 100 dB floor); on a ramp along the columns, bilinear
    is exact except in the last test column (edge repeated: error one train step) and nearest is off by one pixel."""
    flat = trivial_baselines(make_coordinate_image(np.full((8, 8, 3), 0.4), name="flat", set_name="t", source="t"))
    assert flat == pytest.approx({"mean_colour": 100.0, "nearest": 100.0, "bilinear": 100.0})
    ramp = np.broadcast_to((np.arange(8) / 10.0)[None, :, None], (8, 8, 3)).copy()
    scores = trivial_baselines(make_coordinate_image(ramp, name="ramp", set_name="t", source="t"))
    # nearest: every test pixel is 0.1 off; bilinear: only the last of 4 test columns, 0.1 off
    assert scores["nearest"] == pytest.approx(-10 * math.log10(0.01), rel=1e-5)
    assert scores["bilinear"] == pytest.approx(-10 * math.log10(0.01 / 4), rel=1e-5)
    assert scores["mean_colour"] < scores["nearest"]


def test_every_profile_builds_and_maps_the_paper_sizes():
    for name, sizes in (("paper", ("1L-256D", "1L-512D", "4L-256D")), ("embedded", ("1L-64D", "1L-128D", "4L-64D"))):
        s = settings(name)
        assert tuple(s.params.generalization.sizes) == ("1L-256D", "1L-512D", "4L-256D")
        assert tuple(s.params.generalization.sizes.values()) == sizes
        assert s.params.gradient_order.orders == (0, 1, 2, 5, "inf")
    paper = settings("paper").params
    assert (paper.data.source, paper.data.resolution, paper.train.steps, paper.train.lr) == ("paper", 512, 2000, 1e-3)
    assert (paper.model.input_scale, paper.solver.method, paper.solver.tol) == (128.0, "forward", 0.01)
    assert (paper.video.norm, paper.video.grad_clip_value, paper.video.batch_size) == ("none", 0.1, 65536)
    embedded = settings("embedded").params
    assert (embedded.data.source, embedded.data.resolution, embedded.model.input_scale) == ("embedded", 128, 32.0)


@pytest.mark.parametrize("block, message", [
    ({"data": {"resolution": 15}}, r"implicit2\.data\.resolution: R must be even"),
    ({"data": {"images": 6}}, r"implicit2\.data\.images: the embedded stand-ins have"),
    ({"generalization": {"sizes": {"1L-64D": "1L-8D"}}}, r"implicit2\.generalization\.sizes: keys must be"),
    ({"generalization": {"sizes": {"1L-256D": "1L-8X", "1L-512D": "1L-16D", "4L-256D": "4L-8D"}}},
     r"implicit2\.generalization\.sizes\.1L-256D: bad size tag '1L-8X'"),
    ({"pictures": {"size": "2L-256D"}}, r"implicit2\.pictures\.size: '2L-256D' is not a paper tag"),
    ({"amortization": {"images": [0, 3]}}, r"implicit2\.amortization\.images: indices must be below"),
    ({"gradient_order": {"orders": [1, 1]}}, r"implicit2\.gradient_order\.orders: must be a non-empty list"),
    ({"video": {"frames": 9}}, r"implicit2\.video: 9 frames of 8 px"),
    ({"train": {"amortize_iters": 0}}, r"implicit2\.train\.amortize_iters"),
])
def test_bad_settings_fail_naming_the_key(block, message):
    with pytest.raises(ConfigError, match=message):
        settings(**block)


def test_schema_rejects_bad_values_naming_the_key():
    from deqbench.experiments.config import load_params, resolve_profile

    params = load_params(PARAMS)
    params["profiles"]["smoke"]["implicit2"]["gradient_order"]["orders"] = [1, "infinity"]
    with pytest.raises(ConfigError, match=r"profiles\.smoke\.implicit2\.gradient_order\.orders\.1"):
        resolve_profile(params, "smoke")


def test_jobs_hold_only_what_they_read_and_check_their_arguments():
    s = settings()
    job = s.fit("natural", 0, "fourier")
    assert job.reconstruct == ("1L-8D",)  # the pictured (set, image, filter) keeps its reconstructions
    assert s.fit("text", 0, "fourier").reconstruct == ()
    assert settings(video={"steps": 5}).fit("natural", 0, "fourier") == job  # video settings do not touch it
    with pytest.raises(ConfigError, match=r"filter 'wavelet' is not in profiles\.smoke\.implicit2"):
        s.fit("natural", 0, "wavelet")
    with pytest.raises(ConfigError, match=r"image 1 is outside profiles\.smoke\.implicit2\.data\.images"):
        s.fit("natural", 1, "fourier")
    with pytest.raises(ConfigError, match="image 2 is not in"):
        s.amortization(2)


def test_implicit_and_explicit_of_one_seed_share_their_init():
    s = settings()
    p = s.params
    for filter in ("fourier", "gabor", "siren"):
        a = build_model(model_config(p.model, p.solver, filter, "2L-8D", True), 3, CPU)
        b = build_model(model_config(p.model, p.solver, filter, "2L-8D", False), 3, CPU)
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
        c = build_model(model_config(p.model, p.solver, filter, "2L-8D", True), 4, CPU)
        assert not torch.equal(c.output.weight, a.output.weight)


@pytest.fixture(scope="module")
def fitted():
    s = settings(**TINY)
    return s, task.fit(s.fit("natural", 0, "gabor"), CPU, progress=False)


def test_fit_runs_every_size_paired_and_records_what_it_measured(fitted):
    _, result = fitted
    runs = result["runs"]
    assert [(r["paper_size"], r["size"], r["implicit"]) for r in runs] == [
        (p, t, i) for p, t in (("1L-256D", "1L-4D"), ("1L-512D", "1L-8D"), ("4L-256D", "2L-4D")) for i in (False, True)]
    for explicit, implicit in zip(runs[::2], runs[1::2]):
        assert explicit["num_parameters"] == implicit["num_parameters"] and explicit["seed"] == implicit["seed"]
        assert explicit["f_applications_per_step"] == 1 and explicit["residual_trace"] is None
        assert implicit["eval_forward_iterations"] >= 1 and len(implicit["residual_trace"]) == 2
        assert implicit["f_applications_per_step"] > 1  # step 0 solves, step 1 applies F once
    assert all(5 < r["test_psnr"] < 40 and r["step_seconds"] > 0 for r in runs)
    assert len(result["image_sha256"]) == 64 and "stand-in" in result["data_source"]
    assert result["image_name"] == "camera" and "reconstruction" not in runs[0]  # pictures: fourier only


def test_every_stage_and_table_end_to_end_on_tiny_settings(tmp_path, fitted):
    s, _ = fitted
    s = settings(**TINY, video={"frames": 2, "frame_size": 4, "pan_downscale": 8, "steps": 2,
                                "sizes": {"1L-1024D": "1L-4D", "1L-2048D": "1L-8D", "4L-1024D": "2L-4D"}},
                 gradient_order={"resolution": 8, "size": "1L-4D", "steps": 2},
                 cost={"width": 4, "repeats": 1, "solver_iterations": [2, 3]}, amortization={"warmup_steps": 1})
    files: dict[str, list[str]] = {name: [] for name in SPECS}

    def save(name: str, key: str, result: dict[str, Any]) -> None:
        path = tmp_path / f"{key}.json"
        path.write_text(json.dumps(result))
        files[name].append(str(path))

    for set_name in ("natural", "text"):
        for filter in ("fourier", "gabor", "siren"):
            result = task.fit(s.fit(set_name, 0, filter), CPU, progress=False)
            save("implicit2_generalization", f"fit_{set_name}_{filter}", result)
            if (set_name, filter) == ("natural", "fourier"):
                files["implicit2_pictures"].append(files["implicit2_generalization"][-1])
    for filter in ("fourier", "gabor", "siren"):
        save("implicit2_video", f"video_{filter}", task.video(s.video(filter), CPU, progress=False))
    save("implicit2_gradient_order", "order", task.gradient_order(s.gradient_order(), CPU, progress=False))
    save("implicit2_cost", "cost", cost.measure(s.cost(), CPU))
    save("implicit2_amortization", "amortization", task.amortization(s.amortization(0), CPU, progress=False))
    for name, spec in SPECS.items():
        built = spec.build(spec.settings_of(s), files[name])
        outputs = write_table(spec, built, tmp_path / "results" / f"{name}.csv", {"profile": "smoke"})
        assert outputs["csv"].read_text().startswith(spec.columns[0].key)
        if "png" in outputs:
            assert outputs["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    order = [r for r in SPECS["implicit2_gradient_order"].build(s.table("implicit2_gradient_order"),
                                                               files["implicit2_gradient_order"]).rows]
    assert [r["order"] for r in order if r["kind"] == "final"] == ["0", "1", "inf"]  # the smoke profile's orders
    stamps = [r["seconds"] for r in order if r["kind"] == "step" and r["order"] == "1"]
    assert len(stamps) == 2 and stamps[1] > stamps[0] > 0
    rows = SPECS["implicit2_cost"].build(s.table("implicit2_cost"), files["implicit2_cost"]).rows
    deq = {r["solver_iterations"]: r["f_applications_per_step"] for r in rows if r["kind"] == "deq_full_solve"}
    assert deq == {2: 3, 3: 4}  # exactly M forward iterations, plus the application that carries the gradient
    assert all(r["f_applications_per_step"] == 1 for r in rows if r["kind"] in ("explicit", "amortized"))
    video = SPECS["implicit2_video"].build(s.table("implicit2_video"), files["implicit2_video"]).rows
    assert len(video) == 18 and all(r["n_frames"] == 2 and "SYNTHETIC MOTION" in r["data_source"] for r in video)
    assert {r["paper_psnr_mean"] for r in video} == {v[0] for v in PAPER_VIDEO.values()}


def _fake_fit(tmp_path: Path, set_name: str, filter: str, image: int, psnrs: dict[tuple[str, bool], float]) -> str:
    runs = [{"paper_size": paper, "size": paper.replace("256", "64").replace("512", "128"), "implicit": implicit,
             "label": "x", "num_parameters": 10, "test_psnr": value, "train_psnr": value + 1, "step_seconds": 0.01,
             "f_applications_per_step": 1.0, "eval_forward_iterations": 4 if implicit else None, "steps": 3,
             "residual_trace": [0.1, 0.005] if implicit else None} for (paper, implicit), value in psnrs.items()]
    path = tmp_path / f"{set_name}_{image}_{filter}.json"
    path.write_text(json.dumps({"set": set_name, "image": image, "image_name": f"img{image}", "filter": filter,
                                "image_sha256": "0" * 64, "data_source": "stand-in", "runs": runs,
                                "trivial_baselines": {"mean_colour": 10.0 + image, "nearest": 18.0 + image,
                                                      "bilinear": 21.0 + 2 * image}}))
    return str(path)


def test_generalization_table_means_std_and_paired_differences(tmp_path):
    """Two images: the summary rows hold the mean and ddof-0 std over images, the implicit rows the paired
    differences and wins, the image rows each pair; paper values only in the reference columns."""
    s = settings(data={"images": 2}, generalization={"sets": ["natural"], "filters": ["siren"]},
                 amortization={"images": [0]}, pictures={"images": [["natural", 0]], "filter": "siren"})
    values = {0: {"explicit": 20.0, "implicit": 21.5}, 1: {"explicit": 24.0, "implicit": 23.0}}
    files = [_fake_fit(tmp_path, "natural", "siren", i, {(p, imp): v[("explicit", "implicit")[imp]] + k
                                                          for k, p in enumerate(("1L-256D", "1L-512D", "4L-256D"))
                                                          for imp in (False, True)}) for i, v in values.items()]
    rows = SPECS["implicit2_generalization"].build(s.table("implicit2_generalization"), files).rows
    summary = {(r["paper_size"], r["model"]): r for r in rows if r["kind"] == "summary"}
    explicit, implicit = summary[("1L-256D", "explicit")], summary[("1L-256D", "implicit")]
    assert explicit["psnr_mean"] == pytest.approx(22.0) and explicit["psnr_std"] == pytest.approx(np.std([20, 24]))
    assert implicit["psnr_mean"] == pytest.approx(22.25) and implicit["n_images"] == 2
    assert implicit["delta_mean"] == pytest.approx(0.25) and implicit["delta_std"] == pytest.approx(1.25)
    assert implicit["wins"] == 1 and implicit["win_fraction"] == 0.5 and "delta_mean" not in explicit
    assert implicit["paper_psnr_mean"] == PAPER_IMAGES["natural"][("siren", True, "1L-256D")][0] == 24.28
    assert implicit["paper_delta"] == pytest.approx(24.28 - 22.88)
    assert implicit["residual_final_mean"] == pytest.approx(0.005) and implicit["size"] == "1L-8D"  # smoke sizes
    pairs = [r for r in rows if r["kind"] == "image" and r["paper_size"] == "4L-256D"]
    assert [(r["image"], r["delta"]) for r in pairs] == [("img0", pytest.approx(1.5)), ("img1", pytest.approx(-1.0))]
    baselines = {r["model"].split(":")[1].split("(")[0].strip(): r for r in rows if r["kind"] == "baseline"}
    assert baselines["bilinear interpolation"]["psnr_mean"] == pytest.approx(22.0)
    assert baselines["nearest train pixel"]["psnr_std"] == pytest.approx(0.5)
    assert implicit["minus_bilinear"] == pytest.approx(0.25) and explicit["minus_bilinear"] == pytest.approx(0.0)
    with pytest.raises(ConfigError, match=r"expected 2 images of each model for \(natural, siren, 1L-256D\)"):
        SPECS["implicit2_generalization"].build(s.table("implicit2_generalization"), files[:1])
    assert SPECS["implicit2_generalization"].reference_columns() == {
        "psnr_mean": "paper_psnr_mean", "psnr_std": "paper_psnr_std", "delta_mean": "paper_delta"}
