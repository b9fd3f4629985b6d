"""The JIIO meta-learning task (deqbench.tasks.jiio_meta): settings validation, the meta-step plumbing, the
evaluation statistics, the trivial answers and the table builders (spec B.4-B.7)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from deqbench.data.omniglot import load_digits_meta
from deqbench.experiments.config import ConfigError, resolve_profile
from deqbench.experiments.registry import get_task
from deqbench.experiments.trainer import LoopSettings
from deqbench.meta import module_params
from deqbench.models.conv4 import Conv4
from deqbench.tasks.jiio_meta.tables import build_table6, build_table7
from deqbench.tasks.jiio_meta.task import method_label
from deqbench.tasks.jiio_meta.training import (
    _surrogate, interval, jiio_deq_config, jiio_deq_model, trivial_answers,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def settings():
    """Typed settings of the smoke profile's jiio_meta block."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    return get_task("jiio_meta").settings(resolve_profile(params, "smoke"))


def _profile_with(**block_overrides):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    block = params["profiles"]["paper"]["jiio_meta"]
    for dotted, value in block_overrides.items():
        node = block
        *path, last = dotted.split("__")
        for key in path:
            node = node[key]
        node[last] = value
    return get_task("jiio_meta").settings(resolve_profile(params, "paper"))


def test_paper_profile_has_the_spec_settings():
    s = _profile_with()
    p = s.params
    assert p.data.source == "omniglot" and (p.data.n_way, p.data.k_shot, p.data.k_query) == (5, 1, 1)
    assert p.eval.tasks == 600 and p.jiio_deq.meta_batch == 80 and p.jiio_deq.model.task_dim == 400
    assert p.jiio_deq.inner.iterations == 100 and tuple(p.jiio_deq.inner.alpha) == (0.8, 0.6, 0.04)
    assert (p.maml.inner_steps, p.maml.inner_lr, p.imaml.lam, p.imaml.cg_steps) == (1, 0.4, 2.0, 5)
    assert (p.timing.adam_steps, p.timing.jiio_iterations) == (20, 100)


@pytest.mark.parametrize("override, key", [
    ({"methods": ["maml", "maml"]}, "methods"),
    ({"jiio_deq__model__task_dim": 401}, "task_dim"),
    ({"jiio_deq__model__block_groups": 7}, "block_groups"),
    ({"jiio_deq__inner__alpha_x_switch": 101}, "alpha_x_switch"),
    ({"timing__tasks": 601}, "timing.tasks"),
    ({"jiio_deq__inner__train_iterations": 101}, "train_iterations"),
])
def test_bad_settings_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        _profile_with(**override)


def test_unlisted_method_is_refused(settings):
    narrowed = type(settings)(settings.info, dataclasses.replace(settings.params, methods=("maml",)))
    with pytest.raises(ConfigError, match="methods"):
        narrowed.train("imaml")
    with pytest.raises(ConfigError, match="unknown meta-learning method"):
        settings.method_params("protonet")


def test_surrogate_has_the_value_and_the_meta_gradient():
    model = Conv4(hidden=8)
    params = module_params(model)
    grads = {k: torch.randn_like(v) for k, v in params.items()}
    loss = _surrogate(params, grads, torch.tensor(1.25))
    assert float(loss.detach()) == pytest.approx(1.25, abs=1e-5)
    loss.backward()
    for k, p in params.items():
        torch.testing.assert_close(p.grad, grads[k])


def test_linear_schedule_anneals_reptile_outer_step():
    loop = LoopSettings(steps=10, checkpoint_every=5, log_every=1, lr=1.0, lr_schedule="linear", lr_min=0.0)
    assert [loop.lr_at(s) for s in (0, 5, 10, 20)] == [1.0, 0.5, 0.0, 0.0]


def test_interval_is_the_normal_95_percent_half_width():
    out = interval([0.0, 1.0, 1.0, 0.0])
    assert out["accuracy"] == 50.0 and out["tasks"] == 4
    assert out["ci95"] == pytest.approx(100 * 1.96 * math.sqrt(1 / 3) / 2)


def test_trivial_answers_on_the_stand_in(settings):
    splits = load_digits_meta(image_size=8)
    out = trivial_answers(settings.params.data, splits, tasks=40, seed=3)
    assert out["chance"]["accuracy"] == pytest.approx(20.0) and out["chance"]["ci95"] == 0.0
    assert 20.0 < out["pixel_1nn"]["accuracy"] <= 100.0  # digits are far from random in pixel space


def test_film_weights_start_random_and_biases_zero(settings):
    """Zero FiLM weights with x0 = 0 is a stationary point of the meta-problem (J_x = 0 keeps x at 0): the task
    draws the weights, so at x = 0 the model equals the unconditioned MDEQ but x can learn."""
    model = jiio_deq_model(settings.params.jiio_deq, 5)
    for block in model.blocks:
        assert block.film.weight.abs().sum() > 0 and block.film.bias.abs().sum() == 0
    x = torch.rand(2, 1, 8, 8)
    z0 = model.z0(x)
    f = model.task_layer_fn(x)
    zero = f(z0, torch.zeros(2, model.config.task_dim))
    plain = model.layer_fn(x)(z0, torch.zeros_like(x))
    for a, b in zip(zero, plain):
        torch.testing.assert_close(a, b)


