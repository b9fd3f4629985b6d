"""Ex-post density estimation for sampling from a decoder-only generative model.

The JIIO generator is trained without a prior (JIIO paper section 4.1 and
appendix C.2; Ghosh et al. 2020, "From variational to deterministic
autoencoders", section 4).  After training, the training-set latents (N, D)
are fitted with a density model and new latents are drawn from it:

1. standardise every latent dimension with the training-set mean and
   (population) std;
2. optionally (``aux_vae=True``, the JIIO setting) fit an auxiliary MLP VAE on
   the standardised latents: loss = per-sample MSE (mean over dims) +
   ``kl_weight`` * KL(q(u|z) || N(0, I)), encoder log-sigma = 5 tanh(linear),
   Adam with ReduceLROnPlateau on the validation loss;
3. fit a scikit-learn ``GaussianMixture`` on the aux encoder *means* of all N
   training latents (or directly on the standardised latents when
   ``aux_vae=False``, the RAE/AE baselines of Ghosh et al.);
4. sample: GMM -> aux decoder -> de-standardise.

GMM sampling and log-densities are computed with torch from the stored
parameters, so a model restored by :meth:`PosthocDensity.from_state_dict`
needs no fitted scikit-learn object.

Small-data behaviour: the validation split holds ``floor(val_fraction * N)``
latents; when that is 0 (``val_fraction * N < 1``) there is no split, all
latents are used for training and ReduceLROnPlateau monitors the training loss
instead.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

__all__ = ["DensityConfig", "PosthocDensity", "COVARIANCE_TYPES"]

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")  # scikit-learn's GaussianMixture choices
STATE_FORMAT = "deqbench.posthoc_density"
STATE_VERSION = 1
_CHUNK = 4096  # rows per forward pass when encoding / decoding outside training


@dataclass(frozen=True)
class DensityConfig:
    """Hyper-parameters of the post-hoc density model (defaults: JIIO paper appendix C.2)."""

    aux_vae: bool = True
    aux_latent_dim: int = 384  # 3 x the 128-dim generator latent
    hidden: int = 2048
    depth: int = 3  # hidden layers in each of encoder and decoder
    epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-4
    kl_weight: float = 5e-4
    val_fraction: float = 0.1
    plateau_factor: float = 0.5
    plateau_patience: int = 3
    gmm_components: int = 20
    gmm_covariance: str = "full"
    gmm_max_iter: int = 2000
    gmm_tol: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.aux_vae, bool):
            raise ValueError(f"aux_vae must be a bool, got {self.aux_vae!r}")
        for name in ("aux_latent_dim", "hidden", "depth", "epochs", "batch_size", "gmm_components", "gmm_max_iter"):
            _check_int(name, getattr(self, name), minimum=1)
        _check_int("plateau_patience", self.plateau_patience, minimum=0)
        _check_int("seed", self.seed, minimum=0)
        if self.seed >= 2**32:  # numpy / scikit-learn seeds are 32-bit
            raise ValueError(f"seed must be < 2**32, got {self.seed}")
        self._set_real("lr", low=0.0, low_open=True)
        self._set_real("kl_weight", low=0.0)
        self._set_real("val_fraction", low=0.0, high=1.0)
        self._set_real("plateau_factor", low=0.0, high=1.0, low_open=True)
        self._set_real("gmm_tol", low=0.0)
        if self.gmm_covariance not in COVARIANCE_TYPES:
            raise ValueError(f"gmm_covariance must be one of {list(COVARIANCE_TYPES)}, got {self.gmm_covariance!r}")

    def _set_real(self, name: str, *, low: float, high: float | None = None, low_open: bool = False) -> None:
        """Check a real-valued field (``low <= v`` or ``low < v``, ``v < high``) and store it as a float."""
        value = getattr(self, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            hint = ""
            if isinstance(value, str):
                hint = " (PyYAML reads exponent literals without a '.' such as 1e-4 as strings; write 1.0e-4)"
            raise ValueError(f"{name} must be a real number, got {type(value).__name__} {value!r}{hint}")
        value = float(value)
        too_low = value <= low if low_open else value < low
        if not math.isfinite(value) or too_low or (high is not None and value >= high):
            lo = f"{low} <{'' if low_open else '='} {name}"
            raise ValueError(f"{name} must satisfy {lo}{f' < {high}' if high is not None else ''}, got {value!r}")
        object.__setattr__(self, name, value)  # frozen: normalise ints to floats

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any] | None) -> DensityConfig:
        """Build from a params.yaml block; unknown keys raise a ValueError listing them."""
        mapping = dict(mapping or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(mapping) - known)
        if unknown:
            raise ValueError(f"unknown density config key(s) {unknown}; allowed: {sorted(known)}")
        return cls(**mapping)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_int(name: str, value: Any, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _mlp(d_in: int, hidden: int, depth: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(d_in if i == 0 else hidden, hidden), nn.ReLU()]
    return nn.Sequential(*layers)


class AuxVAE(nn.Module):
    """MLP VAE on standardised latents; log-sigma = 5 tanh(linear) (JIIO paper appendix C.2)."""

    def __init__(self, dim: int, latent_dim: int, hidden: int, depth: int) -> None:
        super().__init__()
        self.encoder = _mlp(dim, hidden, depth)
        self.mean_head = nn.Linear(hidden, latent_dim)
        self.log_sigma_head = nn.Linear(hidden, latent_dim)
        self.decoder = nn.Sequential(_mlp(latent_dim, hidden, depth), nn.Linear(hidden, dim))

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.encoder(x)
        return self.mean_head(h), 5.0 * torch.tanh(self.log_sigma_head(h))

    def decode(self, u: Tensor) -> Tensor:
        return self.decoder(u)

    def loss(self, x: Tensor, kl_weight: float, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """Batch means of (total, per-sample MSE, per-sample KL) with one reparameterised draw."""
        mean, log_sigma = self.encode(x)
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        recon = self.decode(mean + torch.exp(log_sigma) * eps)
        mse = (recon - x).pow(2).mean(dim=1)
        kl = 0.5 * (mean.pow(2) + torch.exp(2.0 * log_sigma) - 1.0 - 2.0 * log_sigma).sum(dim=1)
        return (mse + kl_weight * kl).mean(), mse.mean(), kl.mean()


def _full_covariances(covariances: Tensor, covariance_type: str, k: int, d: int) -> Tensor:
    """scikit-learn's per-type covariance arrays -> (K, D, D)."""
    if covariance_type == "full":
        return covariances
    if covariance_type == "tied":
        return covariances.expand(k, d, d)
    if covariance_type == "diag":
        return torch.diag_embed(covariances)
    return covariances[:, None, None] * torch.eye(d, dtype=covariances.dtype)  # spherical


