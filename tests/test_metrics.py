"""Tests for deqbench.metrics: PSNR conventions of JIIO Table 4 and offline-safe FID (Tables 1 and 4)."""

from __future__ import annotations

import hashlib
import math
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image

from deqbench.metrics import (
    FID_WEIGHTS_SHA256,
    FIDResult,
    UInt8ImageDataset,
    compute_fid,
    fid_weights_status,
    median_psnr,
    psnr_per_image,
    reference_batch_psnr,
    save_image_folder,
    to_uint8_rgb,
)

SIX_DB = 10 * math.log10(4)


def _pair_with_errors(
    errors01: list[float], shape: tuple[int, ...] = (3, 8, 8), dtype: torch.dtype = torch.float64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets in [-1, 1] and predictions off by a constant ``errors01[i]`` (in [0, 1] units) on image ``i``."""
    n = len(errors01)
    target01 = 0.2 + 0.5 * torch.rand(n, *shape, dtype=torch.float64)
    signs = torch.where(torch.rand(n, *shape) < 0.5, -1.0, 1.0).to(torch.float64)
    pred01 = target01 + signs * torch.tensor(errors01, dtype=torch.float64).view(n, 1, 1, 1)
    return (2 * pred01 - 1).to(dtype), (2 * target01 - 1).to(dtype)


def test_psnr_closed_form_values() -> None:
    pred, target = _pair_with_errors([0.1, 0.01, 10**-1.5])
    np.testing.assert_allclose(psnr_per_image(pred, target).numpy(), [20.0, 40.0, 30.0], atol=1e-9)
    pred32, target32 = _pair_with_errors([0.1, 0.01], dtype=torch.float32)
    out = psnr_per_image(pred32, target32)
    assert out.shape == (2,) and out.dtype == torch.float64
    np.testing.assert_allclose(out.numpy(), [20.0, 40.0], atol=1e-4)


def test_psnr_clamps_pred_and_is_inf_for_exact_match() -> None:
    target = torch.ones(2, 1, 4, 4)
    target[1] = -1
    pred = torch.stack([torch.full((1, 4, 4), 1.7), torch.full((1, 4, 4), -3.0)])
    assert torch.isinf(psnr_per_image(pred, target)).all()
    assert median_psnr(target, target) == math.inf


def test_median_psnr_is_over_images_with_numpy_median() -> None:
    pred, target = _pair_with_errors([10**-2.5, 0.1, 0.01, 10**-1.5])
    assert median_psnr(pred, target) == pytest.approx(35.0, abs=1e-9)
    pred, target = _pair_with_errors([0.1, 0.01, 0.1])
    assert median_psnr(pred, target) == pytest.approx(20.0, abs=1e-9)


def test_reference_convention_is_6_02_db_below_for_one_batch_of_equal_mse() -> None:
    pred, target = _pair_with_errors([0.05] * 5)
    ours = psnr_per_image(pred, target)
    ref = reference_batch_psnr(pred, target)
    assert ref["n_batches"] == 1 and ref["batch_size"] == 48
    for key in ("p25", "median", "p75", "mean_mse_psnr"):
        assert ref[key] == pytest.approx(median_psnr(pred, target) - SIX_DB, abs=1e-9)
        assert ref[key] == pytest.approx(float(ours[0]) - 6.0206, abs=1e-4)


def test_reference_median_is_over_batches_not_images() -> None:
    pred, target = _pair_with_errors([0.1, 0.1, 0.1, 0.0])
    assert median_psnr(pred, target) == pytest.approx(20.0, abs=1e-9)
    ref = reference_batch_psnr(pred, target, batch_size=2)
    batch_mse = np.array([4 * 0.01, 4 * 0.005])
    assert ref["n_batches"] == 2
    assert ref["median"] == pytest.approx(-10 * math.log10(np.median(batch_mse)), abs=1e-9)
    assert ref["median"] + SIX_DB == pytest.approx(21.249, abs=1e-3)
    assert abs(ref["median"] + SIX_DB - median_psnr(pred, target)) > 1.0


def test_reference_percentiles_partial_last_batch_and_mean() -> None:
    pred, target = _pair_with_errors([0.1, 0.1, 0.01, 0.01, 0.2])
    ref = reference_batch_psnr(pred, target, batch_size=2)
    batch_mse = 4 * np.array([0.01, 1e-4, 0.04])
    assert ref["n_batches"] == 3
    for key, q in (("p25", 25), ("median", 50), ("p75", 75)):
        assert ref[key] == pytest.approx(-10 * math.log10(np.percentile(batch_mse, q)), abs=1e-9)
    assert ref["p25"] >= ref["median"] >= ref["p75"]
    assert ref["mean_mse_psnr"] == pytest.approx(-10 * math.log10(batch_mse.mean()), abs=1e-9)
    overall_mse = 4 * np.mean([0.01, 0.01, 1e-4, 1e-4, 0.04])
    assert abs(ref["mean_mse_psnr"] + 10 * math.log10(overall_mse)) > 0.1


def test_psnr_input_errors() -> None:
    a = torch.zeros(2, 3, 4, 4)
    with pytest.raises(ValueError, match=r"shapes differ: \(2, 3, 4, 4\) vs \(2, 3, 4, 5\)"):
        psnr_per_image(a, torch.zeros(2, 3, 4, 5))
    with pytest.raises(ValueError, match="shapes differ"):
        reference_batch_psnr(a, torch.zeros(3, 3, 4, 4))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        median_psnr(torch.zeros(3, 4, 4), torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match="floating-point"):
        psnr_per_image(a.to(torch.uint8), a.to(torch.uint8))
    with pytest.raises(ValueError, match="NaN"):
        psnr_per_image(torch.full_like(a, float("nan")), a)
    with pytest.raises(ValueError, match="batch_size"):
        reference_batch_psnr(a, a, batch_size=0)
    with pytest.raises(ValueError, match="no images"):
        median_psnr(a[:0], a[:0])


def test_to_uint8_rgb_mapping_and_grayscale() -> None:
    x = torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0, 1.5, -2.0]).view(1, 1, 1, 7)
    out = to_uint8_rgb(x)
    assert out.dtype == torch.uint8 and out.shape == (1, 3, 1, 7)
    assert out[0, 0, 0].tolist() == [0, 64, 128, 191, 255, 255, 0]
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 0], out[:, 2])
    u = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    assert torch.equal(to_uint8_rgb(u), u)
    with pytest.raises(ValueError, match="C in"):
        to_uint8_rgb(torch.zeros(2, 2, 4, 4))
    with pytest.raises(ValueError, match="dtype"):
        to_uint8_rgb(torch.zeros(2, 3, 4, 4, dtype=torch.int64))


def test_uint8_dataset_returns_bare_chw_tensors() -> None:
    images = to_uint8_rgb(torch.rand(5, 1, 6, 6) * 2 - 1)
    ds = UInt8ImageDataset(images)
    assert len(ds) == 5
    item = ds[3]
    assert isinstance(item, torch.Tensor) and item.dtype == torch.uint8 and item.shape == (3, 6, 6)
    assert torch.equal(item, images[3])
    with pytest.raises(ValueError, match="uint8"):
        UInt8ImageDataset(torch.rand(5, 3, 6, 6))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        UInt8ImageDataset(torch.zeros(5, 1, 6, 6, dtype=torch.uint8))


def test_save_image_folder_round_trips_and_replaces(tmp_path: Path) -> None:
    target = tmp_path / "samples"
    target.mkdir()
    (target / "stale.png").write_bytes(b"old")
    images = torch.rand(3, 1, 5, 7) * 2 - 1
    assert save_image_folder(images, target) == target
    names = sorted(p.name for p in target.iterdir())
    assert names == ["000000.png", "000001.png", "000002.png"]
    expected = to_uint8_rgb(images).permute(0, 2, 3, 1).numpy()
    for i, name in enumerate(names):
        with Image.open(target / name) as im:
            assert im.mode == "RGB"
            np.testing.assert_array_equal(np.asarray(im), expected[i])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["samples"]


def test_fid_weights_status(tmp_path: Path) -> None:
    missing = tmp_path / "weights" / "weights-inception-2015-12-05-6726825d.pth"
    ok, reason = fid_weights_status(missing)
    assert not ok
    assert str(missing) in reason and "dvc add" in reason
    assert "weights-inception-2015-12-05-6726825d.pth" in reason and "v0.2.0" in reason
    ok, reason = fid_weights_status(tmp_path)
    assert not ok and "not a file" in reason
    present = tmp_path / "w.pth"
    present.write_bytes(b"x")
    # A file that is not the pinned release is refused, naming both hashes (torch-fidelity unpickles it).
    ok, reason = fid_weights_status(present)
    actual = hashlib.sha256(b"x").hexdigest()
    assert not ok and actual in reason and FID_WEIGHTS_SHA256 in reason and str(present) in reason
    assert fid_weights_status(present, expected_sha256=actual) == (True, "")
    result = compute_fid(torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8, 8), present)
    assert result.value is None and "SHA-256" in result.reason


def test_compute_fid_without_weights_is_na_and_imports_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    images = torch.rand(4, 3, 8, 8) * 2 - 1
    # Any attempt to import torch_fidelity now raises ImportError.
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)
    result = compute_fid(images, images[:3], missing)
    assert result.value is None and result.as_cell() == "n/a"
    assert str(missing) in result.reason
    assert (result.n_reference, result.n_samples) == (4, 3)
    assert result.weights_path == str(missing) and result.weights_sha256 is None
    assert result.implementation.startswith("torch-fidelity ")
    with pytest.raises(ValueError, match="at least 2 images"):
        compute_fid(images[:1], images, missing)


def test_fid_result_cell() -> None:
    result = FIDResult(12.3456, None, 10, 10, "w.pth", "ab", "torch-fidelity 0.4.0, inception-v3-compat")
    assert result.as_cell() == "12.35"


@pytest.fixture(scope="module")
def random_inception_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised state dict for torch-fidelity's InceptionV3, loadable by its strict loader.

    The class loads weights inside ``__init__`` (``torch.load(path, weights_only=False)`` or a download when the
    path is None), so it is built with both the downloader and ``load_state_dict`` stubbed out. PyTorch's default
    conv init (kaiming-uniform, a=sqrt(5)) shrinks the activation variance about 6x per conv+ReLU, leaving pool3
    features of order 1e-8 after Inception's depth, so FID would be ~0 for any inputs; He-normal init keeps them
    of order 0.1-1. BatchNorm keeps its fresh running stats (mean 0, var 1), i.e. acts as identity in eval mode.
    """
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    torch.manual_seed(1234)
    with (
        mock.patch.object(fe, "load_state_dict_from_url", lambda *args, **kwargs: None),
        mock.patch.object(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *args, **kwargs: None),
    ):
        model = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    path = tmp_path_factory.mktemp("fid") / "random-inception.pth"
    torch.save(model.state_dict(), path)
    return path


N_FID = 12


@pytest.fixture(scope="module")
def fid_values(random_inception_weights: Path) -> dict[str, FIDResult]:
    """FID of A against A, A + small noise and A + large noise (noise in pixel space, clipped to [-1, 1])."""
    gen = torch.Generator().manual_seed(7)
    a = torch.rand(N_FID, 3, 16, 16, generator=gen) * 2 - 1
    small = (a + 0.05 * torch.randn(a.shape, generator=gen)).clamp(-1, 1)
    large = (a + 0.5 * torch.randn(a.shape, generator=gen)).clamp(-1, 1)
    pinned = hashlib.sha256(random_inception_weights.read_bytes()).hexdigest()  # the random file stands in
    return {
        "same": compute_fid(to_uint8_rgb(a), a, random_inception_weights, batch_size=N_FID, expected_sha256=pinned),
        "small": compute_fid(a, small, random_inception_weights, batch_size=N_FID, expected_sha256=pinned),
        "large": compute_fid(a, large, random_inception_weights, batch_size=N_FID, expected_sha256=pinned),
    }


@pytest.mark.slow
def test_fid_of_identical_sets_is_zero(fid_values: dict[str, FIDResult], random_inception_weights: Path) -> None:
    same = fid_values["same"]
    # Identical uint8 inputs give bit-identical features, so FID = 2 tr(S) - 2 sum sqrt(eig(S S)) is zero up to
    # roundoff of the non-symmetric 2048x2048 eigensolve (observed ~1e-6), far below the small-noise FID.
    assert same.value is not None and abs(same.value) < 1e-3
    assert abs(same.value) < 0.01 * fid_values["small"].value
    assert same.reason is None and same.as_cell() in ("0.00", "-0.00")
    assert (same.n_reference, same.n_samples) == (N_FID, N_FID)
    assert same.weights_path == str(random_inception_weights)
    assert same.weights_sha256 == hashlib.sha256(random_inception_weights.read_bytes()).hexdigest()
    assert same.implementation == "torch-fidelity 0.4.0, inception-v3-compat"


@pytest.mark.slow
def test_fid_grows_with_noise(fid_values: dict[str, FIDResult]) -> None:
    small, large = fid_values["small"].value, fid_values["large"].value
    assert small is not None and large is not None
    assert math.isfinite(small) and math.isfinite(large)
    assert 0 <= small < large
    # Guards against degenerate (near-constant) random features, for which every FID would be ~0.
    assert large > 1000 * abs(fid_values["same"].value) and large > 0.1


def test_sliced_wasserstein_is_zero_for_identical_sets_and_grows_with_noise():
    from deqbench.metrics import sliced_wasserstein

    gen = torch.Generator().manual_seed(0)
    images = torch.rand(64, 1, 8, 8, generator=gen) * 2 - 1
    assert sliced_wasserstein(images, images).value == 0.0
    assert sliced_wasserstein(images, images[torch.randperm(64, generator=gen)]).value < 1e-12  # order-free
    noise = torch.randn(64, 1, 8, 8, generator=gen)
    values = [sliced_wasserstein(images, images + s * noise).value for s in (0.1, 0.3, 1.0)]
    assert 0 < values[0] < values[1] < values[2]
    assert sliced_wasserstein(images, images + 0.5).value > 0  # a constant brightness shift is seen too
    with pytest.raises(ValueError, match="image shapes differ"):
        sliced_wasserstein(images, images[:, :, :4])
