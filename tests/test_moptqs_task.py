"""The MOptEqs task (deqbench.tasks.moptqs): settings, the shared trainer's schedule and augmentation, training and
evaluation of a named model, and the assembly of Tables 1(a), 3 and Figure 4."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from deqbench.experiments.config import ConfigError
from deqbench.experiments.io import load_artifact
from deqbench.experiments.settings import to_plain
from deqbench.experiments.trainer import LoopSettings, standard_augment
from deqbench.tasks.moptqs import task
from deqbench.tasks.moptqs.tables import PAPER_ROWS, QUOTED_ROWS, TABLES
from tests.moptqs_helpers import prepared, settings

CPU = torch.device("cpu")
SPECS = {spec.name: spec for spec in TABLES}


@pytest.fixture(scope="module")
def mopt():
    return settings(train={"max_steps": 3, "checkpoint_every": 2, "log_every": 1, "epochs": {"cifar10": 5}},
                    eval={"limit": 16, "batch_size": 8, "max_iter": 10})


@pytest.fixture(scope="module")
def data(mopt):
    return prepared(mopt, "cifar10", 64)


def test_every_profile_declares_the_tables_and_their_models():
    for name in ("paper", "embedded", "smoke"):
        s = settings(name)
        for table in ("moptqs_table1a", "moptqs_table1b", "moptqs_table2", "moptqs_table3", "moptqs_figure4"):
            job = s.table(table)
            assert job.rows and all(s.model(m) == p for _, m, p in job.rows)
    paper = settings("paper").params
    assert paper.models["moptqs"].pe_eps == 0.1 and paper.models["moptqs_no_pe"].pe_eps == 0.0
    assert paper.train.lr == 0.1 and paper.train.lr_milestones == (0.5, 0.75, 0.875)  # epochs 100/150/175 of 200
    assert paper.datasets["cifar10"].source == "cifar10"


def test_a_table_naming_an_unknown_model_fails_naming_the_key():
    with pytest.raises(ConfigError, match=r"moptqs\.tables\.moptqs_table1a\.rows\.cifar10: 'nope' has no entry"):
        settings(tables={"moptqs_table1a": {"rows": {"cifar10": ["nope"]}}})
    with pytest.raises(ConfigError, match=r"moptqs\.tables\.moptqs_table1a\.rows\.svhn: dataset 'svhn'"):
        settings(tables={"moptqs_table1a": {"rows": {"svhn": ["moptqs"]}}})
    with pytest.raises(ConfigError, match=r"moptqs\.convergence\.panels\.a: 'mdeq_small' has no entry in "
                                          r".*moptqs\.models$"):
        settings(convergence={"panels": {"a": {"dataset": "cifar10", "models": ["mdeq_small"]}}})  # no HH&D to trace
    with pytest.raises(ConfigError, match=r"keys \['moptqs'\] are in both models and baselines"):
        settings(baselines={"moptqs": to_plain(settings().params.baselines["mdeq_small"])})


def test_baseline_per_dataset_settings_resolve_and_unknown_datasets_fail_naming_the_key():
    s = settings(baselines={"mdeq_small": {"jac_reg": 0.1, "jac_reg_per_dataset": {"cifar100": 0.0},
                                           "epochs": {"cifar10": 7}}})
    baseline = s.model("mdeq_small")
    assert baseline.jac_reg_on("cifar100") == 0.0 and baseline.jac_reg_on("cifar10") == 0.1
    assert s.train("cifar10", "mdeq_small").epochs == 7
    for key in ("epochs", "jac_reg_per_dataset"):
        with pytest.raises(ConfigError, match=rf"moptqs\.baselines\.mdeq_small\.{key}: unknown datasets \['svhn'\]"):
            settings(baselines={"mdeq_small": {key: {"svhn": 1.0}}})


def test_job_settings_hold_only_what_the_job_reads(mopt):
    a, b = mopt.train("cifar10", "moptqs"), mopt.train("cifar10", "poptqs_sum")
    assert a.model != b.model and a.model_name == "moptqs"
    other = settings(train={"max_steps": 3, "checkpoint_every": 2, "log_every": 1, "epochs": {"cifar10": 5}},
                     eval={"limit": 3, "batch_size": 8, "max_iter": 10},
                     models={"poptqs_sum": {"lam": 0.5}})
    assert other.train("cifar10", "moptqs") == a  # another model's or the evaluation's settings do not touch it
    assert other.train("cifar10", "poptqs_sum") != b
    with pytest.raises(ConfigError, match="'unknown' is not in profiles.smoke.moptqs.models"):
        mopt.train("cifar10", "unknown")


def test_multistep_schedule_divides_by_ten_at_the_milestones():
    loop = LoopSettings(200, 50, 10, 0.1, "multistep", lr_milestones=(0.5, 0.75, 0.875), lr_gamma=0.1)
    assert [loop.lr_at(s) for s in (0, 99)] == [0.1, 0.1]
    assert math.isclose(loop.lr_at(100), 0.01) and math.isclose(loop.lr_at(149), 0.01)
    assert math.isclose(loop.lr_at(150), 1e-3) and math.isclose(loop.lr_at(175), 1e-4)


def test_standard_augment_takes_padded_crops_and_flips():
    images = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).view(2, 3, 5, 5)
    out = standard_augment(images, torch.Generator().manual_seed(3), pad=2)
    again = standard_augment(images, torch.Generator().manual_seed(3), pad=2)
    assert out.shape == images.shape and torch.equal(out, again)
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    for n in range(2):  # each output is one 5x5 window of the padded image, possibly mirrored
        windows = [padded[n, :, r : r + 5, c : c + 5] for r in range(5) for c in range(5)]
        assert any(torch.equal(out[n], w) or torch.equal(out[n], w.flip(-1)) for w in windows)


def test_training_resumes_and_evaluation_reports_accuracy(mopt, data, tmp_path, monkeypatch):
    job = mopt.train("cifar10", "moptqs")
    out, partial = tmp_path / "m.pt", tmp_path / "partial.pt"
    full = task.train(job, data, 0, out, partial, CPU, progress=False)
    assert full["steps"] == 3 and out.exists() and not partial.exists()
    calls = {"n": 0}
    original = torch.optim.SGD.step

    def crash_after_two(self, *args, **kwargs):  # a kill after the step-2 partial checkpoint
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", crash_after_two)
    out2 = tmp_path / "m2.pt"
    with pytest.raises(KeyboardInterrupt):
        task.train(job, data, 0, out2, partial, CPU, progress=False)
    monkeypatch.setattr(torch.optim.SGD, "step", original)
    assert partial.exists() and not out2.exists()
    resumed = task.train(job, data, 0, out2, partial, CPU, progress=False)
    assert resumed["resumed_from_step"] == 2
    a, b = load_artifact(out)["model"], load_artifact(out2)["model"]
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)  # the same run, bit for bit or so
    result = task.evaluate(mopt.evaluate("cifar10", "moptqs"), out, data, CPU, progress=False)
    assert 0.0 <= result["accuracy"] <= 100.0 and result["n_test"] == 16
    labels = data["test"]["labels"][:16]
    assert result["chance_accuracy"] == 100.0 * int(torch.bincount(labels).max()) / 16  # computed, not assumed
    assert "accuracy_pe_at_eval" in result  # a PE model is also scored with PE on at test time (AMBIG-A6)
    assert result["num_parameters"] == full["num_parameters"] and result["forward_iterations_mean"] > 0
    with pytest.raises(ConfigError, match="another architecture"):  # a checkpoint of another model is refused
        task.evaluate(mopt.evaluate("cifar10", "poptqs_conv"), out, data, CPU, progress=False)


def test_train_evaluate_stage_writes_the_checkpoint_and_the_same_evaluation(mopt, data, tmp_path):
    """The pipeline's one job per model: train, then evaluate in the same process, as the two stages would."""
    import argparse

    from deqbench.experiments.config import ProfileInfo, load_profile
    from deqbench.experiments.io import atomic_torch_save
    from deqbench.experiments.registry import Job
    from tests.moptqs_helpers import PARAMS

    settings = mopt.train_evaluate("cifar10", "poptqs_sum")
    assert settings.train == mopt.train("cifar10", "poptqs_sum")
    assert settings.evaluate == mopt.evaluate("cifar10", "poptqs_sum")
    data_file = tmp_path / "data.pt"
    atomic_torch_save(data_file, data)
    args = argparse.Namespace(data=str(data_file), dataset="cifar10", model="poptqs_sum", seed=0,
                              out=str(tmp_path / "c.pt"), partial=str(tmp_path / "p.pt"),
                              evaluation=str(tmp_path / "e.json"))
    profile = ProfileInfo.of(load_profile(PARAMS, "smoke"))
    task.run_train_evaluate(Job("moptqs", "train-evaluate", settings, args, profile, CPU, progress=False))
    written = json.loads((tmp_path / "e.json").read_text())
    again = task.evaluate(settings.evaluate, tmp_path / "c.pt", data, CPU, progress=False)
    assert written["accuracy"] == again["accuracy"] and written["n_test"] == 16
    assert written["provenance"]["stage"] == "train-evaluate" and written["train"]["seed"] == 0


