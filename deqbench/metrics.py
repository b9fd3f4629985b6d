"""Image-quality metrics for the JIIO generative experiments (Gurumurthy et al. 2021, Tables 1 and 4).

Images are ``(N, C, H, W)`` tensors in the model's range ``[-1, 1]`` (tanh outputs; targets normalised with
mean 0.5 and std 0.5).

PSNR comes in two conventions:

- :func:`psnr_per_image` / :func:`median_psnr` (primary): pixels mapped to ``[0, 1]``, one PSNR per image,
  median over images.
- :func:`reference_batch_psnr`: the reference code's convention, MSE in ``[-1, 1]`` units per consecutive batch,
  percentiles over batches. For the same images it reads ``10*log10(4) ~= 6.02 dB`` lower.

FID is computed by torch-fidelity's TF-compatible InceptionV3 from a local weights file; without the file the
result is ``n/a`` with a reason, never a number.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

FID_WEIGHTS_FILENAME = "weights-inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{FID_WEIGHTS_FILENAME}"
FID_FEATURE_EXTRACTOR = "inception-v3-compat"
REFERENCE_BATCH_SIZE = 48


def _check_pair(pred: torch.Tensor, target: torch.Tensor) -> None:
    for name, x in (("pred", pred), ("target", target)):
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor in [-1, 1], got dtype {x.dtype}")
        if x.dim() != 4:
            raise ValueError(f"{name} must have shape (N, C, H, W), got {tuple(x.shape)}")
    if pred.shape != target.shape:
        raise ValueError(f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
    if pred.shape[0] == 0:
        raise ValueError("pred and target hold no images (N = 0)")
    for name, x in (("pred", pred), ("target", target)):
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{name} contains NaN or infinite values")


def psnr_per_image(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of each image, ``[0, 1]`` pixel convention.

    Both inputs are mapped from ``[-1, 1]`` by ``(x + 1) / 2`` and ``pred`` is clamped to ``[0, 1]``; the MSE is
    averaged over C, H, W and ``PSNR = 10 * log10(1 / MSE)``. An image with MSE 0 gets ``+inf``. Computed and
    returned in float64, shape ``(N,)``.
    """
    _check_pair(pred, target)
    p = ((pred.detach().to("cpu", torch.float64) + 1) / 2).clamp(0, 1)
    t = (target.detach().to("cpu", torch.float64) + 1) / 2
    mse = (p - t).pow(2).flatten(1).mean(dim=1)
    return 10 * torch.log10(1 / mse)


