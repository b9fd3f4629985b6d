"""Inner costs of input optimisation problems (JIIO paper eqs. 20 and 22)."""

from __future__ import annotations

import torch


def masked_sq_error(prediction: torch.Tensor, observed: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample ``sum_{C,H,W} (mask * (prediction - observed))^2``, shape ``(B,)``.

    The inner cost ``||y_hat - A h(z)||^2`` of JIIO eq. 22 with ``A`` = the
    mask (inpainting) or the identity (denoising, mask of ones).  ``mask``
    broadcasts against ``prediction``, e.g. ``(B, 1, H, W)``.
    """
    diff = prediction - observed if mask is None else mask * (prediction - observed)
    return diff.square().flatten(1).sum(1)
