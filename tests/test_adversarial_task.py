"""The adversarial task: resumable training, divergence handling, attack properties, table assembly."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from deqbench.experiments.config import load_profile
from deqbench.tasks import adversarial as adv
from deqbench.tables import adversarial_table

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


@pytest.fixture(scope="module")
def profile():
    p = copy.deepcopy(load_profile(PARAMS, "smoke"))
    p["train"].update(max_steps=4, checkpoint_every=2, log_every=1, batch_size=8)
    p["eval"].update(limit=16, batch_size=8)
    return p


@pytest.fixture(scope="module")
def data(profile):
    prepared = adv.prepare_dataset(profile, "mnist")
    for split in ("train", "test"):
        prepared[split]["images"] = prepared[split]["images"][:64]
        prepared[split]["labels"] = prepared[split]["labels"][:64]
    return prepared


def test_prepared_data_is_labelled_as_stand_in(profile, data):
    assert data["meta"]["stand_in_for"] == "mnist"
    assert "embedded stand-in" in adv.data_source_label(data["meta"])
    assert data["train"]["images"].shape[-1] == profile["datasets"]["mnist"]["image_size"]


def test_training_resumes_from_partial_checkpoint(profile, data, tmp_path, monkeypatch):
    run = adv.TrainRun(profile, "mnist", "clean", 0.0, 0)
    full = tmp_path / "full.pt"
    adv.train(run, data, full, tmp_path / "p_full.pt", torch.device("cpu"), progress=False)

    calls = {"n": 0}
    original = adv._step_loss

    def crash_on_third_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated interruption")
        return original(*args, **kwargs)

    monkeypatch.setattr(adv, "_step_loss", crash_on_third_step)
    out, partial = tmp_path / "resumed.pt", tmp_path / "p.pt"
    with pytest.raises(KeyboardInterrupt):
        adv.train(run, data, out, partial, torch.device("cpu"), progress=False)
    assert partial.exists() and not out.exists()  # no partial output under the declared name
    monkeypatch.setattr(adv, "_step_loss", original)
    summary = adv.train(run, data, out, partial, torch.device("cpu"), progress=False)
    assert summary["steps"] == 4 and not partial.exists()
    a, b = torch.load(full, weights_only=False)["model"], torch.load(out, weights_only=False)["model"]
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key


def test_divergence_stops_training_without_output(profile, data, tmp_path, monkeypatch):
    run = adv.TrainRun(profile, "mnist", "clean", 0.0, 0)

    def nan_loss(*args, **kwargs):
        loss = torch.tensor(float("nan"), requires_grad=True)
        return loss, loss, torch.zeros(8)

    monkeypatch.setattr(adv, "_step_loss", nan_loss)
    with pytest.raises(adv.DivergenceError, match="non-finite loss"):
        adv.train(run, data, tmp_path / "out.pt", tmp_path / "p.pt", torch.device("cpu"), progress=False)
    assert not (tmp_path / "out.pt").exists()


@pytest.mark.parametrize("method", ["pgd", "jio"])
def test_attacks_raise_the_loss_and_respect_the_ball(profile, data, method):
    torch.manual_seed(0)
    model = adv.build_model(profile, "mnist", 1, 10).eval()
    images, labels = data["test"]["images"][:16], data["test"]["labels"][:16]
    eps = 1.0
    if method == "pgd":
        delta = adv.pgd_perturbation(model, images, labels, profile, eps)
    else:
        with torch.no_grad():
            delta = adv.jio_attack(model, images, labels, profile, "mnist", eps).x
    assert (delta.flatten(1).norm(dim=1) <= eps + 1e-5).all()
    with torch.no_grad():
        clean_z, _ = adv.equilibrium(model, images, profile)
        adv_z, _ = adv.equilibrium(model, images + delta, profile)
        ce = torch.nn.functional.cross_entropy
        assert ce(model.logits(adv_z), labels) > ce(model.logits(clean_z), labels)


def test_table_assembly_mean_std_and_reference(profile, tmp_path):
    files = []
    for seed, acc in enumerate([50.0, 60.0]):
        for method in ("clean", "pgd", "jio"):
            result = {"accuracy": {"clean": acc, "pgd": acc - 10, "jio": acc - 20}, "eps": 1.0,
                      "train": {"dataset": "mnist", "method": method, "seed": seed}, "data_source": "digits28 (stand-in)"}
            path = tmp_path / f"{method}_{seed}.json"
            path.write_text(json.dumps(result))
            files.append(str(path))
    rows, extra = adversarial_table("table5", profile, files, datasets=["mnist"])
    assert len(rows) == 9 and extra["seeds"] == [0, 1]
    first = rows[0]
    assert first["accuracy_mean"] == 55.0 and abs(first["accuracy_std"] - 7.0710678) < 1e-6
    assert first["paper_value"] == 99.45  # the reference column, from the paper's Table 5


@pytest.mark.slow
def test_pgd_attack_lowers_accuracy_of_a_trained_model(tmp_path):
    """Train a clean MDEQ briefly on the embedded digits stand-in; PGD-20 must lower its accuracy."""
    profile = copy.deepcopy(load_profile(PARAMS, "embedded"))
    profile["train"].update(max_steps=150, log_every=50, checkpoint_every=1000)
    profile["eval"].update(limit=100)
    prepared = adv.prepare_dataset(profile, "mnist")
    run = adv.TrainRun(profile, "mnist", "clean", 0.0, 0)
    adv.train(run, prepared, tmp_path / "m.pt", tmp_path / "p.pt", torch.device("cpu"), progress=False)
    result = adv.evaluate(profile, "mnist", tmp_path / "m.pt", prepared, 1.0, torch.device("cpu"), progress=False)
    acc = result["accuracy"]
    assert acc["clean"] > 30.0  # well above chance (10%)
    assert acc["pgd"] < acc["clean"] - 20.0
    assert acc["jio"] < acc["clean"]
    assert result["max_perturbation_norm"] <= 1.0 + 1e-5
