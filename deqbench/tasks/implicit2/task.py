"""(Implicit)^2 stages: image generalisation, video, the gradient-order sweep and the amortisation check.

Stages (``python -m deqbench implicit2 STAGE``), each with its typed settings from :mod:`.settings`:

* ``fit`` (spec C.3): one image and one filter; every size x {explicit, implicit}, implicit and explicit from the
  same seed (same init); test PSNR from a fresh solve from zero;
* ``video`` (spec C.4 / C.7): one filter; every size x {explicit, implicit}; PSNR per frame;
* ``gradient-order`` (Fig. 4, spec C.2): the same model trained with truncated-Neumann orders T, training PSNR
  per step with wall-clock timestamps;
* ``amortization`` (spec C.2, IMP2-10): one image trained amortised and with a full solve every step.

``cost`` (the README figure) is in :mod:`.cost`.  Every result carries its seed, the image hashes and provenance.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from deqbench.data.implicit2 import coordinate_grid, load_implicit2_video, synthetic_pan_video, to_model_range
from deqbench.experiments.io import atomic_write_json
from deqbench.experiments.registry import Job
from deqbench.tasks.implicit2.settings import (
    AmortizationJob, FitJob, GradientOrderJob, VideoJob, model_config, order_label,
)
from deqbench.tasks.implicit2.training import (
    build_model, data_source_of, evaluate, frame_psnrs, load_image, mean_std, num_parameters, predict,
    psnr_from_mse, reconstruction, train, trivial_baselines,
)

# ----------------------------------------------------------------------------- image generalisation (spec C.3)


def _image_record(image: Any) -> dict[str, Any]:
    """What every result says about its image: name, set, hashes, source (spec C.7 pre-processing)."""
    return {"image_name": image.name, "set": image.set_name, "image_sha256": image.sha256,
            "source_sha256": image.source_sha256, "image_source": image.source, "resolution": image.resolution,
            "stand_in_for": image.stand_in_for, "data_source": data_source_of(image)}


def fit(job: FitJob, device: torch.device, progress: bool = True) -> dict[str, Any]:
    """Every size x {explicit, implicit} of one filter on one image (spec C.3): Adam with constant lr on the train
    pixels (full batch, MSE on 2y - 1); implicit models amortise (a full solve at step 0, then
    ``train.amortize_iters`` F applications per step, spec C.2); test PSNR from a fresh solve from z = 0."""
    image = load_image(job.data, job.data_root, job.set_name, job.image)
    runs = []
    for paper_size, size in job.sizes:
        for implicit in (False, True):
            config = model_config(job.model, job.solver, job.filter, size, implicit,
                                  amortize_iters=job.train.amortize_iters)
            model = build_model(config, job.seed, device)
            result = train(model, image.train_coords, image.train_targets, steps=job.train.steps, lr=job.train.lr,
                           amortize_iters=job.train.amortize_iters, log_every=job.train.log_every, device=device,
                           desc=f"{image.name} {config.label} {size}", progress=progress, seed=job.seed)
            scores = evaluate(model, image, device)
            test_pred = scores.pop("_test_pred")
            run = {"filter": job.filter, "size": size, "paper_size": paper_size, "implicit": implicit,
                   "label": config.label, "num_parameters": num_parameters(model), "seed": job.seed,
                   "lr": job.train.lr, "amortize_iters": job.train.amortize_iters if implicit else None,
                   "backward": f"neumann T={config.neumann_order}" if config.backward == "neumann" else "ift",
                   **scores, **result.summary(), "residual_trace": result.residuals}
            if size in job.reconstruct:
                run["reconstruction"] = reconstruction(test_pred, image.split_shape)
            runs.append(run)
    out = {**_image_record(image), "image": job.image, "filter": job.filter, "seed": job.seed, "runs": runs,
           "trivial_baselines": trivial_baselines(image)}
    if job.reconstruct:
        out["target_pixels"] = reconstruction(to_model_range(image.test_targets), image.split_shape)
    return out


def run_fit(job: Job) -> None:
    """Stage ``fit`` (spec C.3): run, attach provenance, write atomically."""
    a = job.args
    result = fit(job.settings, job.device, job.progress)
    result["provenance"] = job.provenance(seeds=[job.settings.seed])
    atomic_write_json(a.out, result)
    for r in result["runs"]:
        print(f"{result['image_name']} {r['label']} {r['size']}: test PSNR {r['test_psnr']:.2f} dB, train "
              f"{r['train_psnr']:.2f} dB, {1e3 * r['step_seconds']:.1f} ms / step")


# ----------------------------------------------------------------------------- video (spec C.4 / C.7)


def load_video(job: VideoJob) -> Any:
    """The paper's video (first ``frames``) or the synthetic pan stand-in (spec C.7)."""
    v = job.video
    if v.source == "embedded":
        return synthetic_pan_video(frames=v.frames, size=v.frame_size, step=v.pan_step, downscale=v.pan_downscale)
    return load_implicit2_video("paper", job.data_root, max_frames=v.frames)