class PosthocDensity:
    """Standardisation + optional aux VAE + GMM, fitted post hoc on generator latents.

    JIIO paper appendix C.2; Ghosh et al. 2020 section 4.  Build with
    :meth:`fit` or :meth:`from_state_dict`.
    """

    def __init__(
        self,
        config: DensityConfig,
        latent_mean: Tensor,
        latent_std: Tensor,
        gmm: dict[str, Any],
        vae: AuxVAE | None,
        history: dict[str, Any],
    ) -> None:
        self.config = config
        self.latent_mean = latent_mean.detach().to("cpu", torch.float64).clone()
        self.latent_std = latent_std.detach().to("cpu", torch.float64).clone()
        self.dim = int(self.latent_mean.numel())
        self.gmm = dict(gmm)
        for key in ("weights", "means", "covariances"):
            self.gmm[key] = torch.as_tensor(self.gmm[key]).detach().to("cpu", torch.float64).clone()
        self.vae = vae.cpu().eval() if vae is not None else None
        self.history = history
        k, d = self.gmm["means"].shape
        full = _full_covariances(self.gmm["covariances"], self.gmm["covariance_type"], k, d)
        self._chol = torch.linalg.cholesky(full)  # (K, d, d), float64

    # ------------------------------------------------------------------ fit
    @classmethod
    def fit(
        cls,
        latents: Tensor,
        config: DensityConfig | None = None,
        progress: bool = False,
        *,
        device: str | torch.device | None = None,
    ) -> PosthocDensity:
        """Fit on training latents (N, D); deterministic given ``config.seed``.

        ``device`` (default: the latents' device) is where the aux VAE trains;
        the fitted model lives on the CPU.
        """
        config = config or DensityConfig()
        x = torch.as_tensor(latents)
        if x.ndim != 2:
            raise ValueError(f"latents must have shape (N, D), got {tuple(x.shape)}")
        n, d = x.shape
        if d < 1:
            raise ValueError("latents must have at least one dimension (D >= 1)")
        if n <= config.gmm_components:
            raise ValueError(
                f"need more latents than gmm_components: got N={n} latents for gmm_components={config.gmm_components}"
            )
        if x.is_complex() or x.dtype == torch.bool:
            raise ValueError(f"latents must be real-valued, got dtype {x.dtype}")
        device = torch.device(device) if device is not None else x.device
        x64 = x.detach().to("cpu", torch.float64)
        if not torch.isfinite(x64).all():
            raise ValueError(f"latents contain {int((~torch.isfinite(x64)).sum())} non-finite value(s)")

        mean = x64.mean(dim=0)
        std = x64.std(dim=0, correction=0)
        std = torch.where(std > 1e-12, std, torch.ones_like(std))  # constant dims: leave at 0 after centring
        z = (x64 - mean) / std

        history: dict[str, Any] = {"train_loss": [], "train_mse": [], "train_kl": [], "val_loss": [], "lr": []}
        history.update(n_train=n, n_val=0)
        vae = None
        if config.aux_vae:
            vae = _train_aux_vae(z.to(torch.float32), config, history, device, progress)
            codes = _encode_means(vae, z.to(torch.float32), device).to(torch.float64)
        else:
            codes = z

        from sklearn.mixture import GaussianMixture  # imported here: scikit-learn takes seconds to load

        gm = GaussianMixture(
            n_components=config.gmm_components,
            covariance_type=config.gmm_covariance,
            max_iter=config.gmm_max_iter,
            tol=config.gmm_tol,
            random_state=config.seed,
        )
        gm.fit(codes.numpy())
        gmm = {
            "covariance_type": config.gmm_covariance,
            "weights": torch.from_numpy(gm.weights_.copy()),
            "means": torch.from_numpy(gm.means_.copy()),
            "covariances": torch.from_numpy(np.asarray(gm.covariances_).copy()),
            "converged": bool(gm.converged_),
            "n_iter": int(gm.n_iter_),
            "lower_bound": float(gm.lower_bound_),
        }
        return cls(config, mean, std, gmm, vae, history)

    # ------------------------------------------------------------ inference
    def standardise(self, latents: Tensor) -> Tensor:
        return (torch.as_tensor(latents).detach().to("cpu", torch.float64) - self.latent_mean) / self.latent_std

    def encode_means(self, latents: Tensor) -> Tensor:
        """Latents (M, D) -> the space the GMM lives in, float64 on the CPU.

        With the aux VAE: its encoder means of the standardised latents; without:
        the standardised latents themselves.
        """
        z = self.standardise(latents)
        if self.vae is None:
            return z
        return _encode_means(self.vae, z.to(torch.float32), torch.device("cpu")).to(torch.float64)

    def gmm_log_prob(self, codes: Tensor) -> Tensor:
        """Log-density (M,) of points in GMM space (see :meth:`encode_means`) under the fitted mixture."""
        codes = torch.as_tensor(codes).to("cpu", torch.float64)
        weights, means = self.gmm["weights"], self.gmm["means"]
        d = means.shape[1]
        per_component = []
        for k in range(means.shape[0]):
            chol = self._chol[k]
            white = torch.linalg.solve_triangular(chol, (codes - means[k]).T, upper=False)
            log_det = 2.0 * torch.log(torch.diagonal(chol)).sum()
            per_component.append(-0.5 * (white.pow(2).sum(0) + log_det + d * math.log(2.0 * math.pi)))
        return torch.logsumexp(torch.stack(per_component, dim=1) + torch.log(weights), dim=1)

    def sample_codes(self, n: int, seed: int) -> Tensor:
        """Draw n points (n, d) float64 from the stored GMM parameters.

        Components are drawn i.i.d. per sample, so the rows are already in
        random order (the reference shuffles because scikit-learn's ``sample``
        returns them grouped by component).
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be a non-negative int, got {n!r}")
        gen = torch.Generator().manual_seed(int(seed))
        means = self.gmm["means"]
        if n == 0:
            return means.new_zeros(0, means.shape[1])
        comps = torch.multinomial(self.gmm["weights"], n, replacement=True, generator=gen)
        eps = torch.randn(n, means.shape[1], generator=gen, dtype=torch.float64)
        out = torch.empty_like(eps)
        # Loop over components: gathering a (n, d, d) stack of Cholesky factors would not fit in memory at scale.
        for k in range(means.shape[0]):
            idx = (comps == k).nonzero(as_tuple=True)[0]
            if idx.numel():
                out[idx] = means[k] + eps[idx] @ self._chol[k].T
        return out

    def decode_codes(self, codes: Tensor, device: str | torch.device | None = None) -> Tensor:
        """GMM-space points -> latents (M, D) float32 in the original scale (on ``device``, default CPU)."""
        device = torch.device(device) if device is not None else torch.device("cpu")
        codes = torch.as_tensor(codes).to(torch.float64)
        if self.vae is None:
            z = codes.cpu()
        else:
            vae = self.vae.to(device)
            try:
                with torch.no_grad():
                    parts = [vae.decode(c.to(device, torch.float32)).cpu() for c in codes.split(_CHUNK)]
            finally:
                self.vae = vae.cpu()
            z = torch.cat(parts).to(torch.float64) if parts else codes.new_zeros(0, self.dim)
        return (z * self.latent_std + self.latent_mean).to(device, torch.float32)

    def sample(self, n: int, seed: int, *, device: str | torch.device | None = None) -> Tensor:
        """Draw n new latents (n, D) float32 in the original latent scale; a function of (n, seed) only."""
        return self.decode_codes(self.sample_codes(n, seed), device=device)

    # ---------------------------------------------------------- persistence
    def state_dict(self) -> dict[str, Any]:
        """Plain tensors / numbers / strings only (loadable with ``torch.load(weights_only=True)``)."""
        gmm = {k: (v.clone() if isinstance(v, Tensor) else v) for k, v in self.gmm.items()}
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "config": self.config.to_dict(),
            "dim": self.dim,
            "latent_mean": self.latent_mean.clone(),
            "latent_std": self.latent_std.clone(),
            "gmm": gmm,
            "aux_vae": None if self.vae is None else {k: v.clone() for k, v in self.vae.state_dict().items()},
            "history": _copy_history(self.history),
        }

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> PosthocDensity:
        """Restore exactly what :meth:`state_dict` saved."""
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"not a {STATE_FORMAT} state dict (format={state.get('format')!r})")
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported {STATE_FORMAT} version {state.get('version')!r}; expected {STATE_VERSION}")
        config = DensityConfig.from_mapping(state["config"])
        vae = None
        if config.aux_vae:
            if state.get("aux_vae") is None:
                raise ValueError("config has aux_vae=True but the state dict holds no aux VAE weights")
            vae = AuxVAE(int(state["dim"]), config.aux_latent_dim, config.hidden, config.depth)
            vae.load_state_dict(state["aux_vae"])
        return cls(config, state["latent_mean"], state["latent_std"], state["gmm"], vae, _copy_history(state["history"]))

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable summary."""
        h = self.history

        def last(key: str) -> float | None:
            values = h.get(key) or [None]
            return None if values[-1] is None else float(values[-1])

        return {
            "config": self.config.to_dict(),
            "dim": self.dim,
            "gmm_dim": int(self.gmm["means"].shape[1]),
            "n_train": int(h.get("n_train", 0)),
            "n_val": int(h.get("n_val", 0)),
            "epochs_run": len(h.get("train_loss", [])),
            "final_train_loss": last("train_loss"),
            "final_val_loss": last("val_loss"),
            "final_lr": last("lr"),
            "gmm_converged": bool(self.gmm["converged"]),
            "gmm_n_iter": int(self.gmm["n_iter"]),
            "gmm_lower_bound": float(self.gmm["lower_bound"]),
        }


