"""Explicit convolutional autoencoder baselines: VAE, RAE and AE.

These are the non-DEQ "VAE", "RAE" and "AE" rows of the JIIO paper
(Gurumurthy et al. 2021, Tables 1 and 4), which borrows them from Ghosh et al.
2020 ("From variational to deterministic autoencoders", ICLR 2020, CelebA
architecture).  Images are ``(B, C, H, W)`` in ``[-1, 1]``, square
(``H == W == image_size``).

Architecture (``n = len(channels)``, ``c = channels``)
------------------------------------------------------
* Encoder: ``n`` blocks ``Conv(4x4, stride 2, padding 1) -> Norm -> ReLU`` with
  ``c[0], ..., c[n-1]`` output channels (``H -> H / 2**n``), flatten, then a
  linear layer to ``latent_dim`` (VAE: two linear heads, mean and log-variance).
* Decoder: linear ``latent_dim -> c[n-1] x (H / 2**(n-1))**2``, then ``n - 1``
  blocks ``ConvTranspose(4x4, stride 2, padding 1) -> Norm -> ReLU`` along the
  reversed list ``c[n-1] -> c[n-2] -> ... -> c[0]`` (``H / 2**(n-1) -> H``),
  then a ``5x5`` stride-1 ``'same'`` convolution ``c[0] -> C`` and ``tanh``.

Size rule: ``image_size`` must be divisible by ``2**len(channels)`` (the encoder
halves it ``n`` times; the decoder starts one doubling earlier, as in Ghosh et
al.'s 64 px model: encoder down to 4x4, decoder from 8x8).  Examples: 16 px
with 3 stages, 64 px with the default 4 stages ``(128, 256, 512, 1024)``.

``Norm`` is BatchNorm (``norm="batch"``, as in Ghosh et al.) or GroupNorm with
``groups`` groups (``norm="group"``), which makes every example independent of
the rest of the batch in training mode too (useful when optimising latents per
example).  Convolutions followed by a norm have no bias (the norm's shift makes
it redundant); the linear layers and the output convolution do.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch
from torch import Tensor, nn

__all__ = ["ConvAEConfig", "ConvAutoencoder", "gaussian_kl"]

KINDS = ("vae", "rae", "ae")
NORMS = ("batch", "group")


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _positive_int(name: str, value: Any) -> None:
    if not _is_int(value) or value < 1:
        raise ValueError(f"ConvAEConfig.{name} must be a positive integer, got {value!r}")


def _non_negative_float(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"ConvAEConfig.{name} must be a finite non-negative number, got {value!r}")


@dataclass(frozen=True)
class ConvAEConfig:
    """Hyper-parameters of :class:`ConvAutoencoder` (defaults: Ghosh et al.'s CelebA 64 px model,
    with the JIIO paper's latent size 128; Ghosh et al. used 64 for CelebA)."""

    kind: str = "vae"  # "vae" | "rae" | "ae"
    image_size: int = 64
    in_channels: int = 3
    latent_dim: int = 128
    channels: tuple[int, ...] = (128, 256, 512, 1024)
    norm: str = "batch"  # "batch" | "group"
    groups: int = 8  # GroupNorm groups (norm="group" only)
    kl_weight: float = 1.0  # VAE: weight of the KL term
    # RAE weights: defaults only (Ghosh et al. tune beta per data set around 1e-4);
    # the pipeline passes its own values.
    rae_latent_weight: float = 1e-4  # beta: weight of 0.5 * ||z||^2 per image
    rae_decoder_weight: float = 1e-7  # RAE-L2: weight of the sum of squared decoder weights

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"ConvAEConfig.kind must be one of {KINDS}, got {self.kind!r}")
        if self.norm not in NORMS:
            raise ValueError(f"ConvAEConfig.norm must be one of {NORMS}, got {self.norm!r}")
        for name in ("image_size", "in_channels", "latent_dim", "groups"):
            _positive_int(name, getattr(self, name))
        channels = self.channels
        if isinstance(channels, (str, bytes)) or not isinstance(channels, Sequence) or not channels:
            raise ValueError(f"ConvAEConfig.channels must be a non-empty sequence of positive integers, "
                             f"got {channels!r}")
        channels = tuple(channels)
        if not all(_is_int(c) and c >= 1 for c in channels):
            raise ValueError(f"ConvAEConfig.channels must contain positive integers only, got {channels!r}")
        object.__setattr__(self, "channels", channels)
        factor = 2 ** len(channels)
        if self.image_size % factor:
            raise ValueError(f"ConvAEConfig.image_size={self.image_size} must be divisible by "
                             f"2**len(channels) = {factor} (channels={channels})")
        if self.norm == "group":
            for c in channels:
                if c % self.groups:
                    raise ValueError(f"ConvAEConfig.channels: {c} channels not divisible by groups={self.groups} "
                                     f"(norm='group')")
        for name in ("kl_weight", "rae_latent_weight", "rae_decoder_weight"):
            _non_negative_float(name, getattr(self, name))


