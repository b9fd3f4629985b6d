"""PSNR for the JIIO inverse-problem and reconstruction tables (Gurumurthy et al. 2021, Tables 1 and 4).

Images are ``(N, C, H, W)`` tensors in the model's range ``[-1, 1]`` (tanh outputs; targets normalised with
mean 0.5 and std 0.5).  Two conventions:

- :func:`psnr_per_image` / :func:`median_psnr` (primary): pixels mapped to ``[0, 1]``, one PSNR per image,
  median over images.
- :func:`reference_batch_psnr`: the reference code's convention, MSE in ``[-1, 1]`` units per consecutive batch,
  percentiles over batches. For the same images it reads ``10*log10(4) ~= 6.02 dB`` lower.
"""

from __future__ import annotations

import math

import numpy as np
import torch

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


