"""Generative modelling and inverse problems: JIIO paper sections 4.1-4.2, Tables 1, 3, 4, Figure 3, appendix C.6.

Models (``--model``), each trained for one problem (``--problem``):

* ``jiio40`` / ``jiio100``: the decoder-only JIIO-MDEQ generator trained with 40 /
  100 JIIO iterations in the inner loop; on ``reconstruct`` the inner and outer
  costs are the reconstruction error (eq. 20, backward by eq. 19); on an inverse
  problem the inner cost is ``||A y - A h(z)||^2`` and the outer loss the error
  to the clean image (eq. 24, backward by an IFT adjoint solve over z with x*
  held constant: like the reference code, no gradient flows through the argmin
  over x, a Danskin-style shortcut);
* ``mdeq_vae`` (ELBO) and ``mdeq_ae`` (supervised, eq. 23): MDEQ encoder + MDEQ decoder;
* ``vae``, ``rae``, ``ae``: the convolutional baselines of Ghosh et al. 2020.

Every hyper-parameter comes from the profile's ``generative`` block of params.yaml.

Command line (what the Snakemake rules call)::

    python -m deqbench.tasks.generative --profile P prepare --out data/prepared/P/faces.pt
    python -m deqbench.tasks.generative --profile P train --data D --model M --problem R --seed S --out ckpt.pt --partial p.pt
    python -m deqbench.tasks.generative --profile P density --data D --checkpoint ckpt.pt --out density.pt
    python -m deqbench.tasks.generative --profile P table1-cell --data D --row R --checkpoint ckpt.pt [--density d.pt] --out x.json
    python -m deqbench.tasks.generative --profile P table4-cell --data D --row R --problem R --checkpoint ckpt.pt --out x.json
    python -m deqbench.tasks.generative --profile P timing --data D --checkpoint ckpt.pt --out t.json
"""

from __future__ import annotations

import json
import math
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from deqbench.inputopt.baselines import adam
from deqbench.experiments.config import ConfigError, config_hash, load_profile
from deqbench.data import DatasetNotFoundError
from deqbench.data.faces import IMAGE_DATASETS, load_image_dataset
from deqbench.metrics.density import DensityConfig, PosthocDensity
from deqbench.data.inverse import InverseProblem, corrupt, masked_sq_error
from deqbench.experiments.io import atomic_torch_save, atomic_write_json
from deqbench.inputopt.jiio import JIIOResult, jiio
from deqbench.metrics import compute_fid, median_psnr, reference_batch_psnr
from deqbench.models.conv_ae import ConvAEConfig, ConvAutoencoder
from deqbench.models.mdeq import MDEQConfig, mdeq_layer
from deqbench.models.mdeq_generator import MDEQAutoencoder, MDEQGenerator, MDEQGeneratorConfig
from deqbench.experiments.provenance import provenance, resolve_device
from deqbench.tasks.common import (
    DivergenceError, data_source_label, load_partial, load_prepared, save_partial, seed_everything, sync, task_parser,
)

MODELS = ("jiio40", "jiio100", "mdeq_vae", "mdeq_ae", "vae", "rae", "ae")
JIIO_MODELS = {"jiio40": 40, "jiio100": 100}
TABLE1_ROWS = ("vae", "rae", "mdeq_vae", "mdeq_vae_jiio", "jiio_mdeq")
TABLE4_ROWS = ("sup_ae", "sup_mdeq_ae", "sup_jiio100", "unsup_vae_adam", "unsup_mdeq_vae_adam", "unsup_jiio40", "unsup_jiio100")


# ----------------------------------------------------------------------------- data


def prepare_faces(profile: dict[str, Any]) -> dict[str, Any]:
    """Both splits of the profile's face dataset as uint8 (N, C, H, W), plus where they came from."""
    spec = profile["generative"]["dataset"]
    name = spec["source"]
    if name not in IMAGE_DATASETS:
        raise ConfigError(f"generative.dataset.source: unknown image dataset {name!r}; known: {sorted(IMAGE_DATASETS)}")
    out: dict[str, Any] = {"image_size": spec["image_size"]}
    for split in ("train", "test"):
        data = load_image_dataset(name, split, root=profile["data_root"], image_size=spec["image_size"])
        out[split] = data.images.contiguous()
        meta = {"name": data.name, "source": data.source, "stand_in_for": data.stand_in_for}
    out["meta"] = meta
    return out


def to_model_range(images_uint8: Tensor, device: torch.device) -> Tensor:
    return images_uint8.to(device=device, dtype=torch.float32).div_(127.5).sub_(1.0)


# ----------------------------------------------------------------------------- models


def generator_config(profile: dict[str, Any], channels_out: int) -> MDEQGeneratorConfig:
    g = profile["generative"]
    return MDEQGeneratorConfig(out_channels=channels_out, image_size=g["dataset"]["image_size"], **g["generator"])


