"""Generative modelling and inverse problems: JIIO paper sections 4.1-4.2 (Tables 1 and 4), training and cells.

Models (:data:`MODELS`), each trained for one problem:

* ``jiio40`` / ``jiio100``: the decoder-only JIIO-MDEQ generator trained with 40 / 100 JIIO iterations in the
  inner loop; on ``reconstruct`` the inner and outer costs are the reconstruction error (eq. 20, backward by
  eq. 19); on an inverse problem the inner cost is ``||A y - A h(z)||^2`` and the outer loss the error to the clean
  image (eq. 24, backward by an IFT adjoint solve over z with x* held constant, as in the reference code);
* ``mdeq_vae`` (ELBO) and ``mdeq_ae`` (supervised, eq. 23): MDEQ encoder + MDEQ decoder;
* ``vae``, ``rae``, ``ae``: the convolutional baselines of Ghosh et al. 2020.

Stages: ``prepare`` the faces, ``train`` one model, fit the post-hoc ``density`` of its latents, and compute one
table ``cell`` (Table 1: FID of samples and reconstructions plus PSNR; Table 4: PSNR on one inverse problem).
Timing (Table 3, Figure 3, memory) is in :mod:`.timing`.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from deqbench.data.faces import load_image_dataset
from deqbench.data.inverse import corrupt
from deqbench.experiments.config import ConfigError
from deqbench.experiments.io import atomic_torch_save, atomic_write_json, load_artifact
from deqbench.experiments.registry import Job
from deqbench.experiments.runtime import data_source_label, seed_everything
from deqbench.experiments.settings import settings_hash, to_plain
from deqbench.experiments.trainer import EpochBatches, LoopSettings, StepOutput, fit
from deqbench.metrics import compute_fid, median_psnr, reference_batch_psnr, sliced_wasserstein
from deqbench.metrics.density import PosthocDensity
from deqbench.tasks.jiio_generative.methods import (
    TRAINING_STEPS, build_model, decode, jiio_reconstruct, pca_basis, pca_reconstruct, reconstruct, to_model_range,
)
from deqbench.tasks.jiio_generative.settings import (MODELS, Architecture, CellJob, DensityJob, PrepareJob, TrainJob,
                                                     TrivialAnswer)

# ----------------------------------------------------------------------------- data and checkpoints


def prepare_faces(job: PrepareJob) -> dict[str, Any]:
    """Both splits of the face dataset as uint8 (N, C, H, W), plus where they came from."""
    out: dict[str, Any] = {"image_size": job.dataset.image_size}
    for split in ("train", "test"):
        data = load_image_dataset(job.dataset.source, split, root=job.data_root, image_size=job.dataset.image_size)
        out[split] = data.images.contiguous()
        meta = {"name": data.name, "source": data.source, "stand_in_for": data.stand_in_for}
    out["meta"] = meta
    return out


def load_model(arch: Architecture, path: str | Path, device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
    """A trained model; refuses a checkpoint whose architecture differs from the settings'."""
    state = load_artifact(path, device)
    if state.get("architecture") != to_plain(arch):
        raise ConfigError(f"{path} holds a {state.get('name')} with another architecture than the settings "
                          f"describe for {arch.kind}; retrain it")
    model = build_model(arch, state["channels"]).to(device)
    model.load_state_dict(state["model"])
    model.eval()
    return model, state


EXAMPLES = 6  # test images shown in the PNG grids


def examples_path(result: str | Path) -> Path:
    """Where a cell job writes its first examples (corrupted, recovered, target) for the PNG grids."""
    return Path(result).with_suffix(".examples.pt")


def samples_path(result: str | Path) -> Path:
    """Where a sampling cell job writes its first generated images."""
    return Path(result).with_suffix(".samples.pt")


def test_images(data: dict[str, Any], limit: int | None) -> Tensor:
    images = data["test"]
    return images[:limit] if limit is not None else images