def video(job: VideoJob, device: torch.device, progress: bool = True) -> dict[str, Any]:
    """Every size x {explicit, implicit} of one filter on the video (spec C.4): Adam, gradient values clipped,
    full batch or random pixels per step, no amortisation (a full solve from zero each step), no normalisation;
    PSNR of every frame from a fresh solve (in chunks of ``eval_chunk`` frames)."""
    v = job.video
    clip = load_video(job)
    coords, targets = clip.coords(), clip.targets()
    frames, per_frame = int(clip.frames.shape[0]), int(clip.frames.shape[1] * clip.frames.shape[2])
    runs = []
    for paper_size, size in v.sizes.items():
        for implicit in (False, True):
            config = model_config(job.model, job.solver, job.filter, size, implicit, amortize_iters=0, in_features=3,
                                  input_scale=v.input_scale, norm=v.norm)
            model = build_model(config, v.seed, device)
            result = train(model, coords, targets, steps=v.steps, lr=v.lr, amortize_iters=0,
                           log_every=max(v.steps // 20, 1), device=device, desc=f"video {config.label} {size}",
                           progress=progress, batch_size=v.batch_size, grad_clip_value=v.grad_clip_value,
                           seed=v.seed)
            psnrs, iterations = [], []
            for start in range(0, frames, v.eval_chunk):
                stop = min(start + v.eval_chunk, frames)
                pred, info = predict(model, coords[start * per_frame: stop * per_frame], device)
                psnrs += frame_psnrs(pred, targets[start * per_frame: stop * per_frame].to(device), stop - start)
                iterations.append(info.get("forward_iterations"))
            mean, std = mean_std(psnrs)
            runs.append({"filter": job.filter, "size": size, "paper_size": paper_size, "implicit": implicit,
                         "label": config.label, "num_parameters": num_parameters(model), "seed": v.seed,
                         "psnr_frames": psnrs, "psnr_mean": mean, "psnr_std": std,
                         "eval_forward_iterations": iterations if implicit else None, **result.summary(),
                         "residual_trace": result.residuals})
    source = (f"{clip.name} (embedded stand-in for {clip.stand_in_for}, SYNTHETIC MOTION)" if clip.synthetic_motion
              else clip.name)
    return {"filter": job.filter, "video": clip.name, "video_sha256": clip.sha256, "video_source": clip.source,
            "synthetic_motion": clip.synthetic_motion, "frames": frames, "frame_shape": list(clip.frames.shape[1:3]),
            "data_source": source, "seed": v.seed, "runs": runs}


def run_video(job: Job) -> None:
    """Stage ``video`` (spec C.4): run, attach provenance, write atomically."""
    result = video(job.settings, job.device, job.progress)
    result["provenance"] = job.provenance(seeds=[result["seed"]])
    atomic_write_json(job.args.out, result)
    for r in result["runs"]:
        print(f"video {r['label']} {r['size']}: PSNR {r['psnr_mean']:.2f} +- {r['psnr_std']:.2f} dB over frames")


# ----------------------------------------------------------------------------- Fig. 4: gradient order (spec C.2)


def gradient_order(job: GradientOrderJob, device: torch.device, progress: bool = True) -> dict[str, Any]:
    """Training PSNR per step and the wall clock, for each truncated-Neumann order T (Fig. 4, spec C.2): the same
    seed and amortised forward for every T; T = "inf" solves the adjoint (IFT).  The per-step PSNR is that of the
    step's training prediction (-10 log10(MSE / 4), unclipped); the final one also from a fresh full solve."""
    s = job.sweep
    image = load_image(job.data, job.data_root, s.set, s.image)
    if s.pixels == "all":
        coords, targets = coordinate_grid(image.resolution).reshape(-1, 2), image.image.reshape(-1, 3)
    else:
        coords, targets = image.train_coords, image.train_targets
    curves = []
    for order in s.orders:
        config = model_config(job.model, job.solver, s.filter, s.size, True, amortize_iters=job.train.amortize_iters,
                              input_scale=s.input_scale, order=order)
        model = build_model(config, s.seed, device)
        result = train(model, coords, targets, steps=s.steps, lr=job.train.lr, amortize_iters=job.train.amortize_iters,
                       log_every=job.train.log_every, device=device, desc=f"T={order_label(order)}",
                       progress=progress, seed=s.seed, timestamps=True)
        pred, info = predict(model, coords, device)
        mse = float(((pred + 1) / 2).clamp(0, 1).sub(targets.to(device)).pow(2).mean())
        curves.append({"order": order_label(order), "label": config.label, "size": s.size,
                       "num_parameters": num_parameters(model), "train_psnr": [psnr_from_mse(x) for x in result.losses],
                       "seconds": result.seconds, "final_train_psnr": -10 * math.log10(mse),
                       "eval_forward_iterations": info.get("forward_iterations"), **result.summary(),
                       "residual_trace": result.residuals})
    return {**_image_record(image), "image": s.image, "pixels": s.pixels, "n_pixels": int(coords.shape[0]),
            "filter": s.filter, "seed": s.seed, "input_scale": s.input_scale or job.model.input_scale,
            "amortize_iters": job.train.amortize_iters, "curves": curves}


def run_gradient_order(job: Job) -> None:
    """Stage ``gradient-order`` (Fig. 4, spec C.2): run, attach provenance, write atomically."""
    result = gradient_order(job.settings, job.device, job.progress)
    result["provenance"] = job.provenance(seeds=[result["seed"]])
    atomic_write_json(job.args.out, result)
    for c in result["curves"]:
        print(f"T={c['order']}: final training PSNR {c['final_train_psnr']:.2f} dB, {1e3 * c['step_seconds']:.1f} "
              f"ms / step")


# ----------------------------------------------------------------------------- amortisation check (spec C.2)


def amortization(job: AmortizationJob, device: torch.device, progress: bool = True) -> dict[str, Any]:
    """One implicit model trained twice from the same init: amortised (``train.amortize_iters`` F applications per
    step after a full solve at step 0) and with a full solve from zero every step (amortize_iters = 0); the test
    PSNR of both and the relative residual ||F(Z) - Z|| / ||F(Z)|| of the state each step used (spec C.2)."""
    image = load_image(job.data, job.data_root, job.set_name, job.image)
    out: dict[str, Any] = {}
    for mode, iters in (("amortized", job.train.amortize_iters), ("full_solve", 0)):
        config = model_config(job.model, job.solver, job.filter, job.size, True, amortize_iters=iters)
        model = build_model(config, job.seed, device)
        result = train(model, image.train_coords, image.train_targets, steps=job.train.steps, lr=job.train.lr,
                       amortize_iters=iters, log_every=job.train.log_every, device=device,
                       desc=f"{image.name} {mode}", progress=progress, seed=job.seed)
        scores = evaluate(model, image, device)
        scores.pop("_test_pred")
        trace = result.residuals or []
        late = [r for r in trace[job.warmup_steps:] if math.isfinite(r)]
        out[mode] = {"amortize_iters": iters, "label": config.label, "num_parameters": num_parameters(model),
                     **scores, **result.summary(), "residual_trace": trace,
                     "residual_after_warmup_max": max(late) if late else None,
                     "residual_after_warmup_mean": sum(late) / len(late) if late else None}
    return {**_image_record(image), "image": job.image, "filter": job.filter, "size": job.size,
            "paper_size": job.paper_size, "seed": job.seed, "warmup_steps": job.warmup_steps,
            "tolerance": job.solver.tol, **out}


def run_amortization(job: Job) -> None:
    """Stage ``amortization`` (spec C.2): run, attach provenance, write atomically."""
    result = amortization(job.settings, job.device, job.progress)
    result["provenance"] = job.provenance(seeds=[result["seed"]])
    atomic_write_json(job.args.out, result)
    a, f = result["amortized"], result["full_solve"]
    print(f"{result['image_name']}: test PSNR amortised {a['test_psnr']:.2f} vs full solve {f['test_psnr']:.2f} dB; "
          f"{1e3 * a['step_seconds']:.1f} vs {1e3 * f['step_seconds']:.1f} ms / step; cached residual after step "
          f"{result['warmup_steps']}: max {a['residual_after_warmup_max']}")
