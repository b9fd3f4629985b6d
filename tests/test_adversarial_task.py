"""The adversarial task (deqbench.tasks.jiio_adversarial): resumable training, divergence handling, attack
properties, table assembly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from deqbench.experiments.config import deep_merge, load_profile
from deqbench.experiments.io import load_artifact
from deqbench.experiments.runtime import DivergenceError, data_source_label
from deqbench.experiments.trainer import StepOutput
from deqbench.tasks.jiio_adversarial import TASK, task
from deqbench.tasks.jiio_adversarial.tables import TABLE5

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
CPU = torch.device("cpu")


def settings(profile_name: str = "smoke", **block):
    return TASK.settings(deep_merge(load_profile(PARAMS, profile_name), {"jiio_adversarial": block}))


@pytest.fixture(scope="module")
def adv():
    return settings(train={"max_steps": 4, "checkpoint_every": 2, "log_every": 1, "batch_size": 8},
                    eval={"limit": 16, "batch_size": 8})


@pytest.fixture(scope="module")
def data(adv):
    prepared = task.prepare_dataset(adv.prepare("mnist"))
    for split in ("train", "test"):
        prepared[split]["images"] = prepared[split]["images"][:64]
        prepared[split]["labels"] = prepared[split]["labels"][:64]
    return prepared


def test_prepared_data_is_labelled_as_stand_in(adv, data):
    assert data["meta"]["stand_in_for"] == "mnist"
    assert "embedded stand-in" in data_source_label(data["meta"])
    assert data["train"]["images"].shape[-1] == adv.params.datasets["mnist"].image_size


def test_job_settings_hold_only_what_the_job_reads(adv):
    clean, pgd, jio = adv.train("mnist", "clean"), adv.train("mnist", "pgd"), adv.train("mnist", "jio")
    assert clean.pgd is None and clean.jio is None  # clean training reads no attack settings
    assert pgd.jio is None and jio.pgd is None  # each adversarial training reads only its own attack
    assert pgd.pgd.steps == adv.params.train.attack_pgd_steps  # training uses the cheaper attacks
    assert jio.jio.iterations == adv.params.train.attack_jio_iterations["mnist"]
    assert adv.evaluate("mnist").attack.pgd.steps == adv.params.attack.pgd.steps
    other = settings(train={"max_steps": 4, "checkpoint_every": 2, "log_every": 1, "batch_size": 8},
                     eval={"limit": 3, "batch_size": 8}, attack={"pgd": {"steps": 7, "step_size": 0.1}})
    assert other.train("mnist", "clean") == clean  # attack and eval settings do not touch clean training
    assert other.train("mnist", "pgd") == pgd  # training has its own PGD steps and step size (train.attack_pgd_*)
    own_step = settings(train={"max_steps": 4, "checkpoint_every": 2, "log_every": 1, "batch_size": 8,
                               "attack_pgd_step_size": None}, attack={"pgd": {"steps": 7, "step_size": 0.1}})
    assert own_step.train("mnist", "pgd").pgd.step_size == 0.1  # null: the test attack's step is used in training
    assert own_step.train("mnist", "pgd").pgd.steps == pgd.pgd.steps  # ... but not its step count
    jio_edited = settings(train={"max_steps": 4, "checkpoint_every": 2, "log_every": 1, "batch_size": 8},
                          attack={"jio": {"memory": 5}})
    assert jio_edited.train("mnist", "pgd") == pgd and jio_edited.train("mnist", "jio") != jio  # PGD models are kept


def test_training_resumes_from_partial_checkpoint(adv, data, tmp_path, monkeypatch):
    job = adv.train("mnist", "clean")
    full = tmp_path / "full.pt"
    task.train(job, data, 0.0, 0, full, tmp_path / "p_full.pt", CPU, progress=False)

    calls = {"n": 0}
    original = task.training_step

    def crash_on_third_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated interruption")
        return original(*args, **kwargs)

    monkeypatch.setattr(task, "training_step", crash_on_third_step)
    out, partial = tmp_path / "resumed.pt", tmp_path / "p.pt"
    with pytest.raises(KeyboardInterrupt):
        task.train(job, data, 0.0, 0, out, partial, CPU, progress=False)
    assert partial.exists() and not out.exists()  # no partial output under the declared name
    monkeypatch.setattr(task, "training_step", original)
    summary = task.train(job, data, 0.0, 0, out, partial, CPU, progress=False)
    assert summary["steps"] == 4 and summary["resumed_from_step"] == 2 and not partial.exists()
    a, b = load_artifact(full)["model"], load_artifact(out)["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_divergence_stops_training_without_output(adv, data, tmp_path, monkeypatch):
    def nan_loss(*args, **kwargs):
        loss = torch.tensor(float("nan"), requires_grad=True)
        return StepOutput(loss, {}, torch.zeros(8))

    monkeypatch.setattr(task, "training_step", nan_loss)
    with pytest.raises(DivergenceError, match="non-finite loss"):
        task.train(adv.train("mnist", "clean"), data, 0.0, 0, tmp_path / "out.pt", tmp_path / "p.pt", CPU,
                   progress=False)
    assert not (tmp_path / "out.pt").exists()


def test_a_checkpoint_of_another_architecture_is_refused(adv, data, tmp_path):
    job = adv.train("mnist", "clean")
    task.train(job, data, 0.0, 0, tmp_path / "m.pt", tmp_path / "p.pt", CPU, progress=False)
    wider = settings(model={"mnist": {"channels": [12, 12], "head_channels": [4, 8]}})
    with pytest.raises(Exception, match="other model settings"):
        task.load_model(wider.evaluate("mnist").net, tmp_path / "m.pt", CPU)


@pytest.mark.parametrize("method", ["pgd", "jio"])
def test_attacks_raise_the_loss_and_respect_the_ball(adv, data, method):
    torch.manual_seed(0)
    job = adv.evaluate("mnist")
    model = task.build_model(job.net, 1, 10).eval()
    images, labels = data["test"]["images"][:16], data["test"]["labels"][:16]
    eps = 1.0
    if method == "pgd":
        delta = task.pgd_perturbation(model, images, labels, job.net, job.attack.pgd, eps)
    else:
        with torch.no_grad():
            delta = task.jio_attack(model, images, labels, job.net, job.attack.jio, eps).x
    assert (delta.flatten(1).norm(dim=1) <= eps + 1e-5).all()
    with torch.no_grad():
        clean_z, _ = task.equilibrium(model, images, job.net)
        adv_z, _ = task.equilibrium(model, images + delta, job.net)
        ce = torch.nn.functional.cross_entropy
        assert ce(model.logits(adv_z), labels) > ce(model.logits(clean_z), labels)


def test_table_assembly_mean_std_and_reference(adv, tmp_path):
    files = []
    for seed, acc in enumerate([50.0, 60.0]):
        for method in ("clean", "pgd", "jio"):
            result = {"accuracy": {"clean": acc, "pgd": acc - 10, "jio": acc - 20}, "eps": 1.0, "n_test": 100,
                      "eps_used": 0.36, "test_attacks": "PGD-20, JIO-80 (memory 2)", "train": {"dataset": "mnist", "method": method, "seed": seed, "steps": 300,
                                                  "train_seconds": 10.0 * (seed + 1),
                                                  "inner_iterations": {"clean": 0, "pgd": 3, "jio": 40}[method],
                                                  "inner_attack": None if method == "clean" else f"{method}-3",
                                                  "warm_start": None if method == "clean" else "clean.pt"},
                      "data_source": "digits28 (embedded stand-in for mnist)"}
            path = tmp_path / f"{method}_{seed}.json"
            path.write_text(json.dumps(result))
            files.append(str(path))
    job = TASK.table("table5").settings_of(settings(tables={"table5": {"datasets": ["mnist"]}}))
    built = TABLE5.build(job, files)
    assert len(built.rows) == 9 and built.caption_fields["seeds"] == [0, 1]
    first = built.rows[0]
    assert first["dataset"] == "MNIST" and first["accuracy_mean"] == 55.0
    assert abs(first["accuracy_std"] - 7.0710678) < 1e-6
    assert first["paper_value"] == 99.45  # the reference column, from the paper's Table 5
    assert TABLE5.reference_columns() == {"accuracy_mean": "paper_value", "accuracy_std": "paper_std",
                                          "train_seconds_mean": "paper_train_hours"}
    assert first["eps_used"] == 0.36 and "0.36 on digits28" in built.caption_fields["eps_used"]
    assert built.caption_fields["attacks"] == "PGD-20, JIO-80 (memory 2) on digits28 (embedded stand-in for mnist)"
    assert first["training"] == "clean: no attack inside, 300 steps"
    assert built.rows[3]["training"] == "pgd: pgd-3 inside, 300 steps fine-tuning the clean model of the same seed"
    # appendix C.5: each model's own training wall clock, mean over seeds, beside the paper's hours
    assert first["train_seconds_mean"] == 15.0 and built.rows[3]["paper_train_hours"] == 13.5
    assert [built.rows[i]["inner_iterations"] for i in (0, 3, 6)] == [0, 3, 40]
    result["eps_used"] = 0.5  # one evaluation at another radius: refused, naming what differs
    Path(files[-1]).write_text(json.dumps(result))
    with pytest.raises(Exception, match="eps_used differs"):
        TABLE5.build(job, files)


def test_eps_scaling_keeps_the_papers_share_of_the_image_norm():
    from deqbench.data import DATASETS, rms_norm, scaled_eps

    images = torch.full((5, 1, 8, 8), 0.5)
    assert rms_norm(images) == pytest.approx(0.5 * 8)  # sqrt(64 * 0.25)
    mnist = DATASETS["mnist"].rms_norm
    assert mnist == pytest.approx((784 * (0.1307**2 + 0.3081**2)) ** 0.5) and 9.3 < mnist < 9.4
    assert scaled_eps(1.0, "mnist", mnist / 2) == pytest.approx(0.5)
    assert scaled_eps(0.7, None, 123.0) == 0.7  # real data keeps the paper's radius


def test_stand_in_attacks_use_the_scaled_radius(adv, data):
    net = adv.evaluate("mnist").net
    scale = task.input_scale(net, data["meta"])
    assert scale == pytest.approx(data["meta"]["rms_norm"] / 9.3725, rel=1e-3)
    torch.manual_seed(0)
    model = task.build_model(net, 1, 10).eval()
    images, labels = data["test"]["images"][:8], data["test"]["labels"][:8]
    delta = task.pgd_perturbation(model, images, labels, net, adv.evaluate("mnist").attack.pgd, 1.0, scale)
    assert (delta.flatten(1).norm(dim=1) <= scale + 1e-5).all()


def test_warm_started_adversarial_training_needs_and_uses_the_clean_model(data, tmp_path):
    warm = settings(train={"max_steps": 4, "checkpoint_every": 2, "log_every": 1, "batch_size": 8,
                           "warm_start_steps": 2, "warm_start_lr": 1e-4})
    job = warm.train("mnist", "pgd")
    assert job.warm_start_steps == 2 and job.lr == 1e-4 and warm.train("mnist", "clean").warm_start_steps is None
    with pytest.raises(Exception, match="--init"):
        task.train(job, data, 1.0, 0, tmp_path / "pgd.pt", tmp_path / "p.pt", CPU, progress=False)
    task.train(warm.train("mnist", "clean"), data, 0.0, 0, tmp_path / "clean.pt", tmp_path / "pc.pt", CPU,
               progress=False)
    summary = task.train(job, data, 1.0, 0, tmp_path / "pgd.pt", tmp_path / "p.pt", CPU, progress=False,
                         init=tmp_path / "clean.pt")
    assert summary["steps"] == 2 and summary["warm_start"].endswith("clean.pt")
    assert summary["inner_attack"] == f"PGD-{job.pgd.steps} (step {job.pgd.step_size:g} x eps)"


@pytest.mark.slow
def test_pgd_attack_lowers_accuracy_of_a_trained_model(tmp_path):
    """Train a clean MDEQ briefly on the embedded digits stand-in; PGD-20 must lower its accuracy."""
    adv = settings("embedded", train={"max_steps": 100, "log_every": 50, "checkpoint_every": 1000},
                   eval={"limit": 50})
    prepared = task.prepare_dataset(adv.prepare("mnist"))
    task.train(adv.train("mnist", "clean"), prepared, 0.0, 0, tmp_path / "m.pt", tmp_path / "p.pt", CPU,
               progress=False)
    result = task.evaluate(adv.evaluate("mnist"), tmp_path / "m.pt", prepared, 1.0, CPU, progress=False)
    acc = result["accuracy"]
    assert acc["clean"] > 30.0  # well above chance (10%)
    assert acc["pgd"] < acc["clean"] - 20.0
    assert acc["jio"] < acc["clean"]
    assert result["max_perturbation_norm"] <= 1.0 + 1e-5
    jio = adv.evaluate("mnist").attack.jio
    assert f"JIO-{jio.iterations} (Anderson type {jio.anderson_kind}, memory {jio.memory}" in result["test_attacks"]


def test_table2_times_both_methods_at_equal_engineering_with_their_counts(adv, data):
    import dataclasses

    job = adv.timing()
    job = dataclasses.replace(job, timing=dataclasses.replace(job.timing, batch_sizes=(2,), repeats=1, warmup=0))
    rows = task.time_attacks(job, data, CPU, progress=False)
    assert [(r["method"], r["engineering"]) for r in rows] == [("pgd", "eager"), ("jio", "eager")]  # no CUDA here
    pgd, jio = rows
    steps, fwd, bwd = job.attack.pgd.steps, job.net.solver.forward.max_iter, job.net.solver.backward.max_iter
    assert (pgd["f_evals"], pgd["vjps"], pgd["injections"]) == (steps * (fwd + 1), steps * (bwd + 1), 2 * steps)
    assert (jio["f_evals"], jio["vjps"]) == (job.attack.jio.iterations,) * 2
    assert pgd["pgd_over_jio"] == jio["pgd_over_jio"] > 0
    assert pgd["graph_captures"] == jio["graph_captures"] == 0  # eager: no graphs


def test_attacks_compute_the_stem_injection_as_counted(adv, data):
    """PGD computes the injection once per solve (plus once with grad to attach z*), JIIO once per iteration."""
    job = adv.timing()
    torch.manual_seed(0)
    model = task.build_model(job.net, 1, 10).eval()
    calls = {"n": 0}
    model.stem.register_forward_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
    images, labels = data["test"]["images"][:4], data["test"]["labels"][:4]
    counts = task.nominal_counts(job)
    task.pgd_perturbation(model, images, labels, job.net, job.attack.pgd, 1.0)
    assert calls["n"] == counts["pgd"]["injections"]
    calls["n"] = 0
    with torch.no_grad():
        task.jio_attack(model, images, labels, job.net, job.attack.jio, 1.0)
    assert calls["n"] == counts["jio"]["injections"]


def test_attack_memory_is_measured_per_method_and_tabled_with_the_papers_values(adv, data, tmp_path):
    """Appendix C.6: each attack's peak working memory above the pre-call level, and the JIO / PGD ratio."""
    from deqbench.tasks.jiio_adversarial.tables import MEMORY_ADVERSARIAL

    job = settings(memory={"dataset": "mnist", "batch_size": 8}).memory()
    rows = [task.attack_memory(job, data, m, CPU) for m in task.MEMORY_METHODS]
    assert [(r["method"], r["iterations"]) for r in rows] == [("pgd", job.attack.pgd.steps),
                                                            ("jio", job.attack.jio.iterations)]
    assert all(r["batch_size"] == 8 and r["peak_bytes"] >= 0 and r["measure"] for r in rows)
    with pytest.raises(Exception, match="must be one of"):
        task.attack_memory(job, data, "adam", CPU)
    rows[0]["peak_bytes"], rows[1]["peak_bytes"] = 100, 150
    path = tmp_path / "memory.json"
    path.write_text(json.dumps({"rows": rows, "data_source": "digits28",
                                "provenance": {"device": {"type": "cpu", "name": "cpu"}}}))
    table_job = TASK.table("memory_adversarial").settings_of(settings(memory={"dataset": "mnist", "batch_size": 8}))
    built = MEMORY_ADVERSARIAL.build(table_job, [str(path)])
    assert [r["jio_over_pgd"] for r in built.rows] == [1.5, 1.5]
    assert [r["paper_gb"] for r in built.rows] == [2.15, 2.19]


def test_jio_training_gradient_from_mu_or_an_adjoint_solve(adv, data):
    """train.jio_backward: eq. 19's mu* (no second solve) or an IFT adjoint solve warm-started at mu*; both give
    finite parameter gradients, the same loss value and the same head gradient (the head does not see the solve)."""
    images, labels = data["train"]["images"][:8], data["train"]["labels"][:8]
    grads, losses = {}, {}
    for backward in ("mu", "ift"):
        job = settings(train={"jio_backward": backward, "jac_reg": 0.0}).train("mnist", "jio")
        assert job.jio_backward == backward
        torch.manual_seed(0)
        model = task.build_model(job.net, 1, 10)
        out = task.training_step(model, images, labels, job, 1.0)
        out.loss.backward()
        losses[backward] = float(out.loss)
        grads[backward] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        assert all(torch.isfinite(g).all() for g in grads[backward].values())
    assert losses["mu"] == pytest.approx(losses["ift"])
    assert torch.allclose(grads["mu"]["head.classifier.weight"], grads["ift"]["head.classifier.weight"])
    assert settings(train={"jio_backward": "ift"}).train("mnist", "pgd").jio_backward == "mu"  # JIO training only
