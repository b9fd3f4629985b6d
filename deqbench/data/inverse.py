"""Inverse problems of the JIIO paper (Gurumurthy et al. 2021, section 4.2, eq. 21-24).

Given a corrupted observation ``y_hat = A x + noise`` of a clean image ``x``
(in the model's ``[-1, 1]`` range), JIIO finds the latent ``z`` minimising the
inner cost ``||y_hat - A h(z)||^2`` (eq. 22, :func:`masked_sq_error`) and the
model is trained with a loss on the *full clean image* ``x``.

``inpaint``
    ``A`` is a 0/1 mask that zeroes one ``window x window`` square per image
    (window 20 on 64x64 CelebA in the paper; use a smaller one, e.g. 5, on
    16x16 embedded images).  As in the reference code the square's centre
    ``c`` is drawn uniformly from the integers ``[window // 2, size -
    window // 2)``, independently per image and per axis (``[10, 54)`` for
    window 20 on 64 px), and covers rows/columns ``[c - window // 2,
    c - window // 2 + window)``; so the square always lies inside the image
    when ``window <= size`` (for an even window it never touches the last
    row/column, as in the reference).  A window larger than the image is
    clipped to it (centre ``window // 2``, i.e. the whole axis is masked).
    The mask only enters the inner cost.  In the reference the observation
    is the clean image times the mask (its separate target was never set, a
    bug); since the mask is 0/1 this gives the same inner cost as the clean
    image itself.
``denoise``
    ``A`` is the identity and ``y_hat = x + sigma * N(0, 1)`` with sigma 0.2
    or 0.4 *in the [-1, 1] model range*, i.e. 0.1 / 0.2 in ``[0, 1]`` pixel
    units.  The noisy image is not clipped.  (The reference added the noise in
    place to a view of the caller's batch, a bug; here inputs are never
    modified.)
``none``
    Plain reconstruction: ``y_hat = x``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from deqbench.inputopt.costs import masked_sq_error

__all__ = ["InverseProblem", "PAPER_PROBLEMS", "corrupt", "masked_sq_error"]

_KINDS = ("inpaint", "denoise", "none")


@dataclass(frozen=True)
class InverseProblem:
    """One corruption of JIIO section 4.2.

    ``kind``: ``"inpaint"``, ``"denoise"`` or ``"none"`` (reconstruction).
    ``window``: side of the inpainting square in pixels.  ``sigma``: denoising
    noise standard deviation in model-range (``[-1, 1]``) units, so 0.2 is 0.1
    in ``[0, 1]`` pixel units; must be 0 unless ``kind == "denoise"``.
    """

    kind: str
    window: int = 20
    sigma: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"kind must be one of {', '.join(map(repr, _KINDS))}, got {self.kind!r}")
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1:
            raise ValueError(f"window must be a positive integer, got {self.window!r}")
        if isinstance(self.sigma, bool) or not isinstance(self.sigma, (int, float)) or not math.isfinite(self.sigma):
            raise ValueError(f"sigma must be a finite number, got {self.sigma!r}")
        if self.kind == "denoise" and self.sigma <= 0:
            raise ValueError(f"sigma must be > 0 for kind 'denoise', got {self.sigma!r}")
        if self.kind != "denoise" and self.sigma != 0:
            raise ValueError(f"sigma must be 0 unless kind is 'denoise' (kind {self.kind!r}), got {self.sigma!r}")

    @property
    def name(self) -> str:
        """``"inpaint20"``, ``"denoise0.2"`` or ``"reconstruct"``; :meth:`parse` inverts it."""
        if self.kind == "inpaint":
            return f"inpaint{self.window}"
        if self.kind == "denoise":
            return f"denoise{float(self.sigma)!r}"
        return "reconstruct"

    @classmethod
    def parse(cls, name: str) -> InverseProblem:
        """The problem called ``name``: ``"inpaint<window>"``, ``"denoise<sigma>"``, ``"reconstruct"``/``"none"``."""
        if not isinstance(name, str):
            raise ValueError(f"inverse problem name must be a string, got {name!r}")
        if name in ("reconstruct", "none"):
            return cls("none")
        match = re.fullmatch(r"inpaint(\d+)", name)
        if match:
            return cls("inpaint", window=int(match.group(1)))
        match = re.fullmatch(r"denoise([0-9.eE+-]+)", name)
        if match:
            try:
                sigma = float(match.group(1))
            except ValueError:
                pass
            else:
                return cls("denoise", sigma=sigma)
        raise ValueError(
            f"unknown inverse problem {name!r}; expected 'inpaint<window>' (e.g. 'inpaint20'), "
            f"'denoise<sigma>' (e.g. 'denoise0.2') or 'reconstruct'"
        )


#: The three problems of JIIO section 4.2 on 64x64 CelebA.
PAPER_PROBLEMS: tuple[InverseProblem, ...] = (
    InverseProblem("inpaint", window=20),
    InverseProblem("denoise", sigma=0.2),
    InverseProblem("denoise", sigma=0.4),
)


def _window_mask(batch: int, height: int, width: int, window: int, generator: torch.Generator,
                 device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    half = window // 2
    masks = []
    for size in (height, width):
        # centre in [half, size - half); the max() keeps the range non-empty (clipping) for big windows
        centre = torch.randint(half, max(size - half, half + 1), (batch,), generator=generator, device=device)
        start = (centre - half)[:, None]
        pos = torch.arange(size, device=device)[None, :]
        masks.append((pos >= start) & (pos < start + window))  # (B, size): inside the square along this axis
    inside = masks[0][:, :, None] & masks[1][:, None, :]
    return (~inside).to(dtype).unsqueeze(1)


def corrupt(problem: InverseProblem, images: torch.Tensor,
            generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``(observed, mask)`` for a clean batch ``images`` ``(B, C, H, W)`` in ``[-1, 1]`` (JIIO section 4.2).

    ``mask`` is ``(B, 1, H, W)`` in ``images``' dtype: the inpainting mask (0
    inside the square) or all ones.  ``observed`` is a new tensor: ``images *
    mask`` (inpaint), ``images + sigma * N(0, 1)`` with sigma in model-range
    units and no clipping (denoise), or a copy (none).  All randomness comes
    from ``generator``, which must live on ``images``' device; ``images`` is
    never modified.
    """
    if not isinstance(problem, InverseProblem):
        raise TypeError(f"problem must be an InverseProblem, got {type(problem).__name__}")
    if images.ndim != 4 or not images.is_floating_point():
        raise ValueError(f"images must be a floating (B, C, H, W) tensor, got {images.dtype} {tuple(images.shape)}")
    if generator.device.type != images.device.type:
        raise ValueError(f"generator is on {generator.device} but images are on {images.device}")
    batch, _, height, width = images.shape
    if problem.kind == "inpaint":
        mask = _window_mask(batch, height, width, problem.window, generator, images.device, images.dtype)
        return images * mask, mask
    mask = torch.ones(batch, 1, height, width, device=images.device, dtype=images.dtype)
    if problem.kind == "denoise":
        noise = torch.randn(images.shape, generator=generator, device=images.device, dtype=images.dtype)
        return images + problem.sigma * noise, mask
    return images.clone(), mask
