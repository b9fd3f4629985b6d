"""MDEQ classifier (deqbench.models.mdeq): shapes, per-example independence, norms, gradients, size."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deqbench.models.mdeq import MDEQClassifier, MDEQConfig
from deqbench.core.norms import norm_computations
from deqbench.core.solvers import solve

REFERENCE_MNIST_PARAMS = 158_554  # reference MNIST classifier (notes, section 2)
REFERENCE_CIFAR_SMALL_PARAMS = 158_986  # reference CIFAR-small classifier


def small_config(num_branches: int = 2, in_channels: int = 1, **overrides) -> MDEQConfig:
    kw = dict(
        in_channels=in_channels,
        channels=(8,) * num_branches,
        expansion=2,
        block_groups=4,
        fuse_groups=4,
        post_fuse_groups=2,
        head_channels=(4,) * (num_branches - 1) + (8,),
        final_channels=32,
    )
    kw.update(overrides)
    return MDEQConfig(**kw)


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("num_branches", [2, 3])
@pytest.mark.parametrize("image_shape", [(1, 28, 28), (3, 32, 32), (1, 13, 13)], ids=["mnist", "cifar", "odd13"])
def test_output_shapes(num_branches, image_shape):
    cfg = small_config(num_branches, in_channels=image_shape[0])
    model = MDEQClassifier(cfg)
    images = torch.rand(2, *image_shape)
    z0 = model.z0(images)
    inj = model.inject(images)
    h, w = image_shape[1:]
    expect = []
    for i, c in enumerate(cfg.channels):
        expect.append((2, c, h, w))
        h, w = (h + 1) // 2, (w + 1) // 2
    assert [tuple(t.shape) for t in z0] == expect
    assert [tuple(t.shape) for t in inj] == expect
    assert all(torch.count_nonzero(t) == 0 for t in inj[1:])  # zero injection beyond branch 0
    fz = model.layer(z0, inj)
    assert [tuple(t.shape) for t in fz] == expect
    with torch.no_grad():
        logits = model(images, max_iter=4)
    assert logits.shape == (2, cfg.num_classes)
    assert torch.isfinite(logits).all()


def test_paper_configs_forward_shapes():
    for in_ch, size in [(1, 28), (3, 32)]:
        model = MDEQClassifier(MDEQConfig(in_channels=in_ch))
        with torch.no_grad():
            logits = model(torch.rand(2, in_ch, size, size), max_iter=3)
        assert logits.shape == (2, 10)


def test_layer_fn_and_cost_fn():
    model = MDEQClassifier(small_config())
    images, labels = torch.rand(3, 1, 12, 12), torch.tensor([0, 3, 9])
    z = tuple(torch.randn_like(t) for t in model.z0(images))
    f = model.layer_fn(images)
    delta = 0.1 * torch.randn_like(images)
    for a, b in zip(f(z, delta), model.layer(z, model.inject(images + delta))):
        torch.testing.assert_close(a, b)
    cost = model.cost_fn(labels)(z)
    assert cost.shape == (3,)
    torch.testing.assert_close(cost, -F.cross_entropy(model.logits(z), labels, reduction="none"))


def test_works_with_jiio():
    """Smoke test: the tuple-state layer_fn / cost_fn plug into deqbench.inputopt.jiio."""
    from deqbench.inputopt.jiio import jiio

    model = MDEQClassifier(small_config())
    images, labels = torch.rand(2, 1, 12, 12), torch.tensor([1, 2])
    res = jiio(model.layer_fn(images), model.cost_fn(labels), model.z0(images), torch.zeros_like(images),
               max_iter=6, alpha=(0.8, 0.6, 0.1), projection="l2", eps=1.0, backward="none")
    assert res.x.shape == images.shape
    assert torch.isfinite(res.cost).all()
    assert (res.x.flatten(1).norm(dim=1) <= 1.0 + 1e-5).all()


# ----------------------------------------------------------------------------- independence


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_per_example_independence_through_solve(mode):
    torch.manual_seed(1)
    model = MDEQClassifier(small_config())
    model.train(mode == "train")
    a = torch.rand(4, 1, 12, 12)
    b = a.clone()
    b[1:] = torch.rand(3, 1, 12, 12) * 3.0  # different other examples, same batch size
    stats_a: dict = {}
    stats_b: dict = {}
    with torch.no_grad():
        la = model(a, max_iter=18, stats=stats_a)
        lb = model(b, max_iter=18, stats=stats_b)
    torch.testing.assert_close(la[0], lb[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(stats_a["forward"].trace[0], stats_b["forward"].trace[0], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(la[1:], lb[1:])  # the others did change
    # with gradients on (train-time path) too
    la_g = model(a, max_iter=18)
    lb_g = model(b, max_iter=18)
    torch.testing.assert_close(la_g[0], lb_g[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(la_g[0].detach(), la[0], rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- norms


def test_no_batchnorm_and_group_counts():
    cfg = small_config(3, block_groups=2, fuse_groups=4, post_fuse_groups=1)
    model = MDEQClassifier(cfg)
    for name, module in model.named_modules():
        assert not isinstance(module, nn.modules.batchnorm._BatchNorm), name
        assert not isinstance(module, (nn.InstanceNorm2d, nn.LayerNorm, nn.SyncBatchNorm)), name
    expected = {"stem": 4, "blocks": 2, "fuse": 4, "post_fuse": 1, "head": 4}
    n_gn = 0
    for name, module in model.named_modules():
        if isinstance(module, nn.GroupNorm):
            n_gn += 1
            assert module.num_groups == expected[name.split(".")[0]], name
    assert n_gn > 0
    info = model.describe()
    json.dumps(info)  # provenance record is JSON-serialisable
    assert info["num_batchnorm"] == 0
    assert info["groupnorm_groups"] == {"injection": [4], "block": [2], "fuse": [4], "post_fuse": [1], "head": [4]}
    assert info["config"]["channels"] == [8, 8, 8]
    assert info["num_parameters"] == model.num_parameters()

    default = MDEQClassifier(MDEQConfig()).describe()
    assert default["groupnorm_groups"] == {"injection": [8], "block": [4], "fuse": [8], "post_fuse": [4], "head": [8]}


def test_weight_norm_placement_and_once_per_forward():
    model = MDEQClassifier(small_config(3))
    normed = {name for name, m in model.named_modules() if hasattr(m, "weight_g")}
    expected = {f"blocks.{i}.conv{k}" for i in range(3) for k in (1, 2)} | {f"post_fuse.{i}.conv" for i in range(3)}
    assert normed == expected
    assert set(model.describe()["weight_normed"]) == expected
    images = torch.rand(2, 1, 12, 12)
    model.train()
    before = norm_computations(model)
    logits = model(images, max_iter=10)
    assert norm_computations(model) - before == len(expected)  # once per normed conv, not per f call
    logits.sum().backward()

    plain = MDEQClassifier(small_config(3, weight_norm=False))
    assert not any(hasattr(m, "weight_g") for m in plain.modules())
    assert plain.num_parameters() == model.num_parameters() - sum(
        p.numel() for n, p in model.named_parameters() if n.endswith("weight_g"))


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(channels=()), "channels"),
        (dict(channels=(8, 6), head_channels=(4, 8)), "channels"),  # 6 not divisible by fuse_groups=4
        (dict(channels=(8, 0)), "channels"),
        (dict(block_groups=3), "channels"),  # channels not divisible by block_groups
        (dict(head_channels=(4,)), "head_channels"),
        (dict(head_channels=(4, 6)), "head_channels"),
        (dict(final_channels=30), "final_channels"),
        (dict(expansion=0), "expansion"),
        (dict(block_groups=0), "block_groups"),
        (dict(fuse_groups=-1), "fuse_groups"),
        (dict(post_fuse_groups=1.5), "post_fuse_groups"),
        (dict(in_channels=0), "in_channels"),
        (dict(num_classes=0), "num_classes"),
        (dict(weight_norm="yes"), "weight_norm"),
        (dict(dropout=0.1), "dropout"),
        (dict(dropout=1.5), "dropout"),
    ],
)
def test_config_validation_names_field(overrides, field):
    with pytest.raises(ValueError, match=rf"\b{field}\b"):
        small_config(**overrides)


def test_config_accepts_lists_and_defaults_match_paper():
    cfg = small_config(channels=[8, 8], head_channels=[4, 8])
    assert cfg.channels == (8, 8) and cfg.head_channels == (4, 8)
    d = MDEQConfig()
    assert (d.channels, d.expansion, d.fuse_groups, d.block_groups, d.post_fuse_groups) == ((24, 24), 5, 8, 4, 4)
    assert (d.head_channels, d.final_channels, d.weight_norm, d.dropout) == ((8, 16), 200, True, 0.0)
    with pytest.raises(TypeError):
        MDEQClassifier({"channels": (8, 8)})  # type: ignore[arg-type]


def test_bad_image_shape():
    model = MDEQClassifier(small_config())
    with pytest.raises(ValueError, match="images"):
        model.z0(torch.rand(2, 3, 12, 12))


# ----------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("backward", ["ift", "phantom"])
def test_gradient_reaches_every_parameter(backward):
    torch.manual_seed(2)
    model = MDEQClassifier(small_config(3))
    model.train()
    images = torch.rand(3, 1, 12, 12, requires_grad=True)
    labels = torch.tensor([0, 5, 7])
    stats: dict = {}
    logits = model(images, max_iter=12, backward=backward, stats=stats)
    F.cross_entropy(logits, labels).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert images.grad is not None and images.grad.abs().sum() > 0
    if backward == "ift":
        assert stats["backward"].nfe == 20  # default backward: Broyden, 20 iterations (Table 9)


# ----------------------------------------------------------------------------- solver behaviour at init


def test_broyden_reduces_residual_at_init():
    """Paper MNIST config, Broyden 18 iterations run to the limit.

    The MDEQ layer is *not* a contraction at initialisation: the spectral
    radius of J at the Broyden point is ~1.6 and, depending on the init seed,
    forward iteration stalls at a relative residual of 0.1-0.7 (last iterate,
    18 steps).  Broyden brings it from 1 down to ~0.07-0.32 (seeds 0-4, B=8).
    """
    torch.manual_seed(3)
    model = MDEQClassifier(MDEQConfig())
    images = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        inj = model.inject(images)
        f = lambda z: model.layer(z, inj)  # noqa: E731
        res = solve(f, model.z0(images), method="broyden", max_iter=18, tol=0.0)
        fwd = solve(f, model.z0(images), method="forward", max_iter=18, tol=0.0)
    start = res.trace[:, 0]
    print(f"\nrelative residual, Broyden 18: start {start.tolist()} best {res.residual.tolist()}; "
          f"forward iteration 18: best {fwd.residual.tolist()}")
    torch.testing.assert_close(start, torch.ones_like(start))  # z0 = 0: ||f(0) - 0|| / ||f(0)|| = 1
    assert (res.residual < 0.6 * start).all()
    assert res.residual.mean() < fwd.residual.mean()
    assert torch.isfinite(res.trace).all()


# ----------------------------------------------------------------------------- size


def test_parameter_counts_paper_configs():
    mnist = MDEQClassifier(MDEQConfig(in_channels=1)).num_parameters()
    cifar = MDEQClassifier(MDEQConfig(in_channels=3)).num_parameters()
    print(f"\nMDEQ parameters: MNIST (1x28x28, [24,24]) {mnist:,} (reference {REFERENCE_MNIST_PARAMS:,}); "
          f"CIFAR (3x32x32, [24,24]) {cifar:,} (reference {REFERENCE_CIFAR_SMALL_PARAMS:,})")
    assert abs(mnist - REFERENCE_MNIST_PARAMS) <= 0.05 * REFERENCE_MNIST_PARAMS
    assert abs(cifar - REFERENCE_CIFAR_SMALL_PARAMS) <= 0.05 * REFERENCE_CIFAR_SMALL_PARAMS
    assert cifar - mnist == 2 * 24 * 9  # only the first stem conv sees the input channels


def test_standardize_per_task_closed_form_and_errors():
    """Per task and feature: zero mean, unit biased variance (up to eps); tasks never mix."""
    from deqbench.models.mdeq import standardize_per_task

    features = torch.tensor([[1.0, 10.0], [3.0, 10.0], [0.0, 5.0], [4.0, 7.0]])
    out = standardize_per_task(features, tasks=2, eps=0.0)
    expected = torch.tensor([[-1.0, float("nan")], [1.0, float("nan")], [-1.0, -1.0], [1.0, 1.0]])
    torch.testing.assert_close(out[:, 0], expected[:, 0])
    torch.testing.assert_close(out[2:], expected[2:])
    torch.testing.assert_close(standardize_per_task(features, tasks=2)[:2, 1], torch.zeros(2))  # eps: no 0/0
    with pytest.raises(ValueError, match="do not split into 3 tasks"):
        standardize_per_task(features, tasks=3)
    with pytest.raises(ValueError, match="at least 2 samples per task"):
        standardize_per_task(features, tasks=4)
    with pytest.raises(ValueError, match="pooled_norm"):
        MDEQConfig(pooled_norm="batch")

