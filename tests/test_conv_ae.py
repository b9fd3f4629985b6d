"""Explicit conv autoencoders (deqbench.models.conv_ae): shapes, KL, RAE penalties, overfitting, config."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deqbench.models.conv_ae import ConvAEConfig, ConvAutoencoder, gaussian_kl


def small(kind: str = "ae", image_size: int = 16, in_channels: int = 3, **overrides) -> ConvAutoencoder:
    kw = dict(kind=kind, image_size=image_size, in_channels=in_channels, latent_dim=16, channels=(8, 16, 32))
    kw.update(overrides)
    return ConvAutoencoder(ConvAEConfig(**kw))


def smooth_images(batch: int = 8, channels: int = 3, size: int = 16) -> torch.Tensor:
    coarse = torch.rand(batch, channels, 4, 4) * 2 - 1
    return F.interpolate(coarse, size=size, mode="bilinear", align_corners=False)


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("kind", ["vae", "rae", "ae"])
@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("size,channels", [(16, (8, 16, 32)), (64, (8, 16, 32, 64))], ids=["16px", "64px"])
def test_shapes(kind, in_channels, size, channels):
    model = small(kind, size, in_channels, channels=channels)
    x = torch.rand(2, in_channels, size, size) * 2 - 1
    mean, logvar = model.encode(x)
    assert mean.shape == (2, 16)
    assert (logvar is not None) == (kind == "vae")
    if logvar is not None:
        assert logvar.shape == (2, 16)
    for mode in (model.train, model.eval):
        mode()
        y = model(x)
        assert y.shape == x.shape
        assert y.abs().max() <= 1.0  # tanh output
    out = model.decode(torch.randn(5, 16))
    assert out.shape == (5, in_channels, size, size)


def test_bad_input_shapes():
    model = small()
    with pytest.raises(ValueError, match="images"):
        model.encode(torch.zeros(2, 3, 32, 32))
    with pytest.raises(ValueError, match="latent"):
        model.decode(torch.zeros(2, 15))
    with pytest.raises(ValueError, match="target"):
        model.loss(torch.zeros(2, 3, 16, 16), torch.zeros(2, 1, 16, 16))


def test_default_architecture_parameter_count():
    """Ghosh et al.'s CelebA 64 px layout with latent 128, counted by hand (RAE/AE: one latent head)."""
    with torch.device("meta"):
        model = ConvAutoencoder(ConvAEConfig(kind="rae"))
    enc = 3 * 128 * 16 + 128 * 256 * 16 + 256 * 512 * 16 + 512 * 1024 * 16 + 2 * (128 + 256 + 512 + 1024)
    head = 1024 * 4 * 4 * 128 + 128
    dec = (128 * 1024 * 8 * 8 + 1024 * 8 * 8
           + (1024 * 512 + 512 * 256 + 256 * 128) * 16 + 2 * (512 + 256 + 128)
           + 128 * 3 * 25 + 3)
    assert model.num_parameters() == enc + head + dec
    with torch.device("meta"):
        vae = ConvAutoencoder(ConvAEConfig(kind="vae"))
    assert vae.num_parameters() == enc + 2 * head + dec


def test_describe_is_json():
    model = small("vae", norm="group", groups=4)
    d = json.loads(json.dumps(model.describe()))
    assert d["config"]["channels"] == [8, 16, 32]
    assert d["config"]["kind"] == "vae" and d["config"]["norm"] == "group"
    assert d["num_parameters"] == model.num_parameters() > 0


# ----------------------------------------------------------------------------- VAE