def _copy_history(history: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, list) else v) for k, v in history.items()}


def _encode_means(vae: AuxVAE, z: Tensor, device: torch.device) -> Tensor:
    was_training = vae.training
    vae.eval()
    with torch.no_grad():
        parts = [vae.encode(c.to(device))[0].cpu() for c in z.split(_CHUNK)]
    vae.train(was_training)
    return torch.cat(parts)


def _train_aux_vae(
    z: Tensor, config: DensityConfig, history: dict[str, Any], device: torch.device, progress: bool
) -> AuxVAE:
    """Fit the aux VAE on standardised latents (N, D) float32; appends per-epoch stats to ``history``."""
    n, d = z.shape
    rng = np.random.default_rng(config.seed)
    order = torch.from_numpy(rng.permutation(n))
    n_val = math.floor(config.val_fraction * n + 1e-9)  # 0 -> no split, plateau on the training loss
    val, train = z[order[:n_val]].to(device), z[order[n_val:]].to(device)
    history.update(n_train=len(train), n_val=n_val)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        vae = AuxVAE(d, config.aux_latent_dim, config.hidden, config.depth)
    vae.to(device).train()
    shuffle_gen = torch.Generator().manual_seed(config.seed)
    noise_gen = torch.Generator(device=device).manual_seed(config.seed + 1)
    opt = torch.optim.Adam(vae.parameters(), lr=config.lr)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode="min", factor=config.plateau_factor, patience=config.plateau_patience
    )

    bar = tqdm(range(config.epochs), desc="aux VAE", unit="epoch", disable=not progress)
    for _ in bar:
        vae.train()
        totals = torch.zeros(3, dtype=torch.float64, device=device)
        for idx in torch.randperm(len(train), generator=shuffle_gen).split(config.batch_size):
            loss, mse, kl = vae.loss(train[idx.to(device)], config.kl_weight, noise_gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            totals += torch.stack([loss, mse, kl]).detach().to(torch.float64) * len(idx)
        train_loss, train_mse, train_kl = (totals / len(train)).tolist()
        val_loss = None
        if n_val:
            vae.eval()
            with torch.no_grad():
                total = sum(vae.loss(chunk, config.kl_weight, noise_gen)[0].double() * len(chunk) for chunk in val.split(_CHUNK))
            val_loss = float(total) / n_val
        history["train_loss"].append(train_loss)
        history["train_mse"].append(train_mse)
        history["train_kl"].append(train_kl)
        history["val_loss"].append(val_loss)
        history["lr"].append(float(opt.param_groups[0]["lr"]))
        sched.step(val_loss if val_loss is not None else train_loss)
        bar.set_postfix(train=f"{train_loss:.4f}", val="-" if val_loss is None else f"{val_loss:.4f}")
    vae.eval()
    return vae