def median_psnr(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Median over images of :func:`psnr_per_image` (Table 4's "median PSNR", our primary convention).

    For an even number of images this is the mean of the two middle values (``numpy.median``), not the lower
    middle value that ``torch.median`` returns.
    """
    return float(np.median(psnr_per_image(pred, target).numpy()))


def _psnr_from_mse(mse: float) -> float:
    return -10 * math.log10(mse) if mse > 0 else math.inf


def reference_batch_psnr(
    pred: torch.Tensor, target: torch.Tensor, batch_size: int = REFERENCE_BATCH_SIZE
) -> dict[str, float | int]:
    """PSNR as the reference JIIO code reports it: from per-batch MSEs in ``[-1, 1]`` units.

    Images are cut into consecutive batches of ``batch_size`` (the last, partial batch is kept, so its MSE
    averages fewer images); each batch's MSE is the mean over all its elements, with ``pred`` not clamped.
    The returned PSNRs are ``-10 * log10(q)`` for ``q`` the 25th, 50th and 75th percentiles of the batch MSEs
    (``numpy.percentile``, linear interpolation) and for their mean: keys ``"p25"``, ``"median"``, ``"p75"``,
    ``"mean_mse_psnr"``, plus ``"n_batches"`` and ``"batch_size"``. Because PSNR decreases with MSE,
    ``p25 >= median >= p75``.

    The peak-to-peak range is 2 but the formula uses 1, so for the same images (with ``pred`` inside
    ``[-1, 1]``) every value is ``10 * log10(4) ~= 6.02 dB`` below the ``[0, 1]`` convention; and the
    "median" is over batches, not over images as in :func:`median_psnr`.
    """
    _check_pair(pred, target)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    sq = (pred.detach().to("cpu", torch.float64) - target.detach().to("cpu", torch.float64)).pow(2)
    batch_mse = np.array([float(chunk.mean()) for chunk in sq.split(batch_size, dim=0)])
    p25, p50, p75 = np.percentile(batch_mse, [25, 50, 75])
    return {
        "p25": _psnr_from_mse(float(p25)),
        "median": _psnr_from_mse(float(p50)),
        "p75": _psnr_from_mse(float(p75)),
        "mean_mse_psnr": _psnr_from_mse(float(batch_mse.mean())),
        "n_batches": int(batch_mse.size),
        "batch_size": batch_size,
    }


@dataclass
class FIDResult:
    """An FID value with its provenance; ``value`` is None (and ``reason`` says why) when it was not computed."""

    value: float | None
    reason: str | None
    n_reference: int
    n_samples: int
    weights_path: str | None
    weights_sha256: str | None
    implementation: str

    def as_cell(self) -> str:
        """Table cell: ``"%.2f"`` of the value, or ``"n/a"``."""
        return "n/a" if self.value is None else f"{self.value:.2f}"


def fid_weights_status(weights_path: str | os.PathLike) -> tuple[bool, str]:
    """Whether the InceptionV3 weights file for FID is usable: ``(True, "")`` or ``(False, reason)``."""
    path = Path(weights_path)
    how = (
        f"download {FID_WEIGHTS_FILENAME} from the torch-fidelity v0.2.0 GitHub release ({FID_WEIGHTS_URL}) "
        f"on a machine with internet, put it at {path}, then `dvc add` it"
    )
    if not path.exists():
        return False, f"FID Inception weights not found at {path}: {how}"
    if not path.is_file():
        return False, f"FID Inception weights path {path} is not a file: {how}"
    if path.stat().st_size == 0:
        return False, f"FID Inception weights file {path} is empty: {how}"
    return True, ""


def _sha256(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def _check_images(images: torch.Tensor, name: str = "images") -> None:
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"{name} must have shape (N, C, H, W) with C in (1, 3), got {tuple(images.shape)}")
    if images.dtype != torch.uint8 and not images.is_floating_point():
        raise ValueError(f"{name} must be uint8 or floating point in [-1, 1], got dtype {images.dtype}")


def to_uint8_rgb(images: torch.Tensor) -> torch.Tensor:
    """Convert images to uint8 RGB ``(N, 3, H, W)`` on the CPU, as torch-fidelity expects.

    Floating-point input is taken to be in ``[-1, 1]`` and mapped by ``round((x + 1) / 2 * 255)``, clamped to
    ``[0, 255]``; uint8 input is kept as is. One channel (grayscale) is repeated to three.
    """
    _check_images(images)
    x = images.detach().cpu()
    if x.is_floating_point():
        if not bool(torch.isfinite(x).all()):
            raise ValueError("images contain NaN or infinite values")
        x = ((x.to(torch.float64) + 1) / 2 * 255).round().clamp(0, 255).to(torch.uint8)
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    return x.contiguous()


class UInt8ImageDataset(Dataset):
    """A fixed set of uint8 RGB images whose items are bare ``(3, H, W)`` tensors, torch-fidelity's Dataset input."""

    def __init__(self, images: torch.Tensor) -> None:
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
            raise ValueError("UInt8ImageDataset needs a uint8 tensor; convert with to_uint8_rgb first")
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"UInt8ImageDataset needs shape (N, 3, H, W), got {tuple(images.shape)}")
        self.images = images

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.images[index]


def save_image_folder(images: torch.Tensor, directory: str | os.PathLike) -> Path:
    """Write images as RGB PNGs ``000000.png, 000001.png, ...`` into ``directory``, replacing it if present.

    Images go through :func:`to_uint8_rgb`. The files are written to a temporary sibling directory that is
    then renamed into place, so ``directory`` never holds a partial set; replacing an existing directory moves
    the old one aside first, so for a moment ``directory`` does not exist.
    """
    pixels = to_uint8_rgb(images).permute(0, 2, 3, 1).numpy()
    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    width = max(6, len(str(len(pixels) - 1)))
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        for i, image in enumerate(pixels):
            Image.fromarray(image).save(tmp / f"{i:0{width}d}.png")
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
            os.replace(target, old / target.name)
            os.replace(tmp, target)
            shutil.rmtree(old)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _implementation() -> str:
    try:
        version = importlib.metadata.version("torch-fidelity")
    except importlib.metadata.PackageNotFoundError:
        version = "(not installed)"
    return f"torch-fidelity {version}, {FID_FEATURE_EXTRACTOR}"


def compute_fid(
    reference: torch.Tensor,
    samples: torch.Tensor,
    weights_path: str | os.PathLike,
    *,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    seed: int = 2020,
) -> FIDResult:
    """FID between two image sets with torch-fidelity's TF-compatible InceptionV3 (pool3, 2048 features).

    Inputs are float ``[-1, 1]`` or uint8 images ``(N, C, H, W)`` with ``C`` in (1, 3) and at least 2 images
    each (torch-fidelity resizes to 299 internally). Without a usable weights file the result has
    ``value=None`` and a ``reason``, and torch-fidelity is not imported. ``seed`` is passed as ``rng_seed``;
    FID of two fixed image sets involves no randomness.
    """
    for name, x in (("reference", reference), ("samples", samples)):
        _check_images(x, name)
        if x.shape[0] < 2:
            raise ValueError(f"{name} needs at least 2 images for a covariance, got {x.shape[0]}")
    dev = torch.device(device)
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda, got {device!r}")
    path = Path(weights_path)
    result = FIDResult(
        value=None,
        reason=None,
        n_reference=int(reference.shape[0]),
        n_samples=int(samples.shape[0]),
        weights_path=str(path),
        weights_sha256=None,
        implementation=_implementation(),
    )
    ok, reason = fid_weights_status(path)
    if not ok:
        result.reason = reason
        return result
    result.weights_sha256 = _sha256(path)

    import torch_fidelity

    kwargs = dict(
        input1=UInt8ImageDataset(to_uint8_rgb(reference)),
        input2=UInt8ImageDataset(to_uint8_rgb(samples)),
        cuda=dev.type == "cuda",
        batch_size=batch_size,
        fid=True,
        feature_extractor=FID_FEATURE_EXTRACTOR,
        feature_extractor_weights_path=str(path),
        cache=False,
        verbose=False,
        datasets_download=False,
        samples_shuffle=False,
        rng_seed=seed,
        # Otherwise torch-fidelity starts min(4, 2 * cpu_count) DataLoader workers for an in-memory tensor.
        save_cpu_ram=True,
    )
    if dev.type == "cuda" and dev.index is not None:
        with torch.cuda.device(dev.index):
            metrics = torch_fidelity.calculate_metrics(**kwargs)
    else:
        metrics = torch_fidelity.calculate_metrics(**kwargs)
    value = float(metrics[torch_fidelity.KEY_METRIC_FID])
    if not math.isfinite(value):
        result.reason = f"torch-fidelity returned a non-finite FID ({value})"
        return result
    result.value = value
    return result