def test_one_step_gradient_training_runs(mopt, data, tmp_path):
    job = mopt.train("cifar10", "moptqs")
    job = dataclasses.replace(job, model=dataclasses.replace(job.model, gradient="one_step"), one_step_iterations=4)
    summary = task.train(job, data, 1, tmp_path / "o.pt", tmp_path / "p.pt", CPU, progress=False)
    assert summary["gradient"] == "one_step" and all(math.isfinite(h["loss"]) for h in summary["history"])


def _evaluation(tmp_path: Path, model: str, seed: int, accuracy: float, dataset: str = "cifar10") -> str:
    path = tmp_path / f"{model}_{seed}.json"
    path.write_text(json.dumps({
        "accuracy": accuracy, "residual_mean": 1e-4, "forward_iterations_mean": 8.0, "n_test": 500, "chance_accuracy": 10.0,
        "num_parameters": 1234, "data_source": "sample-patches32 (embedded stand-in for cifar10)",
        "train": {"dataset": dataset, "model_name": model, "seed": seed, "train_seconds": 10.0}}))
    return str(path)


def test_accuracy_tables_are_computed_from_the_runs_with_quoted_rows_apart(mopt, tmp_path):
    job = mopt.table("moptqs_table1a")
    files = [_evaluation(tmp_path, m, s, 40.0 + 10 * k + s) for k, (_, m, _) in enumerate(job.rows) for s in (0, 1)]
    built = SPECS["moptqs_table1a"].build(job, files)
    ours = [r for r in built.rows if r["row_source"] == "ours"]
    assert [r["model_key"] for r in ours] == [m for _, m, _ in job.rows]
    assert ours[0]["accuracy_mean"] == 40.5 and math.isclose(ours[0]["accuracy_std"], math.sqrt(0.5))
    assert ours[-1]["paper_accuracy"] == PAPER_ROWS["moptqs_table1a"]["cifar10"]["moptqs"][1]
    assert ours[0]["dataset"] == "CIFAR-10"
    chance = [r for r in built.rows if r["row_source"] == "reference: no model"]  # the trivial answer, per dataset
    assert [(r["dataset"], r["accuracy_mean"]) for r in chance] == [("CIFAR-10", 10.0)]
    quoted = [r for r in built.rows if r["row_source"].startswith("quoted")]
    assert [r["model"] for r in quoted] == [q[1] for q in QUOTED_ROWS["moptqs_table1a"]]
    assert all(r.get("accuracy_mean") is None and r["paper_accuracy"] for r in quoted)  # never shown as ours
    with pytest.raises(ConfigError, match="no evaluation of model 'moptqs' on cifar10"):
        SPECS["moptqs_table1a"].build(job, files[:-2])
    with pytest.raises(ConfigError, match="a cifar100 result of 'moptqs', which moptqs_table1a does not show"):
        SPECS["moptqs_table1a"].build(job, files + [_evaluation(tmp_path, "moptqs", 5, 1.0, "cifar100")])
    table3 = SPECS["moptqs_table3"].build(mopt.table("moptqs_table3"),
                                          [_evaluation(tmp_path, m, 0, 50.0) for _, m, _ in mopt.table("moptqs_table3").rows])
    assert [r["model"] for r in table3.rows if r["row_source"] == "ours"] == ["MOptEqs", "- D", "- H", "- D, H"]
    job2 = mopt.table("moptqs_table2")  # two datasets, MDEQ baselines beside MOptEqs
    table2 = SPECS["moptqs_table2"].build(job2, [_evaluation(tmp_path, m, 0, 30.0, ds) for ds, m, _ in job2.rows])
    assert {r["dataset"] for r in table2.rows} == {"CIFAR-100", "ImageNette"}
    ours2 = [r for r in table2.rows if r["row_source"] == "ours"]
    assert {r["coupling"] for r in ours2} == {"MDEQ", "hhd"} and all(r["paper_accuracy"] for r in ours2)
    assert [r["dataset"] for r in table2.rows if r["row_source"] == "reference: no model"] == ["CIFAR-100", "ImageNette"]


