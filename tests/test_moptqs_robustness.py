"""MOptEqs Tables 4-6 and Figures 3(b)-(c): PGD through the equilibrium, adversarial and regularised training, the
side-by-side cost measurement, the assembly of the tables, and ImageNet's clean failure offline."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from deqbench.data import DatasetNotFoundError
from deqbench.experiments.config import ConfigError
from deqbench.experiments.prepared import run_prepare_job
from deqbench.models.moptqs import MOptEqs, MOptEqsConfig
from deqbench.tasks.moptqs import cost, task
from deqbench.tasks.moptqs.robustness import adversarial_examples, attack_accuracy
from deqbench.tasks.moptqs.tables import TABLES
from tests.moptqs_helpers import prepared, settings

CPU = torch.device("cpu")
SPECS = {spec.name: spec for spec in TABLES}


@pytest.fixture(scope="module")
def mopt():
    return settings(train={"max_steps": 2, "checkpoint_every": 2, "log_every": 1})


@pytest.fixture(scope="module")
def data(mopt):
    return prepared(mopt, "cifar10", 32)


def tiny_model() -> MOptEqs:
    torch.manual_seed(0)
    return MOptEqs(MOptEqsConfig(in_channels=3, num_classes=4, image_size=8, layout="single_view", branches=2,
                                 channels=4, coupling="hhd", lam=0.01, pe_eps=0.1))


SOLVE = {"solver": "anderson", "max_iter": 20, "tol": 1e-4, "backward": "ift",
         "backward_options": {"method": "anderson", "max_iter": 20, "tol": 1e-4}}


def test_pgd_stays_in_the_ball_restores_the_mode_and_raises_the_loss(mopt):
    model = tiny_model().train()
    images = torch.rand(6, 3, 8, 8)
    labels = torch.randint(0, 4, (6,))
    attack = dataclasses.replace(mopt.params.adversarial, eps=0.1, step_size=0.03)
    seen: list[int] = []
    x = adversarial_examples(model, images, labels, attack, 4, SOLVE, torch.Generator().manual_seed(0),
                             lambda k, logits: seen.append(k))
    assert seen == [0, 1, 2, 3, 4] and model.training  # back in training mode
    assert (x - images).abs().max() <= 0.1 + 1e-6 and x.min() >= 0 and x.max() <= 1
    model.eval()
    with torch.no_grad():
        clean = F.cross_entropy(model(images, **SOLVE), labels)
        attacked = F.cross_entropy(model(x, **SOLVE), labels)
    assert attacked > clean
    result = attack_accuracy(model, images, labels, attack, 3, SOLVE, seed=0)
    assert len(result["accuracy_by_step"]) == 4 and result["n_test"] == 6
    assert all(0.0 <= a <= 100.0 for a in result["accuracy_by_step"])


def test_the_input_gradient_through_the_equilibrium_matches_finite_differences():
    """PGD's direction comes from the IFT gradient w.r.t. the image: check it against central differences."""
    model = tiny_model().double().eval()
    images = torch.rand(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([1, 3])
    solve = {**SOLVE, "tol": 1e-12, "max_iter": 200, "backward_options": {"method": "anderson", "max_iter": 200,
                                                                          "tol": 1e-12}}
    loss = F.cross_entropy(model(images, **solve), labels, reduction="sum")
    (grad,) = torch.autograd.grad(loss, images)
    direction = torch.randn_like(images)
    h = 1e-5
    with torch.no_grad():
        plus = F.cross_entropy(model(images + h * direction, **solve), labels, reduction="sum")
        minus = F.cross_entropy(model(images - h * direction, **solve), labels, reduction="sum")
    assert math.isclose(float((plus - minus) / (2 * h)), float((grad * direction).sum()), rel_tol=1e-4)


def test_adversarial_and_hhd_regularised_training_run(mopt, data, tmp_path):
    job = mopt.train("cifar10", "adv_pe")
    assert job.adversarial is not None and mopt.train("cifar10", "moptqs").adversarial is None
    summary = task.train(job, data, 0, tmp_path / "a.pt", tmp_path / "ap.pt", CPU, progress=False)
    assert summary["adversarial"]["train_steps"] == job.adversarial.train_steps
    assert all(math.isfinite(h["loss"]) for h in summary["history"])
    attacked = task.attack(mopt.attack("cifar10", "adv_pe"), tmp_path / "a.pt", data, CPU, progress=False)
    assert attacked["steps"] == mopt.params.adversarial.attack_steps and attacked["train"]["model_name"] == "adv_pe"
    reg = mopt.train("cifar10", "poptqs_hhd_loss_1e2")
    summary = task.train(reg, data, 0, tmp_path / "r.pt", tmp_path / "rp.pt", CPU, progress=False)
    assert all("hhd_loss" in h and math.isfinite(h["hhd_loss"]) for h in summary["history"])
    with pytest.raises(ConfigError, match="attacked by neither"):
        mopt.attack("cifar10", "poptqs_sum")


def test_figure3b_attacks_as_many_steps_as_its_longest_curve():
    mopt = settings("embedded")
    assert mopt.attack_steps("moptqs_pe05") == max(mopt.params.figure3b.iterations)
    assert mopt.attack_steps("adv_pe") == mopt.params.adversarial.attack_steps


def test_settings_refuse_inconsistent_blocks():
    with pytest.raises(ConfigError, match="moptqs_table5: 'moptqs' is not adversarially trained"):
        settings(tables={"moptqs_table5": {"rows": {"cifar10": ["moptqs"]}}})
    with pytest.raises(ConfigError, match=r"figure3c\.models: 'poptqs_sum' must be a POptEqs"):
        settings(figure3c={"models": ["poptqs_sum"]})
    with pytest.raises(ConfigError, match=r"tables: unknown \['moptqs_table9'\]"):
        settings(tables={"moptqs_table9": {"rows": {"cifar10": ["moptqs"]}}})


def test_the_paper_profile_fails_offline_naming_the_imagenet_folder(tmp_path):
    paper = settings("paper")
    job = dataclasses.replace(paper.prepare("imagenet"), data_root=str(tmp_path))
    with pytest.raises(DatasetNotFoundError, match=str(tmp_path / "imagenet")):
        run_prepare_job(job)
    assert paper.table("moptqs_table4").rows[0][1] == "moptqs_imagenet_13m"
    assert SPECS["moptqs_table4"].needs == "ImageNet"


def _checkpoint(mopt, name: str, data, tmp_path: Path) -> str:
    out = tmp_path / f"{name}.pt"
    job = dataclasses.replace(mopt.train(mopt.params.cost.dataset, name), max_steps=1)
    task.train(job, data, 0, out, tmp_path / f"{name}_partial.pt", CPU, progress=False)
    return str(out)


def test_cost_times_both_models_side_by_side_and_probes_memory(mopt, tmp_path):
    data = prepared(mopt, "imagenette", 8)
    job = mopt.cost()
    checkpoints = [_checkpoint(mopt, name, data, tmp_path) for name, _ in job.models]
    loaded = [(name, task.load_model(name, params, data, ck, CPU)[0])
              for (name, params), ck in zip(job.models, checkpoints)]
    timings = cost.time_side_by_side(job, loaded, data, CPU)
    assert set(timings) == {name for name, _ in job.models}
    for entry in timings.values():
        assert entry["inference_seconds"] > 0 and len(entry["train_step_seconds_all"]) == job.cost.repeats
    one_step = cost.model_kwargs(job, dict(job.models)["moptqs_ms_19_in_one_step"], inference=True)
    assert one_step["gradient"] == "one_step" and one_step["one_step_iterations"] == job.one_step_iterations
    probe = cost.memory_probe(job, job.models[0][0], checkpoints[0], data, CPU)
    assert probe["batch_size"] == job.cost.batch_size and "measure" in probe


def _attack_file(tmp_path: Path, model: str, seed: int, clean: float, curve: list[float]) -> str:
    path = tmp_path / f"{model}_{seed}_pgd.json"
    path.write_text(json.dumps({"accuracy_clean": clean, "accuracy_by_step": curve, "n_test": 250,
                                "steps": len(curve) - 1, "eps": 8 / 255, "step_size": 2 / 255, "num_parameters": 99,
                                "data_source": "stand-in", "train": {"model_name": model, "seed": seed,
                                                                     "adversarial": {"train_steps": 3}}}))
    return str(path)


def test_table5_and_figure3b_are_assembled_from_the_attack_traces(tmp_path):
    mopt = settings("embedded")
    job5 = mopt.table("moptqs_table5")
    files = [_attack_file(tmp_path, m, s, 60.0 + s, [60.0, 50.0] + [40.0 + k + s] * 19)
             for k, (_, m, _) in enumerate(job5.rows) for s in (0, 1)]
    built = SPECS["moptqs_table5"].build(job5, files)
    assert [r["model_key"] for r in built.rows] == ["adv_no_pe", "adv_pe"]
    assert built.rows[1]["pgd_accuracy_mean"] == 41.5 and built.rows[0]["natural_accuracy_mean"] == 60.5
    assert built.rows[1]["paper_pgd_accuracy"] == 38.05 and built.rows[0]["train_pgd_steps"] == 3
    job3b = mopt.table("moptqs_figure3b")
    files = [_attack_file(tmp_path, m, 0, 60.0, [60.0 - j - k for j in range(11)])
             for k, (_, m, _) in enumerate(job3b.rows)]
    rows = SPECS["moptqs_figure3b"].build(job3b, files).rows
    means = {r["model_key"]: r["accuracy_mean"] for r in rows if r["kind"] == "mean"}
    assert means["moptqs_no_pe"] == 60.0 - 6.5  # the mean of k = 3 ... 10
    assert [r["pgd_iterations"] for r in rows if r["model_key"] == "moptqs" and r["kind"] == "curve"] == list(
        range(3, 11))
    png = tmp_path / "f3b.png"
    SPECS["moptqs_figure3b"].draw(rows, png, "caption")
    assert png.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ConfigError, match="no attack result of model 'moptqs_pe05'"):
        SPECS["moptqs_figure3b"].build(job3b, files[:-1])