def batches(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


# ----------------------------------------------------------------------------- training


def train(job: TrainJob, data: dict[str, Any], seed: int, out: str | Path, partial: str | Path,
          device: torch.device, progress: bool = True) -> dict[str, Any]:
    """Train one model for one problem; resumable from ``partial``; the final checkpoint is written atomically."""
    seed_everything(seed)
    images = data["train"]
    channels = images.shape[1]
    model = build_model(job.arch, channels).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=job.lr)
    sampler = EpochBatches(images.shape[0], job.batch_size, seed)
    problem = job.problem.inverse_problem()
    step_of_family = TRAINING_STEPS[MODELS[job.arch.kind].family]

    def step_fn(step: int) -> StepOutput:
        batch = sampler(step)
        clean = to_model_range(images[batch.indices], device)
        if job.flip:
            clean = torch.where((batch.uniform < 0.5).to(device).view(-1, 1, 1, 1), clean.flip(-1), clean)
        noise = torch.Generator(device=device).manual_seed(seed * 7919 + step)
        observed, mask = corrupt(problem, clean, noise)
        kl_scale = min(batch.epoch / job.kl_warmup_epochs, 1.0) if job.kl_warmup_epochs else 1.0
        return step_of_family(model, job, clean, observed, mask if problem.kind == "inpaint" else None, kl_scale)

    key = f"{job.arch.kind}_{job.problem.name}_seed{seed}"
    loop = LoopSettings(job.steps, job.checkpoint_every, job.log_every, job.lr, "cosine", job.lr_min)
    summary = {"model": job.arch.kind, "problem": job.problem.name, "seed": seed,
               "data_source": data_source_label(data["meta"]), "describe": model.describe(),
               "epochs": sampler.epochs(job.steps)}
    meta = {"name": job.arch.kind, "problem": job.problem.name, "channels": channels, "architecture": to_plain(job.arch)}
    return fit(key=key, model=model, optimizer=optimizer, step_fn=step_fn, loop=loop, out_path=out,
               partial_path=partial, settings_hash=settings_hash(job), device=device, summary=summary,
               checkpoint_meta=meta, progress=progress)


# ----------------------------------------------------------------------------- post-hoc density (Table 1 sampling)


def fit_density(job: DensityJob, checkpoint: str, data: dict[str, Any], device: torch.device,
                progress: bool) -> dict[str, Any]:
    """Fit the post-hoc density of the training latents: JIIO x* (training iterations), or the RAE's codes."""
    model, state = load_model(job.arch, checkpoint, device)
    images = data["train"][: job.max_latents]
    latents = []
    for sl in tqdm(batches(images.shape[0], job.batch_size), desc="latents", disable=not progress):
        clean = to_model_range(images[sl], device)
        with torch.no_grad():
            if job.latents is not None:
                latents.append(jiio_reconstruct(model, clean, None, job.latents).x.cpu())
            else:
                latents.append(model.encode(clean)[0].cpu())
    codes = torch.cat(latents)
    density = PosthocDensity.fit(codes, job.config, progress=progress)
    return {"density": density.state_dict(), "describe": density.describe(), "model": state["name"],
            "n_latents": int(codes.shape[0]), "checkpoint_settings_hash": state["settings_hash"]}


# ----------------------------------------------------------------------------- table cells (Tables 1 and 4)


def _psnr(pred: Tensor, target: Tensor, job: CellJob) -> dict[str, Any]:
    ref = reference_batch_psnr(pred, target, batch_size=job.reference_psnr_batch)
    return {"median_psnr_01": median_psnr(pred, target), "reference_batch_psnr": ref,
            "mse_model_range": float((pred - target).pow(2).mean())}


def _fid(job: CellJob, reference: Tensor, samples: Tensor, device: torch.device) -> dict[str, Any]:
    res = compute_fid(reference, samples, job.fid.weights, batch_size=job.batch_size,
                      device="cuda" if device.type == "cuda" else "cpu")
    return {"value": res.value, "reason": res.reason, "n_reference": res.n_reference, "n_samples": res.n_samples,
            "weights_sha256": res.weights_sha256, "implementation": res.implementation}


def sample_images(job: CellJob, model: nn.Module, density: dict[str, Any] | None, latent_dim: int,
                  device: torch.device, progress: bool) -> Tensor:
    """Generated images: latents from N(0, I) (VAEs) or the post-hoc density (RAE, JIIO-MDEQ), then decoded."""
    n = job.fid.generation_samples
    if job.sampling == "density":
        if density is None:
            raise ConfigError(f"row {job.row} samples from a post-hoc density: pass --density")
        latents = PosthocDensity.from_state_dict(density["density"]).sample(n, seed=0)
    else:
        latents = torch.randn(n, latent_dim, generator=torch.Generator().manual_seed(0))
    out = [decode(model, latents[sl].to(device), job.decoder_solver).cpu()
           for sl in tqdm(batches(n, job.batch_size), desc=f"sample {job.row}", disable=not progress)]
    return torch.cat(out)


