"""The generative / inverse-problem task (deqbench.tasks.jiio_generative) on the smoke profile."""

from __future__ import annotations

import json

import pytest
import torch

from deqbench.experiments.config import ConfigError, deep_merge, load_profile
from deqbench.experiments.io import load_artifact
from deqbench.experiments.runtime import DivergenceError, data_source_label
from deqbench.experiments.trainer import StepOutput
from deqbench.tasks.jiio_generative import TASK, methods, task
from deqbench.tasks.jiio_generative.settings import MODELS
from deqbench.tasks.jiio_generative.tables import TABLE4_ROWS, cell_job

CPU = torch.device("cpu")


def settings(**block):
    return TASK.settings(deep_merge(load_profile("params.yaml", "smoke"), {"jiio_generative": block}))


@pytest.fixture(scope="module")
def gen():
    return settings()


@pytest.fixture(scope="module")
def faces(gen):
    return task.prepare_faces(gen.prepare())


def test_prepared_faces_are_labelled_stand_ins(faces):
    assert faces["train"].dtype == torch.uint8 and faces["train"].shape[1:] == (1, 16, 16)
    assert faces["train"].shape[0] + faces["test"].shape[0] == 100
    assert data_source_label(faces["meta"]) == "lfw-faces (embedded stand-in for celeba)"


def test_problems_come_from_params(gen):
    assert gen.problem("reconstruct").kind == "none"
    inpaint = gen.problem("inpaint20")
    assert inpaint.kind == "inpaint" and inpaint.window == gen.params.problems["inpaint20"].window
    assert gen.problem("denoise0.4").sigma == 0.4
    with pytest.raises(ConfigError, match="unknown problem 'blur'.*jiio_generative.problems"):
        gen.problem("blur")


def test_alpha_x_is_reduced_only_in_runs_longer_than_the_switch(gen):
    switch = gen.params.jiio.alpha_x_switch
    short, long = gen.jiio(switch), gen.jiio(switch + 1)
    assert short.alpha_x_late is None and short.alpha_x_switch is None
    assert long.alpha_x_late == gen.params.jiio.alpha_x_late and long.alpha_x_switch == switch
    assert long.memory == gen.params.jiio.memory and long.anderson_kind == "I"


def test_every_model_builds_from_params(gen):
    for name in MODELS:
        model = methods.build_model(gen.architecture(name), 1)
        assert model.describe()["num_parameters"] > 0
    with pytest.raises(ConfigError, match="unknown model 'gan'"):
        gen.architecture("gan")


def test_supervised_and_unsupervised_models_need_matching_problems(gen):
    with pytest.raises(ConfigError, match="vae is an unsupervised generative model"):
        gen.train("vae", "inpaint20")
    with pytest.raises(ConfigError, match="ae is a supervised inverse-problem model"):
        gen.train("ae", "reconstruct")


def test_cell_settings_cover_only_their_method(gen):
    """A Table 4 cell that reconstructs with Adam on an explicit decoder does not read JIIO's settings, and vice
    versa: editing one leaves the other's rerun hash alone."""
    edited = settings(jiio={"memory": 7}, adam={"lr_explicit": 0.05})
    vae_adam = lambda s: cell_job(s, "table4", "unsup_vae_adam", "denoise0.2")  # noqa: E731
    jiio_row = lambda s: cell_job(s, "table4", "unsup_jiio100", "denoise0.2")  # noqa: E731
    assert vae_adam(gen).method.solver is None and vae_adam(gen) != vae_adam(edited)
    assert jiio_row(gen) != jiio_row(edited)
    assert settings(jiio={"memory": 7}).train("vae", "reconstruct") == gen.train("vae", "reconstruct")
    assert {r.key for r in TABLE4_ROWS} >= {"sup_ae", "unsup_jiio40"}