def test_figure3c_and_table6_are_assembled_from_the_evaluations(tmp_path):
    mopt = settings("embedded")
    job = mopt.table("moptqs_figure3c")
    files = []
    for k, (_, m, _) in enumerate(job.rows):
        path = tmp_path / f"{m}.json"
        path.write_text(json.dumps({"accuracy": 50.0 + k, "n_test": 500, "data_source": "stand-in",
                                    "train": {"model_name": m, "seed": 0}}))
        files.append(str(path))
    rows = SPECS["moptqs_figure3c"].build(job, files).rows
    kinds = [r["kind"] for r in rows]
    assert kinds == ["baseline"] + ["regularised"] * 4 + ["reference", "best_regularised"]
    assert rows[-1]["gamma"] == 0.1 and rows[0]["paper_accuracy"] == 87.4
    png = tmp_path / "f3c.png"
    SPECS["moptqs_figure3c"].draw(rows, png, "caption")
    assert png.read_bytes()[:4] == b"\x89PNG"
    job6 = mopt.table("moptqs_table6")
    evaluations = []
    for (_, m, _), acc in zip(job6.rows, (60.0, 59.0)):
        path = tmp_path / f"{m}_eval.json"
        path.write_text(json.dumps({"accuracy": acc, "forward_iterations_mean": 10, "data_source": "stand-in",
                                    "train": {"model_name": m, "seed": 0, "train_seconds": 40.0 if acc == 60 else 20}}))
        evaluations.append(str(path))
    cost_file = tmp_path / "cost.json"
    cost_file.write_text(json.dumps({"rows": [
        {"model_key": m, "gradient": g, "num_parameters": 1, "memory_bytes": b, "memory_measure": "rss",
         "inference_seconds": t, "train_step_seconds": t} for (_, m, _), g, b, t in
        zip(job6.rows, ("implicit", "one_step"), (4 * 2**20, 2**20), (1.0, 0.25))],
        "batch_size": 32, "repeats": 5, "one_step_iterations": 16, "eval_max_iter": 50, "seed": 0}))
    rows = SPECS["moptqs_table6"].build(job6, evaluations + [str(cost_file)]).rows
    assert rows[1]["memory_mib_ratio"] == 4.0 and rows[1]["inference_seconds_ratio"] == 4.0
    assert rows[1]["train_seconds_mean_ratio"] == 2.0 and rows[0]["paper_memory_gb"] == 8.0