def build_model(profile: dict[str, Any], model: str, channels_out: int) -> nn.Module:
    g = profile["generative"]
    gen_cfg = generator_config(profile, channels_out)
    if model in JIIO_MODELS:
        return MDEQGenerator(gen_cfg)
    if model in ("mdeq_vae", "mdeq_ae"):
        kind = "vae" if model == "mdeq_vae" else "ae"
        enc = MDEQConfig(in_channels=channels_out, num_classes=gen_cfg.latent_dim * (2 if kind == "vae" else 1),
                         **g["encoder"])
        return MDEQAutoencoder(kind, enc, gen_cfg)
    if model in ("vae", "rae", "ae"):
        cfg = ConvAEConfig(kind=model, image_size=g["dataset"]["image_size"], in_channels=channels_out,
                           latent_dim=gen_cfg.latent_dim, **g["conv_ae"])
        return ConvAutoencoder(cfg)
    raise ConfigError(f"unknown model {model!r}; known: {list(MODELS)}")


def _solve(options: dict[str, Any]) -> dict[str, Any]:
    """A params.yaml solve block as fixed_point keyword arguments."""
    extra = {k: v for k, v in options.items() if k not in ("method", "max_iter", "tol")}
    out = {"solver": options["method"], "max_iter": options["max_iter"], "tol": options["tol"]}
    if extra:
        out["solver_options"] = extra
    return out


def forward_options(profile: dict[str, Any]) -> dict[str, Any]:
    return _solve(profile["generative"]["solver"]["forward"])


def backward_options(profile: dict[str, Any]) -> dict[str, Any]:
    b = _solve(profile["generative"]["solver"]["backward"])
    return {"method": b["solver"], "max_iter": b["max_iter"], "tol": b["tol"], **b.get("solver_options", {})}


def jiio_options(profile: dict[str, Any], iterations: int) -> dict[str, Any]:
    """Keyword arguments of :func:`deqbench.inputopt.jiio.jiio` for ``iterations`` JIIO steps (appendix C.3)."""
    j = profile["generative"]["jiio"]
    late = j["alpha_x_late"] if iterations > j["alpha_x_switch"] else None
    return {
        "max_iter": iterations,
        "alpha": tuple(j["alpha"]),
        "alpha_x_late": late,
        "alpha_x_switch": j["alpha_x_switch"] if late is not None else None,
        "method": "anderson",
        "solver_options": {"m": j["memory"], "kind": j["anderson_kind"]},
        "selection": j["selection"],
        "cuda_graph": profile["cuda_graph"],
    }


def jiio_reconstruct(
    gen: MDEQGenerator, observed: Tensor, mask: Tensor | None, profile: dict[str, Any], iterations: int,
    jac_reg: bool = False, backward: str = "none",
) -> JIIOResult:
    """JIIO on ``min_{x,z: z=f(z,x)} ||mask (h(z) - observed)||^2`` (eq. 20 / 22) from z = 0, x = 0."""
    gen.prepare()
    b = observed.shape[0]
    opts = jiio_options(profile, iterations)
    if jac_reg:
        opts.update(jac_reg="trajectory", jac_reg_probes=profile["generative"]["jiio"]["jac_probes"])
    if backward == "ift":
        opts["backward_options"] = backward_options(profile)
    return jiio(gen.layer, gen.cost_fn(observed, mask), gen.z0(b, observed),
                observed.new_zeros(b, gen.config.latent_dim), backward=backward, **opts)


def _cached_injection_layer(gen: MDEQGenerator) -> Callable[[Any, Tensor], Any]:
    """f(z, x) that computes the latent injection once per solve (x is fixed within a forward solve), as a plain
    DEQ decoder does; recomputing the 31.7 M-parameter latent maps every iteration would slow the Adam baseline."""
    cache: dict[str, Any] = {}

    def layer(z: Any, latent: Tensor) -> Any:
        key = (id(latent), latent._version, torch.is_grad_enabled())
        if cache.get("key") != key or cache.get("latent") is not latent:
            cache.update(key=key, latent=latent, injection=gen.inject(latent))
        return mdeq_layer(gen.blocks, gen.fuse, gen.post_fuse, z, cache["injection"])

    return layer


def adam_reconstruct_deq(gen: MDEQGenerator, observed: Tensor, mask: Tensor | None, profile: dict[str, Any], steps: int):
    """The Adam baseline on the MDEQ decoder's latent (eq. 21): each step a forward solve and an IFT backward."""
    gen.prepare()
    b = observed.shape[0]
    return adam(_cached_injection_layer(gen), gen.cost_fn(observed, mask), gen.z0(b, observed), observed.new_zeros(b, gen.config.latent_dim),
                steps=steps, lr=profile["generative"]["adam"]["lr"], forward={**forward_options(profile), "cuda_graph": profile["cuda_graph"]},
                backward_options=backward_options(profile))


