"""FID for the JIIO generative table (Gurumurthy et al. 2021, Table 1).

FID is computed by torch-fidelity's TF-compatible InceptionV3 from a local weights file whose SHA-256 is checked
against :data:`FID_WEIGHTS_SHA256` before use; without the file (or with a different one) the result is ``n/a``
with a reason, never a number.
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

import torch
from PIL import Image
from torch.utils.data import Dataset

FID_WEIGHTS_FILENAME = "weights-inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{FID_WEIGHTS_FILENAME}"
FID_FEATURE_EXTRACTOR = "inception-v3-compat"
# SHA-256 of the release file (its name carries the first 8 hex digits, as torch.hub checks them).  A file with
# another hash is refused: a different Inception network gives FIDs on a different scale.
FID_WEIGHTS_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"


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


def fid_weights_status(weights_path: str | os.PathLike,
                       expected_sha256: str | None = FID_WEIGHTS_SHA256) -> tuple[bool, str]:
    """Whether the InceptionV3 weights file for FID is usable: ``(True, "")`` or ``(False, reason)``.

    The file must have SHA-256 ``expected_sha256`` (torch-fidelity unpickles it, so an unchecked file could run
    code); ``None`` skips the check (tests with random weights only).
    """
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
    digest = _sha256(path)
    if expected_sha256 is not None and digest != expected_sha256:
        return False, (f"FID Inception weights file {path} has SHA-256 {digest}, expected {expected_sha256}: "
                       f"it is not torch-fidelity's {FID_WEIGHTS_FILENAME}; {how}")
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
    expected_sha256: str | None = FID_WEIGHTS_SHA256,
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
    ok, reason = fid_weights_status(path, expected_sha256)
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
