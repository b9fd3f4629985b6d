"""MDEQ generator / autoencoder (JIIO paper section 4.1, Table 9) and JIIO reconstruction on small generators."""

from __future__ import annotations

import pytest
import torch

from deqbench.inputopt.baselines import adam
from deqbench.core.deq import fixed_point
from deqbench.inputopt.jiio import jiio
from deqbench.models.mdeq import MDEQConfig
from deqbench.models.mdeq_generator import MDEQAutoencoder, MDEQGenerator, MDEQGeneratorConfig
from deqbench.models.small import SmallDEQGenerator

SMALL = dict(out_channels=1, image_size=8, latent_dim=8, channels=(8, 8), expansion=2, block_groups=4,
             fuse_groups=4, post_fuse_groups=4, head_channels=8, head_groups=4)


def test_paper_generator_matches_the_reference_parameter_split():
    """Notes section 2: the reference decoder path is 40.8 M = latent maps 31.7 M + f 8.72 M + h 0.38 M."""
    gen = MDEQGenerator()
    split = gen.parameter_split()
    assert split == {"latent_maps": 31_703_040, "f": 8_716_192, "h": 380_355}
    assert gen.num_parameters() == sum(split.values())
    assert [list(s) for s in gen.sizes] == [[64, 64], [32, 32], [16, 16], [8, 8]]


def test_shapes_range_and_state_layout():
    gen = MDEQGenerator(MDEQGeneratorConfig(**{**SMALL, "out_channels": 3, "image_size": 16, "channels": (8, 8, 16)}))
    latent = torch.randn(5, 8)
    z = gen.z0(5, latent)
    assert [tuple(t.shape) for t in z] == [(5, 8, 16, 16), (5, 8, 8, 8), (5, 16, 4, 4)]
    images = gen(latent, {"max_iter": 4})
    assert images.shape == (5, 3, 16, 16) and images.dtype == torch.float32
    assert images.abs().max() <= 1.0
    fz = gen.layer(z, latent)
    assert [t.shape for t in fz] == [t.shape for t in z]


def test_examples_are_independent():
    """GroupNorm only: one example's output does not depend on the rest of the batch."""
    gen = MDEQGenerator(MDEQGeneratorConfig(**SMALL)).train()
    latent = torch.randn(4, 8)
    other = latent.clone()
    other[1:] = torch.randn(3, 8) * 3
    with torch.no_grad():
        a, b = gen(latent, {"max_iter": 5}), gen(other, {"max_iter": 5})
    torch.testing.assert_close(a[0], b[0], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(a[1], b[1])


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="MDEQGeneratorConfig.channels: branch 0 has 6 channels"):
        MDEQGeneratorConfig(**{**SMALL, "channels": (6, 8)})
    with pytest.raises(ValueError, match="MDEQGeneratorConfig.latent_dim"):
        MDEQGeneratorConfig(**{**SMALL, "latent_dim": 0})
    with pytest.raises(ValueError, match="latent must have shape"):
        MDEQGenerator(MDEQGeneratorConfig(**SMALL)).inject(torch.zeros(2, 3))


def test_cost_is_masked_sum_of_squares():
    gen = MDEQGenerator(MDEQGeneratorConfig(**SMALL))
    z = gen.layer(gen.z0(2, torch.zeros(1)), torch.randn(2, 8))
    observed = torch.rand(2, 1, 8, 8)
    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, :4] = 1
    expected = ((gen.output(z) - observed) * mask).pow(2).flatten(1).sum(1)
    torch.testing.assert_close(gen.cost_fn(observed, mask)(z), expected)
    full = (gen.output(z) - observed).pow(2).flatten(1).sum(1)
    torch.testing.assert_close(gen.cost_fn(observed)(z), full)