def adam_reconstruct_explicit(decode: Callable[[Tensor], Tensor], latent_dim: int, observed: Tensor, mask: Tensor | None,
                              lr: float, steps: int) -> tuple[Tensor, Tensor]:
    """Adam on the latent of an explicit decoder (eq. 21, "VAE (Adam)"); returns the lowest-cost images and the cost trace."""
    b = observed.shape[0]
    latent = observed.new_zeros(b, latent_dim, requires_grad=True)
    opt = torch.optim.Adam([latent], lr=lr)
    best_cost = observed.new_full((b,), math.inf)
    best = observed.new_zeros(observed.shape)
    trace = observed.new_zeros(b, steps)
    for k in range(steps):
        with torch.enable_grad():
            images = decode(latent)
            cost = masked_sq_error(images, observed, mask)
            (latent.grad,) = torch.autograd.grad(cost.sum(), latent)  # only the latent: no grads left on the decoder
        c = cost.detach()
        trace[:, k] = c
        better = c < best_cost
        torch.where(better, c, best_cost, out=best_cost)
        torch.where(better.view(b, 1, 1, 1), images.detach(), best, out=best)
        opt.step()
    return best, trace


# ----------------------------------------------------------------------------- training


@dataclass
class TrainRun:
    profile: dict[str, Any]
    model: str
    problem: str
    seed: int

    @property
    def key(self) -> str:
        return f"{self.model}_{self.problem}_seed{self.seed}"


def train_hash(profile: dict[str, Any], model: str, problem: str) -> str:
    """Hash of exactly the settings that training ``model`` on ``problem`` reads, so editing evaluation or timing
    settings (or the adversarial experiments) does not invalidate trained checkpoints."""
    g = profile["generative"]
    keys = {k: g[k] for k in ("dataset", "flip", "generator", "solver", "train")}
    keys["jiio"] = {k: v for k, v in g["jiio"].items() if k != "test_iterations"}
    if model in ("mdeq_vae", "mdeq_ae"):
        keys["encoder"] = g["encoder"]
    if model in ("vae", "rae", "ae"):
        keys["conv_ae"] = g["conv_ae"]
    keys["problem"] = g["problems"].get(problem, problem)
    keys["model"], keys["data_root"] = model, profile["data_root"]
    return config_hash(keys)


def _lr_at(step: int, total: int, lr: float, lr_min: float) -> float:
    """Cosine decay from lr to lr_min over the run, per step (the reference CelebA schedule)."""
    return lr_min + 0.5 * (lr - lr_min) * (1 + math.cos(math.pi * min(step, total) / max(total, 1)))


def _train_step(model: nn.Module, run: TrainRun, clean: Tensor, observed: Tensor, mask: Tensor | None,
                kl_scale: float) -> tuple[Tensor, Tensor, Tensor]:
    """(loss, reconstruction MSE, health scalar) of one step."""
    profile, g = run.profile, run.profile["generative"]
    if run.model in JIIO_MODELS:
        lam = g["train"]["jac_reg"][run.model]
        supervised = run.problem != "reconstruct"
        result = jiio_reconstruct(model, observed, mask, profile, JIIO_MODELS[run.model], jac_reg=lam > 0,
                                  backward="ift" if supervised else "mu")
        mse = (model.output(result.z) - clean).pow(2).mean()
        loss = mse + lam * result.jac_loss if result.jac_loss is not None else mse
        return loss, mse, result.residual.max()
    if run.model in ("mdeq_vae", "mdeq_ae"):
        model.decoder.prepare()
        loss, parts = model.loss(observed, clean, kl_scale=kl_scale, forward=forward_options(profile),
                                 backward_options=backward_options(profile))
        return loss, parts["mse"], loss.detach()
    loss, parts = model.loss(observed, clean)
    mse = parts["recon"] / math.prod(clean.shape[1:])
    return loss, mse, loss.detach()


