"""Post-hoc latent density model (JIIO paper appendix C.2; Ghosh et al. 2020 section 4)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from deqbench.metrics.density import DensityConfig, PosthocDensity

CENTRES = torch.tensor([[6.0, 0.0, 0.0, 0.0], [-3.0, 5.0, 0.0, 1.0], [-3.0, -5.0, 2.0, -1.0]], dtype=torch.float64)


def three_clusters(n: int, seed: int) -> torch.Tensor:
    """Well-separated 3-component mixture in 4-D with unequal weights and correlated clusters."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.multinomial(torch.tensor([0.5, 0.3, 0.2]), n, replacement=True, generator=g)
    mix = torch.tensor([[1.0, 0.4, 0.0, 0.0], [0.0, 0.7, 0.0, 0.0], [0.0, 0.3, 0.5, 0.0], [0.0, 0.0, 0.0, 0.3]])
    return CENTRES[labels] + torch.randn(n, 4, generator=g, dtype=torch.float64) @ mix.double()


def low_rank(n: int, seed: int, dim: int = 8, rank: int = 3) -> torch.Tensor:
    """Rank-3 Gaussian in 8-D (plus small noise), rescaled to mean 5 and std 3 in every dimension."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rank, dim, generator=g)
    x = torch.randn(n, rank, generator=g) @ w + 0.05 * torch.randn(n, dim, generator=g)
    return (x - x.mean(0)) / x.std(0) * 3.0 + 5.0


GMM_ONLY = DensityConfig(aux_vae=False, gmm_components=3)
SMALL_VAE = DensityConfig(aux_latent_dim=12, hidden=32, depth=2, epochs=3, batch_size=64, lr=1e-3, gmm_components=4)


@pytest.fixture(scope="module")
def clusters() -> tuple[torch.Tensor, torch.Tensor, PosthocDensity]:
    train, held_out = three_clusters(1500, seed=1), three_clusters(500, seed=2)
    return train, held_out, PosthocDensity.fit(train, GMM_ONLY)


@pytest.fixture(scope="module")
def small_vae() -> tuple[torch.Tensor, PosthocDensity]:
    x = low_rank(300, seed=3)
    return x, PosthocDensity.fit(x, SMALL_VAE)


def reference_log_prob(model: PosthocDensity, codes: torch.Tensor) -> np.ndarray:
    """Mixture log-density with scipy, from the stored scikit-learn-shaped parameters."""
    gmm = model.gmm
    w, mu, cov = gmm["weights"].numpy(), gmm["means"].numpy(), gmm["covariances"].numpy()
    k, d = mu.shape
    full = {
        "full": lambda: cov,
        "tied": lambda: np.broadcast_to(cov, (k, d, d)),
        "diag": lambda: np.stack([np.diag(c) for c in cov]),
        "spherical": lambda: cov[:, None, None] * np.eye(d),
    }[gmm["covariance_type"]]()
    logs = [np.log(w[i]) + multivariate_normal(mu[i], full[i]).logpdf(codes.numpy()) for i in range(k)]
    return logsumexp(np.stack(logs, axis=1), axis=1)


def test_gmm_only_reproduces_mixture(clusters) -> None:
    train, held_out, model = clusters
    assert model.gmm["converged"] and model.vae is None
    samples = model.sample(20000, seed=0)
    assert samples.dtype == torch.float32 and samples.shape == (20000, 4)
    data = train.float()
    assert torch.allclose(samples.mean(0), data.mean(0), atol=0.1)
    assert torch.allclose(torch.cov(samples.T), torch.cov(data.T), atol=0.3)
    # In the original scale the fitted component means are the true cluster centres.
    centres = model.gmm["means"] * model.latent_std + model.latent_mean
    nearest = torch.cdist(CENTRES, centres).min(dim=1).values
    assert nearest.max() < 0.2
    # Samples are multimodal like the data: the same share lies near some centre (a single Gaussian: ~0.1).
    near_samples = (torch.cdist(samples.double(), CENTRES).min(dim=1).values < 2.0).double().mean()
    near_data = (torch.cdist(train, CENTRES).min(dim=1).values < 2.0).double().mean()
    assert abs(near_samples - near_data) < 0.03 and near_data > 0.8


def test_gmm_log_likelihood_beats_single_gaussian(clusters) -> None:
    train, held_out, model = clusters
    single = PosthocDensity.fit(train, DensityConfig(aux_vae=False, gmm_components=1))
    ll_mix = model.gmm_log_prob(model.encode_means(held_out)).mean()
    ll_one = single.gmm_log_prob(single.encode_means(held_out)).mean()
    assert ll_mix > ll_one + 1.0  # nats per point, in the same standardised space


@pytest.mark.parametrize("covariance", ["full", "tied", "diag", "spherical"])
def test_gmm_log_prob_matches_scipy(clusters, covariance: str) -> None:
    train, held_out, _ = clusters
    model = PosthocDensity.fit(train[:400], DensityConfig(aux_vae=False, gmm_components=3, gmm_covariance=covariance))
    codes = model.encode_means(held_out[:100])
    np.testing.assert_allclose(model.gmm_log_prob(codes).numpy(), reference_log_prob(model, codes), rtol=1e-9, atol=1e-9)
    # Sampling from every covariance type reproduces the fitted mixture's overall mean.
    drawn = model.sample_codes(20000, seed=0)
    mixture_mean = model.gmm["weights"] @ model.gmm["means"]
    assert torch.allclose(drawn.mean(0), mixture_mean, atol=0.05)


def test_aux_vae_learns_and_destandardises() -> None:
    x = low_rank(600, seed=0)
    cfg = DensityConfig(aux_latent_dim=24, hidden=64, depth=2, epochs=40, batch_size=64, lr=1e-3, gmm_components=5)
    model = PosthocDensity.fit(x, cfg)
    h = model.history
    assert len(h["train_loss"]) == 40 and h["n_val"] == 60 and h["n_train"] == 540
    assert h["train_loss"][-1] < 0.1 * h["train_loss"][0]
    assert h["val_loss"][-1] < 0.1 * h["val_loss"][0]
    codes = model.encode_means(x)
    assert codes.shape == (600, 24)

    samples = model.sample(4000, seed=1)
    assert samples.shape == (4000, 8) and samples.dtype == torch.float32
    # De-standardised: the data has mean 5 and std 3 in every dimension.
    assert torch.allclose(samples.mean(0), x.mean(0), atol=0.25)
    assert torch.allclose(samples.std(0), x.std(0), rtol=0.1)
    assert (samples.mean(0) - 5.0).abs().max() < 0.25
    # The decoder maps onto the data's rank-3 subspace: almost no energy outside its top-3 principal directions.
    centred = x - x.mean(0)
    basis = torch.linalg.svd(centred, full_matrices=False).Vh[:3].T
    s = samples - x.mean(0)
    outside = (s - s @ basis @ basis.T).pow(2).sum() / s.pow(2).sum()
    assert outside < 0.01  # an isotropic sample would have 5/8 outside

    summary = model.describe()
    assert json.loads(json.dumps(summary)) == summary
    assert summary["dim"] == 8 and summary["gmm_dim"] == 24 and summary["epochs_run"] == 40
    assert summary["final_val_loss"] == pytest.approx(h["val_loss"][-1])


def test_fit_is_deterministic_and_leaves_global_rng_alone(small_vae) -> None:
    x, model = small_vae
    before = torch.random.get_rng_state()
    again = PosthocDensity.fit(x, SMALL_VAE)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert again.history == model.history
    assert torch.equal(again.sample(500, seed=7), model.sample(500, seed=7))
    assert torch.equal(model.sample(500, seed=7), model.sample(500, seed=7))
    assert not torch.allclose(model.sample(500, seed=7), model.sample(500, seed=8))
    other = PosthocDensity.fit(x, DensityConfig(**{**SMALL_VAE.to_dict(), "seed": 1}))
    assert not torch.allclose(other.sample(500, seed=7), model.sample(500, seed=7))


@pytest.mark.parametrize("aux", [True, False])
def test_state_dict_round_trip(small_vae, clusters, aux: bool) -> None:
    model = small_vae[1] if aux else clusters[2]
    data = small_vae[0] if aux else clusters[0]
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    restored = PosthocDensity.from_state_dict(torch.load(buf, weights_only=True))
    assert torch.equal(restored.sample(1000, seed=3), model.sample(1000, seed=3))
    assert torch.equal(restored.encode_means(data[:50]), model.encode_means(data[:50]))
    assert restored.describe() == model.describe()
    assert restored.config == model.config


def test_state_dict_is_a_copy(small_vae) -> None:
    _, model = small_vae
    reference = model.sample(100, seed=0)
    state = model.state_dict()
    state["gmm"]["means"].add_(100.0)
    state["latent_mean"].add_(100.0)
    state["history"]["train_loss"].append(-1.0)
    assert torch.equal(model.sample(100, seed=0), reference)
    assert len(model.history["train_loss"]) == SMALL_VAE.epochs


def test_tiny_dataset_skips_validation_split() -> None:
    x = low_rank(8, seed=4)  # val_fraction * N = 0.8 < 1: no split, plateau on the training loss
    model = PosthocDensity.fit(x, DensityConfig(aux_latent_dim=4, hidden=16, depth=1, epochs=2, gmm_components=2))
    assert model.history["n_val"] == 0 and model.history["n_train"] == 8
    assert model.history["val_loss"] == [None, None]
    assert model.describe()["final_val_loss"] is None
    assert torch.isfinite(model.sample(10, seed=0)).all()
    x = low_rank(20, seed=4)  # 0.1 * 20 = 2 validation latents
    model = PosthocDensity.fit(x, DensityConfig(aux_latent_dim=4, hidden=16, depth=1, epochs=1, gmm_components=2))
    assert model.history["n_val"] == 2 and model.history["val_loss"][0] is not None


def test_rejects_bad_latents() -> None:
    cfg = DensityConfig(aux_vae=False, gmm_components=5)
    with pytest.raises(ValueError, match="gmm_components"):
        PosthocDensity.fit(torch.randn(5, 3), cfg)
    bad = torch.randn(50, 3)
    bad[4, 1] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        PosthocDensity.fit(bad, cfg)
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        PosthocDensity.fit(torch.randn(50), cfg)
    with pytest.raises(ValueError, match="D >= 1"):
        PosthocDensity.fit(torch.randn(50, 0), cfg)
    model = PosthocDensity.fit(torch.randn(50, 3), cfg)
    with pytest.raises(ValueError, match="non-negative"):
        model.sample(-1, seed=0)
    assert model.sample(0, seed=0).shape == (0, 3)


@pytest.mark.parametrize(
    "field, value",
    [
        ("aux_latent_dim", 0),
        ("hidden", -4),
        ("depth", 1.5),
        ("epochs", True),
        ("batch_size", 0),
        ("lr", 0.0),
        ("lr", "1e-4"),
        ("kl_weight", -1e-3),
        ("val_fraction", 1.0),
        ("val_fraction", -0.1),
        ("plateau_factor", 1.0),
        ("plateau_patience", -1),
        ("gmm_components", 0),
        ("gmm_covariance", "banded"),
        ("gmm_max_iter", 0),
        ("gmm_tol", float("nan")),
        ("seed", -1),
        ("aux_vae", 1),
    ],
)
def test_config_validation_names_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        DensityConfig(**{field: value})


def test_config_from_mapping() -> None:
    cfg = DensityConfig.from_mapping({"hidden": 64, "lr": 1, "gmm_covariance": "diag"})
    assert cfg.hidden == 64 and cfg.lr == 1.0 and isinstance(cfg.lr, float) and cfg.gmm_covariance == "diag"
    assert DensityConfig.from_mapping(cfg.to_dict()) == cfg
    assert DensityConfig.from_mapping({}) == DensityConfig()
    with pytest.raises(ValueError, match=r"\['hiden', 'lr_decay'\]"):
        DensityConfig.from_mapping({"hiden": 64, "lr_decay": 0.5, "epochs": 3})
    with pytest.raises(ValueError, match="1.0e-4"):
        DensityConfig.from_mapping({"lr": "1e-4"})  # the PyYAML exponent pitfall gets a hint


def test_progress_bar(capsys) -> None:
    x = low_rank(100, seed=5)
    PosthocDensity.fit(x, DensityConfig(aux_latent_dim=4, hidden=16, depth=1, epochs=2, gmm_components=2), progress=True)
    assert "aux VAE" in capsys.readouterr().err