def test_figure4_draws_one_curve_per_lambda_and_a_panel_per_trace(mopt, tmp_path):
    job = mopt.table("moptqs_figure4")
    panel_of = dict((m, p) for p, m in job.extra)
    rows = [{"panel": panel_of[m], "model_name": m, "label": p.label, "lam": p.lam, "channels": p.channels,
             "iteration": k + 1, "residual_median": 10.0 ** -(k * (3 - i)), "residual_q25": 0.0, "residual_q75": 1.0,
             "seed": 0} for i, (_, m, p) in enumerate(job.rows) for k in range(4)]
    files = []
    for panel in sorted(set(panel_of.values())):
        trace = tmp_path / f"trace{panel}.json"
        trace.write_text(json.dumps({"panel": panel, "rows": [r for r in rows if r["panel"] == panel],
                                     "data_source": "stand-in"}))
        files.append(str(trace))
    with pytest.raises(ConfigError, match="one trace file per panel"):
        SPECS["moptqs_figure4"].build(job, files[:1])
    built = SPECS["moptqs_figure4"].build(job, files)
    assert len({r["model_key"] for r in built.rows}) == 4 and {r["panel"] for r in built.rows} == {"a", "b"}
    metrics = SPECS["moptqs_figure4"].metrics(built.rows)
    first, _, last = (metrics[m] for _, m, _ in job.rows[:3])
    assert first["iterations_to_1e-3"] == 3 and last["iterations_to_1e-3"] is None
    png = tmp_path / "moptqs_figure4.png"
    SPECS["moptqs_figure4"].draw(built.rows, png, "caption")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_an_mdeq_baseline_trains_and_evaluates_through_the_same_path(mopt, data, tmp_path):
    job = mopt.train("cifar10", "mdeq_small")
    assert job.model.adam_lr is not None  # MDEQ keeps its own optimiser
    job = dataclasses.replace(job, model=dataclasses.replace(job.model, jac_reg=0.5))
    summary = task.train(job, data, 0, tmp_path / "b.pt", tmp_path / "bp.pt", CPU, progress=False)
    assert summary["model"]["model"] == "MDEQClassifier" and summary["steps"] == 3 and summary["optimizer"] == "Adam"
    assert all(math.isfinite(h["loss"]) for h in summary["history"])
    task.train(mopt.train("cifar10", "mdeq_small"), data, 0, tmp_path / "b.pt", tmp_path / "bp.pt", CPU,
               progress=False)  # as declared (the embedded baselines carry jac_reg 0.1)
    result = task.evaluate(mopt.evaluate("cifar10", "mdeq_small"), tmp_path / "b.pt", data, CPU, progress=False)
    assert result["operator_norms"] is None and "accuracy_pe_at_eval" not in result