def test_training_resumes_bit_identically(gen, faces, tmp_path, monkeypatch):
    """An interrupted run resumes from its partial checkpoint and ends where an uninterrupted one ends."""
    job = gen.train("vae", "reconstruct")
    task.train(job, faces, 3, tmp_path / "full.pt", tmp_path / "full.partial", CPU, progress=False)
    original = methods.TRAINING_STEPS["conv_autoencoder"]
    calls = {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setitem(methods.TRAINING_STEPS, "conv_autoencoder", interrupted)
    with pytest.raises(KeyboardInterrupt):
        task.train(job, faces, 3, tmp_path / "resumed.pt", tmp_path / "resumed.partial", CPU, progress=False)
    assert (tmp_path / "resumed.partial").exists() and not (tmp_path / "resumed.pt").exists()
    monkeypatch.setitem(methods.TRAINING_STEPS, "conv_autoencoder", original)
    task.train(job, faces, 3, tmp_path / "resumed.pt", tmp_path / "resumed.partial", CPU, progress=False)
    assert not (tmp_path / "resumed.partial").exists()
    full, resumed = load_artifact(tmp_path / "full.pt")["model"], load_artifact(tmp_path / "resumed.pt")["model"]
    for key in full:
        torch.testing.assert_close(full[key], resumed[key], rtol=0, atol=0)


def test_divergence_stops_without_a_checkpoint(gen, faces, tmp_path, monkeypatch):
    def nan_step(model, job, clean, observed, mask, kl_scale):
        loss = sum(p.sum() for p in model.parameters()) * float("nan")
        return StepOutput(loss, {}, loss.detach())

    monkeypatch.setitem(methods.TRAINING_STEPS, "conv_autoencoder", nan_step)
    with pytest.raises(DivergenceError, match="non-finite"):
        task.train(gen.train("ae", "denoise0.2"), faces, 0, tmp_path / "x.pt", tmp_path / "x.partial", CPU,
                   progress=False)
    assert not (tmp_path / "x.pt").exists()


def test_checkpoints_refuse_another_architecture(gen, faces, tmp_path):
    task.train(gen.train("ae", "inpaint20"), faces, 0, tmp_path / "ae.pt", tmp_path / "ae.partial", CPU,
               progress=False)
    model, state = task.load_model(gen.architecture("ae"), tmp_path / "ae.pt", CPU)
    assert state["name"] == "ae" and not model.training
    wider = settings(conv_ae={"channels": [8, 16, 32]})
    with pytest.raises(ConfigError, match="another architecture"):
        task.load_model(wider.architecture("ae"), tmp_path / "ae.pt", CPU)


def test_jiio_training_step_and_table4_cell(gen, faces, tmp_path):
    """One supervised JIIO-MDEQ (eq. 24, IFT backward) training run and its Table 4 cell, both PSNR conventions."""
    summary = task.train(gen.train("jiio100", "inpaint20"), faces, 0, tmp_path / "j.pt", tmp_path / "j.partial", CPU,
                         progress=False)
    assert summary["steps"] == gen.params.train.inverse_steps
    cell = task.evaluate_cell(cell_job(gen, "table4", "sup_jiio100", "inpaint20"), str(tmp_path / "j.pt"), None,
                              faces, CPU, progress=False)
    assert cell["n_images"] == gen.params.eval.limit
    assert cell["median_psnr_01"] > cell["reference_batch_psnr"]["median"]  # [0,1] range: ~6 dB higher
    examples = cell.pop("examples")  # for the PNG grid, written beside the JSON by the stage
    assert examples["observed"].shape == examples["recovered"].shape == examples["target"].shape
    json.dumps(cell)


def test_adam_baseline_computes_the_injection_once_per_solve(gen, monkeypatch):
    """The latent maps are evaluated once per forward solve (x is fixed within it), not once per iteration."""
    model = methods.build_model(gen.architecture("jiio40"), 1).eval()
    calls = {"n": 0}
    inject = model.inject

    def counting(latent):
        calls["n"] += 1
        return inject(latent)

    monkeypatch.setattr(model, "inject", counting)
    observed = torch.rand(2, 1, 16, 16) * 2 - 1
    solve = gen.adam("jiio40")
    result = methods.adam_reconstruct_deq(model, observed, None, solve)
    assert result.nfe == solve.steps * gen.params.solver.forward.max_iter
    assert calls["n"] <= 2 * solve.steps  # one no-grad solve and one differentiable attach per step


def test_flip_augmentation_differs_between_batches_of_an_epoch(faces, tmp_path, monkeypatch):
    """Each batch gets its own random flips (a per-step reseed once gave every batch of an epoch the same pattern)."""
    seen = []

    def record(model, job, clean, observed, mask, kl_scale):
        seen.append(clean.clone())
        loss = sum(p.sum() for p in model.parameters()) * 0.0
        return StepOutput(loss, {}, loss.detach())

    monkeypatch.setitem(methods.TRAINING_STEPS, "conv_autoencoder", record)
    job = settings(train={"batch_size": 40}).train("ae", "denoise0.2")
    task.train(job, faces, 0, tmp_path / "f.pt", tmp_path / "f.partial", CPU, progress=False)
    originals = methods.to_model_range(faces["train"], CPU)

    def flip_pattern(batch_images):
        return [not any(torch.equal(img, o) for o in originals) for img in batch_images]

    first, second = flip_pattern(seen[0]), flip_pattern(seen[1])
    assert 5 < sum(first) < 35 and first != second


def test_pca_reference_decodes_codes_in_its_span_exactly_and_projects_full_observations():
    """The linear reference of Table 4: least squares on the observed pixels recovers any image in mean + span(V)
    from a partial observation, and with every pixel observed it is the orthogonal projection."""
    gen_ = torch.Generator().manual_seed(0)
    train = torch.rand(30, 1, 8, 8, generator=gen_) * 2 - 1
    mean, basis = methods.pca_basis(train, 5)
    assert basis.shape == (5, 64)
    assert torch.allclose(basis @ basis.T, torch.eye(5), atol=1e-5)
    inside = mean + (torch.randn(3, 5, generator=gen_) @ basis).view(3, 1, 8, 8)
    mask = torch.ones(3, 1, 8, 8)
    mask[:, :, 2:6, 2:6] = 0  # a 4x4 window unobserved
    observed = inside * mask
    assert torch.allclose(methods.pca_reconstruct(mean, basis, observed, mask), inside, atol=1e-4)
    y = torch.rand(3, 1, 8, 8, generator=gen_)
    projected = mean.reshape(1, -1) + (y - mean).reshape(3, -1) @ basis.T @ basis
    assert torch.allclose(methods.pca_reconstruct(mean, basis, y, None).reshape(3, -1), projected, atol=1e-5)


def test_pca_reference_row_is_computed_from_the_training_faces(gen, faces):
    job = cell_job(gen, "table4", "ref_pca", "denoise0.2")
    assert job.arch is None and job.method.kind == "pca_projection"
    assert job.method.components == gen.params.generator.latent_dim
    cell = task.evaluate_cell(job, None, None, faces, CPU, progress=False)
    mean = task.evaluate_cell(cell_job(gen, "table4", "ref_mean_image", "denoise0.2"), None, None, faces, CPU, False)
    assert cell["median_psnr_01"] > mean["median_psnr_01"] + 1  # a latent-size linear decoder beats the mean face
    inpaint = task.evaluate_cell(cell_job(gen, "table4", "ref_pca", "inpaint20"), None, None, faces, CPU, False)
    assert inpaint["composite"]["median_psnr_01"] >= inpaint["median_psnr_01"] - 1e-6


def test_trivial_answer_rows_need_no_model_and_match_direct_psnr(gen, faces):
    """Table 4's reference rows: the observation returned unchanged and the mean training image, scored exactly like
    the models (and the inpainting composite that keeps the observed pixels)."""
    from deqbench.data.inverse import corrupt
    from deqbench.metrics import median_psnr

    job = cell_job(gen, "table4", "ref_corrupted_input", "denoise0.2")
    assert job.arch is None and job.method.kind == "corrupted_input"
    cell = task.evaluate_cell(job, None, None, faces, CPU, progress=False)
    clean = methods.to_model_range(task.test_images(faces, job.limit), CPU)
    noise = torch.Generator().manual_seed(job.corruption_seed)
    observed, _ = corrupt(job.problem.inverse_problem(), clean, noise)  # one batch: the same draws as the cell
    assert job.batch_size >= clean.shape[0]
    assert cell["median_psnr_01"] == pytest.approx(median_psnr(observed, clean))
    assert cell["train"]["seed"] is None and "composite" not in cell
    mean = task.evaluate_cell(cell_job(gen, "table4", "ref_mean_image", "inpaint20"), None, None, faces, CPU,
                              progress=False)
    assert mean["composite"]["median_psnr_01"] > mean["median_psnr_01"]  # the observed pixels are exact
    with pytest.raises(ConfigError, match="needs --checkpoint"):
        task.evaluate_cell(cell_job(gen, "table4", "unsup_jiio40", "inpaint20"), None, None, faces, CPU, False)