def train(run: TrainRun, data: dict[str, Any], out_path: str | Path, partial_path: str | Path, device: torch.device,
          progress: bool = True) -> dict[str, Any]:
    """Train one model for one problem; resumable from ``partial_path``; final checkpoint written atomically."""
    if run.model not in MODELS:
        raise ConfigError(f"unknown model {run.model!r}; known: {list(MODELS)}")
    problem = parse_problem(run.profile, run.problem)
    if run.model in ("mdeq_vae", "vae", "rae") and problem.kind != "none":
        raise ConfigError(f"{run.model} is an unsupervised generative model: train it with --problem reconstruct")
    if run.model in ("mdeq_ae", "ae") and problem.kind == "none":
        raise ConfigError(f"{run.model} is a supervised inverse-problem model (eq. 23): give an inverse problem")
    profile, tcfg = run.profile, run.profile["generative"]["train"]
    seed_everything(run.seed)
    train_images = data["train"]
    channels = train_images.shape[1]
    model = build_model(profile, run.model, channels).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=tcfg["lr"])
    n = train_images.shape[0]
    batch = min(tcfg["batch_size"], n)
    steps_per_epoch = max(n // batch, 1)
    total = tcfg["steps"] if problem.kind == "none" else tcfg["inverse_steps"]
    chash = train_hash(profile, run.model, run.problem)
    partial = Path(partial_path)
    step, history = load_partial(partial, run.key, chash, model, optimizer, device)
    model.train()
    bar = tqdm(total=total, initial=step, desc=f"train {run.key}", disable=not progress, unit="step")
    start = time.perf_counter()
    while step < total:
        epoch, offset = divmod(step, steps_per_epoch)
        gen = torch.Generator().manual_seed(run.seed * 1000003 + epoch)
        order = torch.randperm(n, generator=gen)
        flips = torch.rand(n, generator=gen) < 0.5  # one draw per epoch: each batch gets its own slice
        batch_slice = slice(offset * batch, (offset + 1) * batch)
        clean = to_model_range(train_images[order[batch_slice]], device)
        if profile["generative"]["flip"]:
            clean = torch.where(flips[batch_slice].to(device).view(-1, 1, 1, 1), clean.flip(-1), clean)
        noise_gen = torch.Generator(device=device).manual_seed(run.seed * 7919 + step)
        observed, mask = corrupt(problem, clean, noise_gen)
        mask = None if problem.kind != "inpaint" else mask
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, total, tcfg["lr"], tcfg["lr_min"])
        kl_scale = min(epoch / tcfg["vae_kl_warmup_epochs"], 1.0) if tcfg["vae_kl_warmup_epochs"] > 0 else 1.0
        optimizer.zero_grad(set_to_none=True)
        loss, mse, health = _train_step(model, run, clean, observed, mask, kl_scale)
        if not bool(torch.isfinite(loss) & torch.isfinite(health)):  # one host read per step, outside solver loops
            raise DivergenceError(f"{run.key}: non-finite loss or residual at step {step}; no table is written")
        loss.backward()
        optimizer.step()
        step += 1
        if step % tcfg["log_every"] == 0 or step == total:
            entry = {"step": step, "loss": float(loss.detach()), "mse": float(mse.detach())}
            history.append(entry)
            bar.set_postfix(loss=f"{entry['loss']:.4f}", mse=f"{entry['mse']:.4f}")
        bar.update(1)
        if step % tcfg["checkpoint_every"] == 0 and step < total:
            save_partial(partial, run.key, chash, model, optimizer, step, history, device)
    bar.close()
    summary = {"key": run.key, "model": run.model, "problem": run.problem, "seed": run.seed, "steps": step,
               "train_seconds": time.perf_counter() - start, "history": history,
               "data_source": data_source_label(data["meta"]), "describe": model.describe()}
    atomic_torch_save(out_path, {"model": model.state_dict(), "summary": summary, "config_hash": chash,
                                 "name": run.model, "problem": run.problem, "channels": channels})
    if partial.exists():
        partial.unlink()
    return summary


def parse_problem(profile: dict[str, Any], name: str) -> InverseProblem:
    """An inverse problem named in params.yaml's ``generative.problems`` (or ``reconstruct``)."""
    known = ["reconstruct"] + list(profile["generative"]["problems"])
    if name not in known:
        raise ConfigError(f"unknown problem {name!r}; generative.problems of profile {profile['name']!r} has {known}")
    if name == "reconstruct":
        return InverseProblem(kind="none")
    spec = profile["generative"]["problems"][name]
    if spec["kind"] == "inpaint":
        return InverseProblem(kind="inpaint", window=spec["window"])
    return InverseProblem(kind="denoise", sigma=spec["sigma"])