def gaussian_kl(mean: Tensor, logvar: Tensor) -> Tensor:
    """Per-example ``KL(N(mean, diag(exp(logvar))) || N(0, I))``, shape ``(B,)`` (closed form)."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(1)


class ConvAutoencoder(nn.Module):
    """Ghosh et al. (2020) convolutional VAE / RAE / AE; see the module docstring for the layers."""

    def __init__(self, config: ConvAEConfig):
        super().__init__()
        self.config = config
        cfg = config
        n = len(cfg.channels)
        self.kind = cfg.kind
        self._bottom = cfg.image_size // 2**n  # encoder output side
        self._top = cfg.image_size // 2 ** (n - 1)  # decoder input side

        layers: list[nn.Module] = []
        cin = cfg.in_channels
        for c in cfg.channels:
            layers += [nn.Conv2d(cin, c, 4, stride=2, padding=1, bias=False), self._norm(c), nn.ReLU()]
            cin = c
        layers.append(nn.Flatten())
        self.encoder = nn.Sequential(*layers)
        features = cfg.channels[-1] * self._bottom**2
        self.to_mean = nn.Linear(features, cfg.latent_dim)
        self.to_logvar = nn.Linear(features, cfg.latent_dim) if cfg.kind == "vae" else None

        rev = cfg.channels[::-1]
        self.from_latent = nn.Linear(cfg.latent_dim, rev[0] * self._top**2)
        layers = []
        for cin, cout in zip(rev[:-1], rev[1:]):
            layers += [nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1, bias=False), self._norm(cout), nn.ReLU()]
        layers += [nn.Conv2d(rev[-1], cfg.in_channels, 5, padding=2), nn.Tanh()]
        self.decoder = nn.Sequential(*layers)

    def _norm(self, channels: int) -> nn.Module:
        if self.config.norm == "group":
            return nn.GroupNorm(self.config.groups, channels)
        return nn.BatchNorm2d(channels)

    # ------------------------------------------------------------------ maps

    def encode(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        """``(mean, logvar)`` for the VAE, ``(latent, None)`` for RAE / AE; each ``(B, latent_dim)``."""
        self._check_images(images)
        h = self.encoder(images)
        logvar = self.to_logvar(h) if self.to_logvar is not None else None
        return self.to_mean(h), logvar

    def decode(self, latent: Tensor) -> Tensor:
        """``(B, latent_dim)`` -> images ``(B, C, H, W)`` in ``(-1, 1)``."""
        if latent.dim() != 2 or latent.shape[1] != self.config.latent_dim:
            raise ValueError(f"latent must have shape (B, {self.config.latent_dim}), got {tuple(latent.shape)}")
        h = self.from_latent(latent).view(latent.shape[0], self.config.channels[-1], self._top, self._top)
        return self.decoder(h)

    def _latent(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(z, mean, logvar)``; the VAE samples ``z`` by reparameterisation in training mode only."""
        mean, logvar = self.encode(images)
        if logvar is not None and self.training:
            return mean + torch.randn_like(mean) * (0.5 * logvar).exp(), mean, logvar
        return mean, mean, logvar

    def forward(self, images: Tensor) -> Tensor:
        """Reconstruction (VAE: decoded mean in eval mode, decoded sample in training mode)."""
        return self.decode(self._latent(images)[0])

    # ------------------------------------------------------------------ objective

    def decoder_weight_penalty(self) -> Tensor:
        """Sum of squared weights of the decoder's linear / convolution layers (biases and norm
        parameters excluded): the RAE-L2 regulariser of Ghosh et al. (2020)."""
        return torch.stack([m.weight.pow(2).sum() for m in self._decoder_layers()]).sum()

    def _decoder_layers(self) -> list[nn.Module]:
        return [self.from_latent] + [m for m in self.decoder if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]

    def loss(self, images: Tensor, target: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Training objective and its parts.

        ``recon`` = batch mean of the per-image sum of squared errors in ``[-1, 1]``
        units (the Gaussian log-likelihood of the ELBO up to constants), plus

        * VAE: ``kl_weight * KL`` per image (closed form, batch mean);
        * RAE: ``rae_latent_weight * 0.5 * ||z||^2`` per image (batch mean)
          ``+ rae_decoder_weight * decoder_weight_penalty()``;
        * AE: nothing.

        ``target`` defaults to ``images``; pass corrupted inputs as ``images`` and
        clean ``target`` for the supervised inverse problems (JIIO paper eq. 23).
        The parts (``"recon"`` and ``"kl"`` or ``"latent_penalty"`` /
        ``"decoder_penalty"``, unweighted) are detached 0-dim tensors, so no
        host synchronisation happens here.
        """
        target = images if target is None else target
        z, mean, logvar = self._latent(images)
        recon = self.decode(z)
        if target.shape != recon.shape:
            raise ValueError(f"target must have shape {tuple(recon.shape)}, got {tuple(target.shape)}")
        rec = (recon - target).pow(2).flatten(1).sum(1).mean()
        parts = {"recon": rec.detach()}
        cfg = self.config
        if self.kind == "vae":
            assert logvar is not None
            kl = gaussian_kl(mean, logvar).mean()
            parts["kl"] = kl.detach()
            return rec + cfg.kl_weight * kl, parts
        if self.kind == "rae":
            latent_penalty = 0.5 * z.pow(2).sum(1).mean()
            decoder_penalty = self.decoder_weight_penalty()
            parts["latent_penalty"] = latent_penalty.detach()
            parts["decoder_penalty"] = decoder_penalty.detach()
            return rec + cfg.rae_latent_weight * latent_penalty + cfg.rae_decoder_weight * decoder_penalty, parts
        return rec, parts

    # ------------------------------------------------------------------ misc

    def _check_images(self, images: Tensor) -> None:
        cfg = self.config
        expected = (cfg.in_channels, cfg.image_size, cfg.image_size)
        if images.dim() != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"images must have shape (B, {', '.join(map(str, expected))}), got {tuple(images.shape)}")

    def num_parameters(self) -> int:
        """Number of trainable parameter elements."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def describe(self) -> dict[str, Any]:
        """Config and parameter count (JSON-serialisable)."""
        cfg = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self.config).items()}
        return {"model": type(self).__name__, "config": cfg, "num_parameters": self.num_parameters()}