def _result(method: str, accuracy: float) -> dict:
    return {"method": method, "label": method, "data_source": "digits (embedded stand-in for omniglot)",
            "accuracy": accuracy, "ci95": 1.0, "tasks": 4,
            "train": {"num_parameters": 10, "steps": 2, "meta_batch": 2, "train_seconds": 1.0, "seed": 0}}


def test_table6_rows_and_margins(settings, tmp_path):
    files = []
    for i, method in enumerate(settings.params.methods):
        path = tmp_path / f"{method}.json"
        path.write_text(json.dumps(_result(method, 30.0 + i)))
        files.append(str(path))
    trivial = tmp_path / "trivial.json"
    trivial.write_text(json.dumps({"data_source": "digits", "answers": {
        "chance": {"accuracy": 20.0, "ci95": 0.0, "tasks": 4}, "pixel_1nn": {"accuracy": 50.0, "ci95": 5.0, "tasks": 4}}}))
    built = build_table6(settings.table("table6"), files + [str(trivial)])
    by = {r["method"]: r for r in built.rows}
    assert list(by) == ["maml", "reptile", "imaml", "jiio_deq", "chance", "pixel_1nn"]
    assert by["maml"]["margin_over_chance"] == pytest.approx(by["maml"]["accuracy"] - 20.0)
    assert by["jiio_deq"]["paper_accuracy"] == 97.33 and "paper_accuracy" not in by["chance"]
    with pytest.raises(ConfigError, match="missing"):
        build_table6(settings.table("table6"), files[:2] + [str(trivial)])


def test_table7_ratio(settings, tmp_path):
    row = {"label": "x", "iterations": 1, "ms_per_task": 1.0, "f_evals": 1, "vjps": 1, "support_cost_mean": 0.0,
           "query_accuracy": 20.0}
    result = {"tasks": 2, "support_images": 10, "repeats": 1, "warmup": 0, "threads": 1, "data_source": "digits",
              "rows": {"adam": {**row, "ms_per_batch": 30.0}, "jiio": {**row, "ms_per_batch": 10.0}},
              "provenance": {"device": {"cpu": "x86_64", "threads": 1}}}
    path = tmp_path / "timing.json"
    path.write_text(json.dumps(result))
    built = build_table7(settings.table("table7"), [str(path)])
    assert [r["ratio_to_jiio"] for r in built.rows] == [3.0, 1.0]
    assert built.rows[0]["paper_ratio_to_jiio"] == pytest.approx(28948 / 11836, abs=1e-4)


def test_contractive_gain_makes_the_initial_solve_converge():
    """At PyTorch's init the embedded FiLM-MDEQ's solve stalls on the stand-in; the contractive gain starts f
    contractive, so 18 Broyden iterations reach a much smaller residual (params.yaml, embedded profile; mean over
    five initialisations, since single draws vary by 3x)."""
    from deqbench.core.deq import fixed_point

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    embedded = get_task("jiio_meta").settings(resolve_profile(params, "embedded")).params
    block = embedded.jiio_deq
    images = load_digits_meta(image_size=embedded.data.image_size).meta_train.images[0][:8].unsqueeze(1)
    residuals: dict = {None: 0.0, block.model.contractive_gain: 0.0}
    for seed in range(5):
        for gain in residuals:
            torch.manual_seed(seed)
            model = jiio_deq_model(
                dataclasses.replace(block, model=dataclasses.replace(block.model, contractive_gain=gain)), 5)
            f = model.task_layer_fn(images)
            x = torch.zeros(images.shape[0], model.config.task_dim)
            stats: dict = {}
            with torch.no_grad():
                fixed_point(lambda z: f(z, x), model.z0(images), solver="broyden", max_iter=18, tol=0.0, stats=stats)
            residuals[gain] += float(stats["forward"].residual.mean()) / 5
    assert block.model.contractive_gain is not None
    assert residuals[block.model.contractive_gain] < 0.5 * residuals[None], residuals


def test_meta_training_inner_loop_is_shortened_only_in_meta_steps():
    """``inner.train_iterations`` shortens the inner loop of meta-training only, moves the switch of x's damping
    proportionally, and the Table 6 row says so; evaluation keeps the paper's 100 iterations."""
    s = _profile_with(jiio_deq__inner__train_iterations=40)
    p = s.params.jiio_deq
    train, test = jiio_deq_config(p, meta_training=True), jiio_deq_config(p)
    assert (train.inner_iters, train.alpha_x_switch) == (40, 26)
    assert (test.inner_iters, test.alpha_x_switch) == (100, 65)
    assert "meta-trained with JIIO-40 inner loops, tested with JIIO-100" in method_label(s.train("jiio_deq"))
    plain = _profile_with().params.jiio_deq
    assert plain.inner.for_meta_training() is plain.inner
    assert jiio_deq_config(plain, meta_training=True) == jiio_deq_config(plain)
    assert "meta-trained with" not in method_label(_profile_with().train("jiio_deq"))