def evaluate_cell(job: CellJob, checkpoint: str | None, density_path: str | None, data: dict[str, Any],
                  device: torch.device, progress: bool) -> dict[str, Any]:
    """PSNR (both conventions) of the row's method on the cell's problem over the test images (for inpainting also
    of the composite that keeps the observed pixels); for rows that sample (Table 1), also FID of reconstructions and
    of generated images.  Trivial-answer rows (no network) return the observation, the mean training image or the
    PCA decoder's least-squares fit to the observed pixels."""
    trivial = job.method if isinstance(job.method, TrivialAnswer) else None
    if trivial is not None:
        model = None
        state = {"name": trivial.kind, "summary": {"key": "no model", "seed": None}, "settings_hash": None}
        train_images = to_model_range(data["train"], device)
        mean_image = train_images.mean(0, keepdim=True)
        if trivial.kind == "pca_projection":
            pca_mean, pca_directions = pca_basis(train_images, trivial.components)
    else:
        if checkpoint is None:
            raise ConfigError(f"row {job.row} needs --checkpoint")
        model, state = load_model(job.arch, checkpoint, device)
    test = test_images(data, job.limit)
    problem = job.problem.inverse_problem()
    noise = torch.Generator(device=device).manual_seed(job.corruption_seed or 0)  # unused by plain reconstruction
    preds, cleans, composites, shown = [], [], [], []
    for sl in tqdm(batches(test.shape[0], job.batch_size), desc=f"{job.row} {job.problem.name}",
                   disable=not progress):
        clean = to_model_range(test[sl], device)
        observed, mask = corrupt(problem, clean, noise)
        if trivial is None:
            pred = reconstruct(job.method, model, observed, mask if problem.kind == "inpaint" else None)
        else:
            if trivial.kind == "pca_projection":
                pred = pca_reconstruct(pca_mean, pca_directions, observed, mask if problem.kind == "inpaint" else None)
            else:
                pred = observed if trivial.kind == "corrupted_input" else mean_image.expand_as(clean)
        preds.append(pred.cpu())
        if sum(len(t) for t in shown) < EXAMPLES:  # only the first few observations go in the grid
            shown.append(observed[:EXAMPLES].cpu())
        if problem.kind == "inpaint":  # the usual score: observed pixels kept, the window from the answer
            composites.append((mask * observed + (1 - mask) * pred).cpu())
        cleans.append(clean.cpu())
    pred, clean_all = torch.cat(preds), torch.cat(cleans)
    out: dict[str, Any] = {"row": job.row, "problem": job.problem.name, "model": state["name"],
                           "train": state["summary"], "checkpoint_settings_hash": state["settings_hash"],
                           "n_images": int(pred.shape[0]), **_psnr(pred, clean_all, job)}
    # The first examples for the PNG grids (corrupted / recovered / target), written beside the result.
    out["examples"] = {"observed": torch.cat(shown)[:EXAMPLES], "recovered": pred[:EXAMPLES],
                       "target": clean_all[:EXAMPLES]}
    if problem.kind == "inpaint":
        out["composite"] = _psnr(torch.cat(composites), clean_all, job)
    if job.fid is not None:
        out["fid_reconstruction"] = _fid(job, clean_all, pred, device)
        out["swd_reconstruction"] = asdict(sliced_wasserstein(pred, clean_all))
    if job.sampling != "none":
        density = load_artifact(density_path) if density_path is not None else None
        if density is not None:
            out["density"] = {"describe": density["describe"], "n_latents": density["n_latents"],
                              "fitted_on": density["model"]}
        samples = sample_images(job, model, density, job.arch.latent_dim, device, progress)
        out["fid_generation"] = _fid(job, clean_all, samples, device)
        out["swd_generation"] = asdict(sliced_wasserstein(samples, clean_all))
        out["n_generated"] = int(samples.shape[0])
        out["sample_grid"] = samples[:64]
    return out


# ----------------------------------------------------------------------------- stages


def run_prepare(job: Job) -> None:
    prepared = prepare_faces(job.settings)
    prepared["provenance"] = job.provenance()
    atomic_torch_save(job.args.out, prepared)
    print(f"{data_source_label(prepared['meta'])}: train {prepared['train'].shape[0]}, "
          f"test {prepared['test'].shape[0]}, {prepared['image_size']}px -> {job.args.out}")


def run_train(job: Job) -> None:
    a = job.args
    summary = train(job.settings, load_artifact(a.data), a.seed, a.out, a.partial, job.device, job.progress)
    print(f"trained {summary['key']}: {summary['steps']} steps in {summary['train_seconds']:.1f} s")


def run_density(job: Job) -> None:
    out = fit_density(job.settings, job.args.checkpoint, load_artifact(job.args.data), job.device, job.progress)
    out["provenance"] = job.provenance()
    atomic_torch_save(job.args.out, out)
    print(f"density for {job.args.checkpoint}: {out['describe']}")


def run_cell(job: Job) -> None:
    a = job.args
    data = load_artifact(a.data)
    out = evaluate_cell(job.settings, a.checkpoint, a.density, data, job.device, job.progress)
    grid = out.pop("sample_grid", None)
    if grid is not None:
        atomic_torch_save(samples_path(a.out), {"images": grid})
    atomic_torch_save(examples_path(a.out), out.pop("examples"))
    out["data_source"] = data_source_label(data["meta"])
    out["provenance"] = job.provenance(seeds=[out["train"]["seed"]])
    atomic_write_json(a.out, out)
    print(f"{job.settings.row} {job.settings.problem.name}: median PSNR {out['median_psnr_01']:.2f} dB")