def load_checkpoint(profile: dict[str, Any], path: str | Path, device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
    state = torch.load(path, map_location=device, weights_only=False)
    if state.get("config_hash") != train_hash(profile, state["name"], state["problem"]):
        raise ConfigError(f"{path} was trained with different training settings than profile {profile['name']!r} "
                          f"has now; retrain it")
    model = build_model(profile, state["name"], state["channels"]).to(device)
    model.load_state_dict(state["model"])
    model.eval()
    return model, state


# ----------------------------------------------------------------------------- evaluation helpers


def _batches(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def _test_images(data: dict[str, Any], profile: dict[str, Any]) -> Tensor:
    images = data["test"]
    limit = profile["generative"]["eval"]["limit"]
    return images[:limit] if limit is not None else images


def _fid(profile: dict[str, Any], reference: Tensor, samples: Tensor, device: torch.device) -> dict[str, Any]:
    ev = profile["generative"]["eval"]
    res = compute_fid(reference, samples, ev["fid_weights"], batch_size=ev["batch_size"],
                      device="cuda" if device.type == "cuda" else "cpu")
    return {"value": res.value, "reason": res.reason, "n_reference": res.n_reference, "n_samples": res.n_samples,
            "weights_sha256": res.weights_sha256, "implementation": res.implementation}


def _psnr(pred: Tensor, target: Tensor, profile: dict[str, Any]) -> dict[str, Any]:
    ref = reference_batch_psnr(pred, target, batch_size=profile["generative"]["eval"]["reference_psnr_batch"])
    return {"median_psnr_01": median_psnr(pred, target), "reference_batch_psnr": ref,
            "mse_model_range": float((pred - target).pow(2).mean())}


def reconstruct_images(row: str, model: nn.Module, profile: dict[str, Any], observed: Tensor, mask: Tensor | None) -> Tensor:
    """Reconstruction / inverse-problem solution of one batch by the method a table row names."""
    g = profile["generative"]
    test_iters = g["jiio"]["test_iterations"]
    with torch.no_grad():
        if row in ("jiio_mdeq", "sup_jiio100", "unsup_jiio40", "unsup_jiio100"):
            res = jiio_reconstruct(model, observed, mask, profile, test_iters)
            return model.output(res.z)
        if row == "mdeq_vae_jiio":
            res = jiio_reconstruct(model.decoder, observed, mask, profile, test_iters)
            return model.decoder.output(res.z)
        if row in ("mdeq_vae", "sup_mdeq_ae"):
            model.decoder.prepare()
            return model.reconstruct(observed, forward_options(profile))
        if row in ("vae", "rae", "sup_ae"):
            return model(observed)
        if row == "unsup_mdeq_vae_adam":
            res = adam_reconstruct_deq(model.decoder, observed, mask, profile, g["adam"]["steps"])
            return model.decoder.output(res.z)
        if row == "unsup_vae_adam":
            images, _ = adam_reconstruct_explicit(model.decode, model.config.latent_dim, observed, mask,
                                                  g["adam"]["lr_explicit"], g["adam"]["steps"])
            return images
    raise ConfigError(f"unknown table row {row!r}")


def training_latents(model: MDEQGenerator | ConvAutoencoder, name: str, data: dict[str, Any], profile: dict[str, Any],
                     device: torch.device, progress: bool) -> Tensor:
    """Latents of the training images: JIIO x* (training iterations) or the RAE encoder's codes."""
    g = profile["generative"]
    images = data["train"][: g["density"]["max_latents"]]
    out = []
    for sl in tqdm(_batches(images.shape[0], g["eval"]["batch_size"]), desc="latents", disable=not progress):
        clean = to_model_range(images[sl], device)
        with torch.no_grad():
            if name in JIIO_MODELS:
                out.append(jiio_reconstruct(model, clean, None, profile, JIIO_MODELS[name]).x.cpu())
            else:
                out.append(model.encode(clean)[0].cpu())
    return torch.cat(out)


def fit_density(profile: dict[str, Any], checkpoint: str, data: dict[str, Any], device: torch.device,
                progress: bool) -> dict[str, Any]:
    model, state = load_checkpoint(profile, checkpoint, device)
    latents = training_latents(model, state["name"], data, profile, device, progress)
    spec = {k: v for k, v in profile["generative"]["density"].items() if k not in ("max_latents", "rae_gmm_components")}
    if state["name"] not in JIIO_MODELS:
        # Ghosh et al.: ex-post GMM directly on the deterministic codes, with their component count.
        spec.update(aux_vae=False, gmm_components=profile["generative"]["density"]["rae_gmm_components"])
    density = PosthocDensity.fit(latents, DensityConfig.from_mapping(spec), progress=progress)
    return {"density": density.state_dict(), "describe": density.describe(), "model": state["name"],
            "n_latents": int(latents.shape[0]), "train_hash": state["config_hash"]}


def table1_cell(row: str, profile: dict[str, Any], checkpoint: str, density_path: str | None, data: dict[str, Any],
                device: torch.device, progress: bool) -> dict[str, Any]:
    """FID of generation and reconstruction (Table 1) plus reconstruction PSNR for one model row."""
    if row not in TABLE1_ROWS:
        raise ConfigError(f"unknown Table 1 row {row!r}; known: {list(TABLE1_ROWS)}")
    g = profile["generative"]
    model, state = load_checkpoint(profile, checkpoint, device)
    test = _test_images(data, profile)
    recon = []
    for sl in tqdm(_batches(test.shape[0], g["eval"]["batch_size"]), desc=f"reconstruct {row}", disable=not progress):
        clean = to_model_range(test[sl], device)
        recon.append(reconstruct_images(row, model, profile, clean, None).cpu())
    recon_t = torch.cat(recon)
    clean_all = to_model_range(test, torch.device("cpu"))
    out: dict[str, Any] = {"table": "table1", "row": row, "model": state["name"], "train": state["summary"],
                           "reconstruction": _psnr(recon_t, clean_all, profile),
                           "fid_reconstruction": _fid(profile, clean_all, recon_t, device)}
    dens = torch.load(density_path, map_location="cpu", weights_only=False) if density_path is not None else None
    if dens is not None:
        out["density"] = {"describe": dens["describe"], "n_latents": dens["n_latents"], "fitted_on": dens["model"]}
    samples = sample_images(row, model, profile, dens, device, progress)
    if samples is not None:
        out["fid_generation"] = _fid(profile, clean_all, samples, device)
        out["n_generated"] = int(samples.shape[0])
        out["sample_grid"] = samples[:64]
    return out


def sample_images(row: str, model: nn.Module, profile: dict[str, Any], dens: dict[str, Any] | None,
                  device: torch.device, progress: bool) -> Tensor | None:
    """Generated images: N(0, I) for the VAEs, the post-hoc density for RAE / JIIO-MDEQ, none for the w/ JIIO row."""
    if row == "mdeq_vae_jiio":
        return None
    g = profile["generative"]
    n = g["eval"]["generation_samples"]
    latent_dim = g["generator"]["latent_dim"]
    if row in ("rae", "jiio_mdeq"):
        if dens is None:
            raise ConfigError(f"Table 1 row {row} samples from a post-hoc density: pass --density")
        latents = PosthocDensity.from_state_dict(dens["density"]).sample(n, seed=0)
    else:
        latents = torch.randn(n, latent_dim, generator=torch.Generator().manual_seed(0))
    out = []
    with torch.no_grad():
        for sl in tqdm(_batches(n, g["eval"]["batch_size"]), desc=f"sample {row}", disable=not progress):
            lat = latents[sl].to(device)
            if row == "jiio_mdeq":
                out.append(model(lat, forward_options(profile)).cpu())
            elif row == "mdeq_vae":
                model.decoder.prepare()
                out.append(model.decoder(lat, forward_options(profile)).cpu())
            else:
                out.append(model.decode(lat).cpu())
    return torch.cat(out)


def table4_cell(row: str, problem_name: str, profile: dict[str, Any], checkpoint: str, data: dict[str, Any],
                device: torch.device, progress: bool) -> dict[str, Any]:
    """Median PSNR of one (row, inverse problem) cell of Table 4, both PSNR conventions."""
    if row not in TABLE4_ROWS:
        raise ConfigError(f"unknown Table 4 row {row!r}; known: {list(TABLE4_ROWS)}")
    problem = parse_problem(profile, problem_name)
    g = profile["generative"]
    model, state = load_checkpoint(profile, checkpoint, device)
    test = _test_images(data, profile)
    preds, cleans = [], []
    noise = torch.Generator(device=device).manual_seed(g["eval"]["corruption_seed"])
    for sl in tqdm(_batches(test.shape[0], g["eval"]["batch_size"]), desc=f"{row} {problem_name}", disable=not progress):
        clean = to_model_range(test[sl], device)
        observed, mask = corrupt(problem, clean, noise)
        preds.append(reconstruct_images(row, model, profile, observed, mask if problem.kind == "inpaint" else None).cpu())
        cleans.append(clean.cpu())
    pred, clean_all = torch.cat(preds), torch.cat(cleans)
    return {"table": "table4", "row": row, "problem": problem_name, "model": state["name"], "train": state["summary"],
            **_psnr(pred, clean_all, profile), "n_images": int(pred.shape[0])}


# ----------------------------------------------------------------------------- timing (Table 3, Figure 3, memory)


def _timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def timing_model(profile: dict[str, Any], checkpoint: str | None, channels: int, device: torch.device
                 ) -> tuple[MDEQGenerator, dict[str, Any]]:
    """The trained JIIO-MDEQ of ``checkpoint``, or (None) a freshly initialised one (seed 0): Adam and JIIO run
    fixed iteration counts, so their time and memory do not depend on the weights (Figure 3's costs do)."""
    if checkpoint is not None:
        return load_checkpoint(profile, checkpoint, device)
    seed_everything(0)
    model = build_model(profile, "jiio40", channels).to(device).eval()
    return model, {"name": "jiio40", "summary": {"key": "untrained (seed 0)", "seed": 0}}


def _batch_of(test: Tensor, batch: int, device: torch.device) -> Tensor:
    """The first ``batch`` test images in the model range, repeated when the test set is smaller."""
    clean = to_model_range(test[:batch], device)
    if clean.shape[0] < batch:
        clean = clean.repeat((batch + clean.shape[0] - 1) // clean.shape[0], 1, 1, 1)[:batch]
    return clean


def _time_side_by_side(model: MDEQGenerator, clean: Tensor, profile: dict[str, Any], methods: dict[str, tuple[str, int]],
                       device: torch.device, progress: bool, desc: str) -> dict[str, dict[str, Any]]:
    """Median time, cost trace and returned cost of each method, interleaved repeat by repeat."""
    cfg = profile["generative"]["timing"]

    def run(kind: str, iters: int) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            if kind == "jiio":
                res = jiio_reconstruct(model, clean, None, profile, iters)
            else:
                res = adam_reconstruct_deq(model, clean, None, profile, iters)
        return res.trace_cost, res.cost

    out: dict[str, dict[str, Any]] = {m: {"samples": []} for m in methods}
    for _ in range(cfg["warmup"]):
        for kind, iters in methods.values():
            run(kind, iters)
    for _ in tqdm(range(cfg["repeats"]), desc=desc, disable=not progress):
        for name, (kind, iters) in methods.items():
            seconds, (out[name]["trace"], out[name]["returned"]) = _timed(lambda: run(kind, iters), device)
            out[name]["samples"].append(seconds)
    for name in methods:
        out[name]["median"] = float(np.median(out[name]["samples"]))
    return out


def _curves(panel: str, result: dict[str, dict[str, Any]], methods: dict[str, tuple[str, int]], batch: int) -> list[dict[str, Any]]:
    curves = []
    for name, (_, iters) in methods.items():
        cost = result[name]["trace"].mean(0).cpu()
        for k in range(iters):
            curves.append({"panel": panel, "method": name, "iteration": k + 1,
                           "seconds": result[name]["median"] * (k + 1) / iters, "cost_mean": float(cost[k]),
                           "batch_size": batch})
    return curves


def time_methods(profile: dict[str, Any], checkpoint: str | None, data: dict[str, Any], device: torch.device,
                 progress: bool, checkpoint100: str | None = None) -> dict[str, Any]:
    """Adam-40 vs JIIO-40 vs JIIO-100 reconstruction, side by side in one process, per batch size (Table 3).

    Also returns Figure 3's data: the mean reconstruction cost after each
    iteration against wall-clock time (iteration k at (k + 1) / K of the
    measured median run time: every iteration does the same work), Adam vs
    JIIO-40 on the model trained with 40 JIIO iterations and, when
    ``checkpoint100`` is given, Adam vs JIIO-100 on the model trained with 100
    (the paper's two panels).  Method names carry the iteration counts used.
    """
    g, cfg = profile["generative"], profile["generative"]["timing"]
    if cfg["trace_batch"] not in cfg["batch_sizes"]:
        raise ConfigError(f"generative.timing.trace_batch={cfg['trace_batch']} is not in generative.timing.batch_sizes "
                          f"{cfg['batch_sizes']}")
    model, state = timing_model(profile, checkpoint, data["test"].shape[1], device)
    test = _test_images(data, profile)
    adam_name, test_name = f"adam{g['adam']['steps']}", f"jiio{g['jiio']['test_iterations']}"
    methods = {adam_name: ("adam", g["adam"]["steps"]), "jiio40": ("jiio", 40), test_name: ("jiio", g["jiio"]["test_iterations"])}
    rows, curves = [], []
    for batch in cfg["batch_sizes"]:
        result = _time_side_by_side(model, _batch_of(test, batch, device), profile, methods, device, progress,
                                    f"timing batch {batch}")
        for name, (kind, iters) in methods.items():
            r = result[name]
            rows.append({"method": name, "iterations": iters, "batch_size": batch, "ms_per_call": 1e3 * r["median"],
                         "ms_per_example": 1e3 * r["median"] / batch, "repeats": cfg["repeats"],
                         "samples_ms": [1e3 * t for t in r["samples"]],
                         "returned_cost_mean": float(r["returned"].mean()),
                         "last_iterate_cost_mean": float(r["trace"][:, -1].mean()),
                         "adam_over_this": result[adam_name]["median"] / r["median"]})
        if batch == cfg["trace_batch"]:
            panel = {k: methods[k] for k in (adam_name, "jiio40")}
            curves += _curves("model trained with JIIO-40", result, panel, batch)
    if checkpoint100 is not None:
        model100, _ = load_checkpoint(profile, checkpoint100, device)
        panel = {adam_name: methods[adam_name], test_name: methods[test_name]}
        result = _time_side_by_side(model100, _batch_of(test, cfg["trace_batch"], device), profile, panel, device,
                                    progress, "figure 3, model trained with JIIO-100")
        curves += _curves("model trained with JIIO-100", result, panel, cfg["trace_batch"])
    return {"rows": rows, "figure3": curves, "model": state["name"], "train": state["summary"],
            "seed": state["summary"]["seed"]}


def measure_memory(profile: dict[str, Any], params_path: str, checkpoint: str | None, data_path: str,
                   device: torch.device) -> list[dict[str, Any]]:
    """Peak working memory of JIIO-40 vs Adam-40 at ``timing.memory_batch`` (appendix C.6).

    CUDA: peak allocated bytes above the pre-call level, both in this process.
    CPU: peak resident set size above the pre-call level, each method in a fresh
    child process (the RSS high-water mark cannot be reset).
    """
    rows = []
    for method in ("jiio40", "adam40"):
        if device.type == "cuda":
            rows.append(_memory_probe(profile, checkpoint, data_path, method, device))
        else:
            cmd = [sys.executable, "-m", "deqbench.tasks.generative", "--params", params_path, "--profile", profile["name"],
                   "--no-progress", "memory-probe", "--data", data_path, "--method", method]
            cmd += ["--checkpoint", checkpoint] if checkpoint is not None else []
            out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())})
            if out.returncode != 0:
                raise RuntimeError(f"memory probe for {method} failed (exit {out.returncode}):\n{out.stderr[-2000:]}")
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return rows


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux >= 4.0: write 5 to /proc/self/clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _rss_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _memory_probe(profile: dict[str, Any], checkpoint: str | None, data_path: str, method: str, device: torch.device,
                  adam_steps: int | None = None) -> dict[str, Any]:
    """Peak memory of one reconstruction; ``adam_steps`` shortens Adam (its peak is reached in the first step)."""
    g = profile["generative"]
    batch = g["timing"]["memory_batch"]
    test = _test_images(load_prepared(data_path), profile)
    model, _ = timing_model(profile, checkpoint, test.shape[1], device)
    clean = to_model_range(test[:batch], device)
    if clean.shape[0] < batch:
        clean = clean.repeat((batch + clean.shape[0] - 1) // clean.shape[0], 1, 1, 1)[:batch]
    model.prepare()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        hwm_reset = _reset_peak_rss()
        before = _rss_bytes("VmRSS") if hwm_reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with torch.no_grad():
        if method == "jiio40":
            jiio_reconstruct(model, clean, None, profile, 40)
        else:
            adam_reconstruct_deq(model, clean, None, profile, adam_steps or g["adam"]["steps"])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak, kind = torch.cuda.max_memory_allocated(device) - before, "cuda peak allocated above pre-call"
    else:
        if hwm_reset:
            peak, kind = _rss_bytes("VmHWM") - before, "cpu peak RSS above pre-call (child process, VmHWM reset)"
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
            kind = "cpu growth of the process's peak RSS (child process; no VmHWM reset on this OS, underestimates)"
    return {"method": method, "batch_size": batch, "peak_bytes": int(peak), "peak_gib": peak / 2**30, "measure": kind,
            "adam_steps": adam_steps or g["adam"]["steps"]}


# ----------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser, sub = task_parser("python -m deqbench.tasks.generative", __doc__)
    p = sub.add_parser("prepare")
    p.add_argument("--out", required=True)
    p = sub.add_parser("train")
    for name in ("--data", "--model", "--problem", "--out", "--partial"):
        p.add_argument(name, required=True)
    p.add_argument("--seed", type=int, required=True)
    p = sub.add_parser("density")
    for name in ("--data", "--checkpoint", "--out"):
        p.add_argument(name, required=True)
    p = sub.add_parser("table1-cell")
    for name in ("--data", "--row", "--checkpoint", "--out"):
        p.add_argument(name, required=True)
    p.add_argument("--density", default=None)
    p = sub.add_parser("table4-cell")
    for name in ("--data", "--row", "--problem", "--checkpoint", "--out"):
        p.add_argument(name, required=True)
    untrained = "trained JIIO-MDEQ checkpoint (default: a fresh seed-0 model; fixed iteration counts make timing weight-independent)"
    p = sub.add_parser("timing")
    for name in ("--data", "--out"):
        p.add_argument(name, required=True)
    p.add_argument("--checkpoint", default=None, help=untrained)
    p.add_argument("--checkpoint100", default=None, help="model trained with JIIO-100, for Figure 3's second panel")
    p = sub.add_parser("memory-probe")
    for name in ("--data", "--method"):
        p.add_argument(name, required=True)
    p.add_argument("--checkpoint", default=None, help=untrained)
    p.add_argument("--adam-steps", type=int, default=None, help="shorter Adam run (its peak is reached in step 1)")
    args = parser.parse_args(argv)
    try:
        profile = load_profile(args.params, args.profile)
        device = resolve_device(profile["device"])
        progress = not args.no_progress
        if args.command == "prepare":
            prepared = prepare_faces(profile)
            prepared["provenance"] = provenance(profile, "cpu")
            atomic_torch_save(args.out, prepared)
            print(f"{data_source_label(prepared['meta'])}: train {prepared['train'].shape[0]}, "
                  f"test {prepared['test'].shape[0]}, {prepared['image_size']}px -> {args.out}")
        elif args.command == "train":
            run = TrainRun(profile, args.model, args.problem, args.seed)
            summary = train(run, load_prepared(args.data), args.out, args.partial, device, progress)
            print(f"trained {summary['key']}: {summary['steps']} steps in {summary['train_seconds']:.1f} s")
        elif args.command == "density":
            out = fit_density(profile, args.checkpoint, load_prepared(args.data), device, progress)
            out["provenance"] = provenance(profile, device)
            atomic_torch_save(args.out, out)
            print(f"density for {args.checkpoint}: {out['describe']}")
        elif args.command in ("table1-cell", "table4-cell"):
            data = load_prepared(args.data)
            if args.command == "table1-cell":
                out = table1_cell(args.row, profile, args.checkpoint, args.density, data, device, progress)
                grid = out.pop("sample_grid", None)
                if grid is not None:
                    atomic_torch_save(Path(args.out).with_suffix(".samples.pt"), grid)
                psnr = out["reconstruction"]["median_psnr_01"]
            else:
                out = table4_cell(args.row, args.problem, profile, args.checkpoint, data, device, progress)
                psnr = out["median_psnr_01"]
            out["data_source"] = data_source_label(data["meta"])
            out["provenance"] = provenance(profile, device, seeds=[out["train"]["seed"]])
            atomic_write_json(args.out, out)
            print(f"{args.command} {args.row}: median PSNR {psnr:.2f} dB")
        elif args.command == "timing":
            data = load_prepared(args.data)
            out = time_methods(profile, args.checkpoint, data, device, progress, args.checkpoint100)
            out["memory"] = measure_memory(profile, args.params, args.checkpoint, args.data, device)
            out["data_source"] = data_source_label(data["meta"])
            out["provenance"] = provenance(profile, device, seeds=[out["seed"]])
            atomic_write_json(args.out, out)
            for row in out["rows"]:
                print(f"{row['method']} batch {row['batch_size']}: {row['ms_per_example']:.2f} ms/example")
        elif args.command == "memory-probe":
            print(json.dumps(_memory_probe(profile, args.checkpoint, args.data, args.method, device, args.adam_steps)))
    except (ConfigError, DatasetNotFoundError, DivergenceError, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
