"""The generative / inverse-problem task (deqbench.tasks.generative) on the smoke profile."""

from __future__ import annotations

import json

import pytest
import torch

from deqbench.experiments.config import ConfigError, load_profile
from deqbench.tasks import generative as task
from deqbench.tasks.adversarial import DivergenceError


@pytest.fixture(scope="module")
def profile():
    return load_profile("params.yaml", "smoke")


@pytest.fixture(scope="module")
def faces(profile):
    return task.prepare_faces(profile)


def test_prepared_faces_are_labelled_stand_ins(faces):
    assert faces["train"].dtype == torch.uint8 and faces["train"].shape[1:] == (1, 16, 16)
    assert faces["train"].shape[0] + faces["test"].shape[0] == 100
    assert task.data_source_label(faces["meta"]) == "lfw-faces (embedded stand-in for celeba)"


def test_problems_come_from_params(profile):
    assert task.parse_problem(profile, "reconstruct").kind == "none"
    inpaint = task.parse_problem(profile, "inpaint20")
    assert inpaint.kind == "inpaint" and inpaint.window == profile["generative"]["problems"]["inpaint20"]["window"]
    assert task.parse_problem(profile, "denoise0.4").sigma == 0.4
    with pytest.raises(ConfigError, match="unknown problem 'blur'.*generative.problems"):
        task.parse_problem(profile, "blur")


def test_alpha_x_is_reduced_only_in_runs_longer_than_the_switch(profile):
    switch = profile["generative"]["jiio"]["alpha_x_switch"]
    short = task.jiio_options(profile, switch)
    long = task.jiio_options(profile, switch + 1)
    assert short["alpha_x_late"] is None and short["alpha_x_switch"] is None
    assert long["alpha_x_late"] == profile["generative"]["jiio"]["alpha_x_late"] and long["alpha_x_switch"] == switch
    assert long["solver_options"] == {"m": profile["generative"]["jiio"]["memory"], "kind": "I"}


def test_every_model_builds_from_params(profile):
    for name in task.MODELS:
        model = task.build_model(profile, name, 1)
        assert model.describe()["num_parameters"] > 0
    with pytest.raises(ConfigError, match="unknown model 'gan'"):
        task.build_model(profile, "gan", 1)


def test_supervised_and_unsupervised_models_need_matching_problems(profile, faces, tmp_path):
    with pytest.raises(ConfigError, match="vae is an unsupervised generative model"):
        task.train(task.TrainRun(profile, "vae", "inpaint20", 0), faces, tmp_path / "a.pt", tmp_path / "p.pt",
                   torch.device("cpu"), progress=False)
    with pytest.raises(ConfigError, match="ae is a supervised inverse-problem model"):
        task.train(task.TrainRun(profile, "ae", "reconstruct", 0), faces, tmp_path / "a.pt", tmp_path / "p.pt",
                   torch.device("cpu"), progress=False)