def test_autoencoder_loss_backpropagates_through_both_solves():
    enc = MDEQConfig(in_channels=1, num_classes=16, channels=(8, 8), expansion=2, block_groups=4, fuse_groups=4,
                     post_fuse_groups=4, head_channels=(4, 8), final_channels=16)
    model = MDEQAutoencoder("vae", enc, MDEQGeneratorConfig(**SMALL)).train()
    images = torch.rand(3, 1, 8, 8) * 2 - 1
    fast = {"max_iter": 4}
    loss, parts = model.loss(images, kl_scale=0.5, forward=fast, backward_options={"method": "broyden", "max_iter": 4, "tol": 0.0})
    loss.backward()
    assert set(parts) == {"mse", "kl"} and torch.isfinite(loss)
    assert model.encoder.stem[0].weight.grad.abs().sum() > 0
    assert model.decoder.latent_maps[0].weight.grad.abs().sum() > 0
    model.eval()
    assert model.reconstruct(images, fast).shape == images.shape
    with pytest.raises(ValueError, match="num_classes=8"):
        MDEQAutoencoder("ae", enc, MDEQGeneratorConfig(**SMALL))


def test_mdeq_ae_code_norm_standardises_the_code_so_the_output_depends_on_the_input():
    enc = MDEQConfig(in_channels=1, num_classes=8, channels=(8, 8), expansion=2, block_groups=4, fuse_groups=4,
                     post_fuse_groups=4, head_channels=(4, 8), final_channels=16)
    torch.manual_seed(0)
    model = MDEQAutoencoder("ae", enc, MDEQGeneratorConfig(**SMALL), code_norm=True).train()
    images = torch.rand(16, 1, 8, 8) * 2 - 1
    fast = {"max_iter": 4}
    code, _ = model.encode(images, fast)
    assert torch.allclose(code.mean(0), torch.zeros(8), atol=1e-5)
    assert torch.allclose(code.std(0, unbiased=False), torch.ones(8), atol=2e-2)  # up to BatchNorm's eps
    model.eval()  # running statistics at test time: one image at a time gives the same code as in a batch
    with torch.no_grad():
        batch_code, _ = model.encode(images, fast)
        single, _ = model.encode(images[:1], fast)
        recon = model.reconstruct(images, fast)
    assert torch.allclose(single, batch_code[:1], atol=1e-4)
    assert (recon - recon.mean(0)).abs().mean() > 1e-3  # reconstructions differ between inputs
    with pytest.raises(ValueError, match="MDEQ-AE"):
        MDEQAutoencoder("vae", MDEQConfig(**{**enc.__dict__, "num_classes": 16}), MDEQGeneratorConfig(**SMALL),
                        code_norm=True)


def _reachable_target(gen: SmallDEQGenerator, batch: int) -> torch.Tensor:
    latent = torch.randn(batch, 8)
    with torch.no_grad():
        z = fixed_point(lambda z: gen.f(z, latent), gen.z0(latent), solver="broyden", max_iter=30)
        return gen.decode(z)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_jiio_beats_adam_at_an_equal_budget_of_f_evaluations(seed):
    """JIIO-40 (40 f evaluations) ends below its starting cost and below Adam with 5 steps x 8 forward iterations
    (also 40 f evaluations, plus 5 backward solves JIIO does not need) on a small DEQ generator."""
    torch.manual_seed(seed)
    gen = SmallDEQGenerator(latent_dim=8, channels=8, size=8).eval()
    target = _reachable_target(gen, 6)
    cost = gen.cost_fn(target)
    z0, x0 = gen.z0(target), torch.zeros(6, 8)
    with torch.no_grad():
        start = cost(z0)
        result = jiio(gen.f, cost, z0, x0, max_iter=40, alpha=(0.8, 0.6, 0.3), solver_options={"m": 10, "kind": "I"})
    assert result.nfe == 40
    best_adam = min(
        adam(gen.f, cost, z0, x0, steps=5, lr=lr, forward={"solver": "broyden", "max_iter": 8}).cost.mean().item()
        for lr in (0.03, 0.1, 0.3)
    )
    assert (result.cost < start).all()
    assert result.cost.mean().item() < 0.5 * best_adam