def test_gaussian_kl_closed_form():
    mean = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    logvar = torch.tensor([[0.0, math.log(4.0)], [0.0, 0.0]])
    expected0 = 0.5 * (1 + 1 - 1 - 0) + 0.5 * (4 + 4 - 1 - math.log(4.0))
    kl = gaussian_kl(mean, logvar)
    assert kl.shape == (2,)
    torch.testing.assert_close(kl, torch.tensor([expected0, 0.0]))
    # against torch.distributions on random values
    mean, logvar = torch.randn(4, 7), torch.randn(4, 7)
    q = torch.distributions.Normal(mean, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    torch.testing.assert_close(gaussian_kl(mean, logvar), torch.distributions.kl_divergence(q, p).sum(1))


def test_vae_eval_deterministic_train_stochastic():
    model = small("vae")
    x = smooth_images(4)
    model.eval()
    with torch.no_grad():
        a, b = model(x), model(x)
        mean, _ = model.encode(x)
        torch.testing.assert_close(a, model.decode(mean))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    model.train()
    with torch.no_grad():
        c, d = model(x), model(x)
    assert not torch.allclose(c, d)


def test_vae_loss_composition():
    model = small("vae", kl_weight=0.25).eval()
    x, target = smooth_images(4), smooth_images(4)
    loss, parts = model.loss(x, target)
    assert set(parts) == {"recon", "kl"}
    assert all(p.dim() == 0 and not p.requires_grad for p in parts.values())
    with torch.no_grad():
        mean, logvar = model.encode(x)
        recon = ((model.decode(mean) - target) ** 2).sum((1, 2, 3)).mean()
        kl = gaussian_kl(mean, logvar).mean()
    torch.testing.assert_close(parts["recon"], recon)
    torch.testing.assert_close(parts["kl"], kl)
    torch.testing.assert_close(loss.detach(), recon + 0.25 * kl)


# ----------------------------------------------------------------------------- RAE / AE


def test_rae_penalties_known_weights():
    model = small("rae", rae_latent_weight=0.01, rae_decoder_weight=0.001).eval()
    decoder_layers = [model.from_latent] + [m for m in model.decoder if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert len(decoder_layers) == 1 + 2 + 1  # linear, two transposed convs, output conv
    with torch.no_grad():
        for i, layer in enumerate(decoder_layers):
            layer.weight.fill_(0.01 * (i + 1))
    expected_decoder = sum(layer.weight.numel() * (0.01 * (i + 1)) ** 2 for i, layer in enumerate(decoder_layers))
    torch.testing.assert_close(model.decoder_weight_penalty(), torch.tensor(expected_decoder))

    x = smooth_images(4)
    loss, parts = model.loss(x)
    assert set(parts) == {"recon", "latent_penalty", "decoder_penalty"}
    with torch.no_grad():
        z, _ = model.encode(x)
        recon = ((model.decode(z) - x) ** 2).sum((1, 2, 3)).mean()
    latent = 0.5 * (z**2).sum(1).mean()
    torch.testing.assert_close(parts["recon"], recon)
    torch.testing.assert_close(parts["latent_penalty"], latent)
    torch.testing.assert_close(parts["decoder_penalty"], torch.tensor(expected_decoder))
    torch.testing.assert_close(loss.detach(), recon + 0.01 * latent + 0.001 * expected_decoder)


def test_ae_loss_is_reconstruction_only():
    model = small("ae").eval()
    x, target = smooth_images(4), smooth_images(4)
    loss, parts = model.loss(x, target)
    assert set(parts) == {"recon"}
    with torch.no_grad():
        expected = ((model(x) - target) ** 2).sum((1, 2, 3)).mean()
    torch.testing.assert_close(loss.detach(), expected)


def test_latent_gradient_through_decoder():
    model = small("ae").eval()
    z = torch.randn(3, 16, requires_grad=True)
    model.decode(z).pow(2).sum().backward()
    assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- training


@pytest.mark.parametrize("norm", ["batch", "group"])
@pytest.mark.parametrize("kind", ["vae", "rae", "ae"])
def test_overfits_tiny_batch(kind, norm):
    model = small(kind, norm=norm, groups=4)
    x = smooth_images(8)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def eval_recon() -> float:
        model.eval()
        with torch.no_grad():
            r = model.loss(x)[1]["recon"].item()
        model.train()
        return r

    before = eval_recon()
    for _ in range(150):
        loss, _ = model.loss(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = eval_recon()
    # The VAE's KL term keeps it from memorising as tightly as RAE / AE.
    assert after < before / (10 if kind == "vae" else 50), (before, after)


# ----------------------------------------------------------------------------- independence


@pytest.mark.parametrize("kind", ["ae", "rae"])
def test_group_norm_examples_independent_in_train_mode(kind):
    model = small(kind, norm="group", groups=4).train()
    x = smooth_images(4)
    x2 = x.clone()
    x2[1:] = smooth_images(3)
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], model(x2)[0], rtol=0, atol=1e-6)
    # contrast: batch statistics couple the examples
    bn = small(kind, norm="batch").train()
    with torch.no_grad():
        assert not torch.allclose(bn(x)[0], bn(x2)[0], atol=1e-4)


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "overrides,field",
    [
        (dict(kind="gan"), "kind"),
        (dict(norm="layer"), "norm"),
        (dict(image_size=20), "image_size"),  # not divisible by 2**3
        (dict(image_size=0), "image_size"),
        (dict(in_channels=0), "in_channels"),
        (dict(latent_dim=2.0), "latent_dim"),
        (dict(channels=()), "channels"),
        (dict(channels=(8, 0, 32)), "channels"),
        (dict(channels=(8, 12, 32), norm="group", groups=8), "channels"),
        (dict(groups=0), "groups"),
        (dict(kl_weight=-1.0), "kl_weight"),
        (dict(rae_latent_weight=float("nan")), "rae_latent_weight"),
        (dict(rae_decoder_weight=-1e-7), "rae_decoder_weight"),
    ],
)
def test_config_validation(overrides, field):
    kw = dict(kind="ae", image_size=16, latent_dim=16, channels=(8, 16, 32))
    kw.update(overrides)
    with pytest.raises(ValueError, match=rf"ConvAEConfig\.{field}\b"):
        ConvAEConfig(**kw)


def test_config_channels_list_becomes_tuple():
    cfg = ConvAEConfig(image_size=16, channels=[8, 16, 32])
    assert cfg.channels == (8, 16, 32)
    assert ConvAEConfig(image_size=16, channels=(8, 12, 32)).norm == "batch"  # groups ignored for batch norm