def test_training_resumes_bit_identically(profile, faces, tmp_path, monkeypatch):
    """An interrupted run resumes from its partial checkpoint and ends where an uninterrupted one ends."""
    cpu = torch.device("cpu")
    run = task.TrainRun(profile, "vae", "reconstruct", 3)
    task.train(run, faces, tmp_path / "full.pt", tmp_path / "full.partial", cpu, progress=False)

    original = task._train_step
    calls = {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(task, "_train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        task.train(run, faces, tmp_path / "resumed.pt", tmp_path / "resumed.partial", cpu, progress=False)
    assert (tmp_path / "resumed.partial").exists() and not (tmp_path / "resumed.pt").exists()
    monkeypatch.setattr(task, "_train_step", original)
    task.train(run, faces, tmp_path / "resumed.pt", tmp_path / "resumed.partial", cpu, progress=False)
    assert not (tmp_path / "resumed.partial").exists()
    full = torch.load(tmp_path / "full.pt", weights_only=False)["model"]
    resumed = torch.load(tmp_path / "resumed.pt", weights_only=False)["model"]
    for key in full:
        torch.testing.assert_close(full[key], resumed[key], rtol=0, atol=0)


def test_divergence_stops_without_a_checkpoint(profile, faces, tmp_path, monkeypatch):
    def nan_step(model, run, clean, observed, mask, kl_scale):
        loss = sum(p.sum() for p in model.parameters()) * float("nan")
        return loss, loss.detach(), loss.detach()

    monkeypatch.setattr(task, "_train_step", nan_step)
    with pytest.raises(DivergenceError, match="non-finite"):
        task.train(task.TrainRun(profile, "ae", "denoise0.2", 0), faces, tmp_path / "x.pt", tmp_path / "x.partial",
                   torch.device("cpu"), progress=False)
    assert not (tmp_path / "x.pt").exists()


def test_checkpoints_refuse_a_different_configuration(profile, faces, tmp_path):
    cpu = torch.device("cpu")
    task.train(task.TrainRun(profile, "ae", "inpaint20", 0), faces, tmp_path / "ae.pt", tmp_path / "ae.partial", cpu,
               progress=False)
    model, state = task.load_checkpoint(profile, tmp_path / "ae.pt", cpu)
    assert state["name"] == "ae" and not model.training
    other = load_profile("params.yaml", "embedded")
    with pytest.raises(ConfigError, match="different training settings"):
        task.load_checkpoint(other, tmp_path / "ae.pt", cpu)
    # Evaluation, timing and adversarial settings are not training settings: the checkpoint stays valid.
    edited = {**profile, "description": "edited", "generative": {**profile["generative"],
              "eval": {**profile["generative"]["eval"], "limit": 3}}}
    task.load_checkpoint(edited, tmp_path / "ae.pt", cpu)
    retrained = {**profile, "generative": {**profile["generative"],
                 "train": {**profile["generative"]["train"], "lr": 0.5}}}
    with pytest.raises(ConfigError, match="different training settings"):
        task.load_checkpoint(retrained, tmp_path / "ae.pt", cpu)


def test_jiio_training_step_and_table4_cell(profile, faces, tmp_path):
    """One supervised JIIO-MDEQ (eq. 24, IFT backward) training run and its Table 4 cell, both PSNR conventions."""
    cpu = torch.device("cpu")
    summary = task.train(task.TrainRun(profile, "jiio100", "inpaint20", 0), faces, tmp_path / "j.pt",
                         tmp_path / "j.partial", cpu, progress=False)
    assert summary["steps"] == profile["generative"]["train"]["inverse_steps"]
    cell = task.table4_cell("sup_jiio100", "inpaint20", profile, str(tmp_path / "j.pt"), faces, cpu, progress=False)
    assert cell["n_images"] == profile["generative"]["eval"]["limit"]
    assert cell["median_psnr_01"] > cell["reference_batch_psnr"]["median"]  # [0,1] range: ~6 dB higher
    json.dumps(cell)


def test_adam_baseline_computes_the_injection_once_per_solve(profile, monkeypatch):
    """The latent maps are evaluated once per forward solve (x is fixed within it), not once per iteration."""
    model = task.build_model(profile, "jiio40", 1).eval()
    calls = {"n": 0}
    inject = model.inject

    def counting(latent):
        calls["n"] += 1
        return inject(latent)

    monkeypatch.setattr(model, "inject", counting)
    observed = torch.rand(2, 1, 16, 16) * 2 - 1
    steps = 3
    result = task.adam_reconstruct_deq(model, observed, None, profile, steps)
    forward_iterations = profile["generative"]["solver"]["forward"]["max_iter"]
    assert result.nfe == steps * forward_iterations
    assert calls["n"] <= 2 * steps  # one no-grad solve and one differentiable attach per step


def test_flip_augmentation_differs_between_batches_of_an_epoch(profile, faces, tmp_path, monkeypatch):
    """Each batch gets its own random flips (a per-step reseed once gave every batch of an epoch the same pattern)."""
    seen = []

    def record(model, run, clean, observed, mask, kl_scale):
        seen.append(clean.clone())
        loss = sum(p.sum() for p in model.parameters()) * 0.0
        return loss, loss.detach(), loss.detach()

    monkeypatch.setattr(task, "_train_step", record)
    train = {**profile["generative"]["train"], "batch_size": 40}
    smoke = {**profile, "generative": {**profile["generative"], "train": train}}
    task.train(task.TrainRun(smoke, "ae", "denoise0.2", 0), faces, tmp_path / "f.pt", tmp_path / "f.partial",
               torch.device("cpu"), progress=False)
    originals = task.to_model_range(faces["train"], torch.device("cpu"))

    def flip_pattern(batch_images):
        return [not any(torch.equal(img, o) for o in originals) for img in batch_images]

    first, second = flip_pattern(seen[0]), flip_pattern(seen[1])
    assert 5 < sum(first) < 35 and first != second
