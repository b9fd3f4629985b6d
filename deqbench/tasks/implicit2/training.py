"""One (Implicit)^2 training run: build a seeded model, fit coordinates -> colours, evaluate by a fresh solve.

Shared by every stage of the task (spec C.2, C.3, C.7):

* :func:`build_model`: the same seed gives the same parameters whether the model is implicit or explicit (the
  constructor does not branch on it), so a paired implicit / explicit comparison starts from the same init.
* :func:`train`: Adam with a constant lr, MSE on 2y - 1; implicit models go through
  :class:`~deqbench.models.implicit_repr.AmortizedFixedPoint` (a full solve at step 0, then ``amortize_iters``
  F applications per step; 0 = a full solve from zero every step) or, with minibatches (video), a full solve from
  zero per step.  Host reads happen only at log points (a health check) and, when timestamps are asked for, one
  device sync per step; never inside a solver iteration.
* :func:`evaluate`: PSNR (spec C.3) from a fresh full solve from z = 0, without grad.
"""

from __future__ import annotations

import math
import resource
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from deqbench.data.implicit2 import CoordinateImage, load_implicit2_images, to_model_range
from deqbench.experiments import distributed
from deqbench.experiments.runtime import DivergenceError, seed_everything, sync
from deqbench.models.implicit_repr import AmortizedFixedPoint, ImplicitReprConfig, ImplicitRepresentation
from deqbench.tasks.implicit2.params import ImageDataParams

__all__ = ["psnr", "psnr_from_mse", "build_model", "load_image", "FCounter", "TrainResult", "train", "evaluate",
           "reconstruction", "data_source_of", "num_parameters", "TRIVIAL_BASELINES", "trivial_baselines"]


def psnr(pred: Tensor, target: Tensor) -> Tensor:
    """Spec C.3: -10 log10(mean((clip((y_hat + 1) / 2, 0, 1) - y)^2)), ``pred`` in the model range [-1, 1] and
    ``target`` in [0, 1]; a 0-dim tensor (no host read)."""
    mse = ((pred.detach() + 1.0) / 2.0).clamp(0.0, 1.0).sub(target).pow(2).mean()
    return -10.0 * torch.log10(mse)


def psnr_from_mse(mse_model_range: float) -> float:
    """PSNR in [0, 1] units of an MSE measured in the model range [-1, 1] (no clipping): -10 log10(mse / 4); the
    per-step training PSNR of Fig. 4 (spec C.2)."""
    return -10.0 * math.log10(mse_model_range / 4.0) if mse_model_range > 0 else math.inf


def num_parameters(model: torch.nn.Module) -> int:
    """Parameter count (spec C.1 'Sizes': equal for the implicit and explicit model of a tag)."""
    return sum(p.numel() for p in model.parameters())


def build_model(config: ImplicitReprConfig, seed: int, device: torch.device) -> ImplicitRepresentation:
    """A model initialised from ``seed`` (spec C.1 init); identical parameters for the implicit and explicit
    variants of one filter and size, so paired comparisons share their init (spec C.7 "Expectations")."""
    seed_everything(seed)
    return ImplicitRepresentation(config).to(device)


def load_image(data: ImageDataParams, data_root: str, set_name: str, index: int) -> CoordinateImage:
    """Image ``index`` of a set, at the block's resolution (spec C.4 / C.7); a clear error when it is missing."""
    images = load_implicit2_images(set_name, data.source, data.resolution, data_root)  # type: ignore[arg-type]
    if index >= len(images):
        raise ValueError(f"the {set_name} set ({data.source}) has {len(images)} images; index {index} asked for")
    return images[index]


def data_source_of(image: CoordinateImage) -> str:
    """How a table row names its data: the image set and, for a stand-in, what it stands in for (spec C.7)."""
    if image.stand_in_for:
        return f"{image.set_name} set (embedded stand-in for {image.stand_in_for}, scikit-image)"
    return f"{image.set_name} set ({image.source.split(':')[1].split('[')[0].strip()})"


class FCounter:
    """Counts applications of F (calls of the first layer's W_1) by a forward hook: forward solver iterations,
    amortised steps and explicit passes; the backward's VJPs do not call the module.  A Python int, no sync."""

    def __init__(self, model: ImplicitRepresentation):
        self.count = 0
        self._handle = model.layers[0].linear.register_forward_hook(self._hook)

    def _hook(self, *_: Any) -> None:
        """Count one F application."""
        self.count += 1

    def close(self) -> None:
        """Remove the hook."""
        self._handle.remove()


@dataclass
class TrainResult:
    """What :func:`train` measured; ``losses`` per step (model-range MSE), ``seconds`` cumulative per step when
    timestamps were asked for, ``residuals`` per step for implicit models (the state used at that step)."""

    losses: list[float]
    residuals: list[float] | None
    seconds: list[float] | None
    train_seconds: float
    first_step_seconds: float
    f_applications: int
    steps: int
    history: list[dict[str, float]] = field(default_factory=list)
    peak_memory: tuple[int, str] = (0, "")  # (bytes, what was measured)

    @property
    def step_seconds(self) -> float:
        """Mean wall-clock seconds per training step (step 0's solve included; spec C.3)."""
        return self.train_seconds / max(self.steps, 1)

    def summary(self) -> dict[str, Any]:
        """The run's timings, F applications per step and loss history, for the result file (spec C.3)."""
        return {"steps": self.steps, "train_seconds": self.train_seconds, "step_seconds": self.step_seconds,
                "first_step_seconds": self.first_step_seconds,
                "f_applications_per_step": self.f_applications / max(self.steps, 1),
                "peak_memory_bytes": self.peak_memory[0], "peak_memory_measure": self.peak_memory[1],
                "final_loss": self.losses[-1], "history": self.history}


def train(model: ImplicitRepresentation, coords: Tensor, targets01: Tensor, *, steps: int, lr: float,
          amortize_iters: int, log_every: int, device: torch.device, desc: str, progress: bool = True,
          batch_size: int | None = None, grad_clip_value: float | None = None, seed: int = 0,
          timestamps: bool = False) -> TrainResult:
    """Full-batch (or ``batch_size`` random pixels per step) Adam on MSE(y_hat, 2y - 1) (spec C.3 / C.4).

    Implicit models: amortised fixed point with ``amortize_iters`` (spec C.2) in full batch; with minibatches a
    full solve from zero every step (the paper's video runs).  ``timestamps``: the wall clock after every step
    (one device sync per step).  Trains in one process: refuses a profile that asks for data-parallel training.
    """
    distributed.refuse_unsharded(desc)
    model.train()
    implicit = model.config.implicit
    n = int(coords.shape[0])
    full_batch = batch_size is None or batch_size >= n
    amortizer = AmortizedFixedPoint(model, amortize_iters) if implicit and full_batch else None
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + 17)
    x_all, y_all = coords.to(device), to_model_range(targets01).to(device)
    losses = torch.empty(steps, device=device)
    residuals = torch.full((steps,), math.nan, device=device) if implicit else None
    stamps: list[float] = []
    history: list[dict[str, float]] = []
    counter = FCounter(model)
    first = 0.0
    bar = tqdm(range(steps), desc=desc, disable=not progress, unit="step", file=sys.stderr)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    start = time.perf_counter()
    for step in bar:
        if full_batch:
            x, y = x_all, y_all
        else:  # random pixels, drawn on the CPU so every device sees the same batches
            index = torch.randint(0, n, (int(batch_size),), generator=generator).to(device)
            x, y = x_all[index], y_all[index]
        optimizer.zero_grad(set_to_none=True)
        if amortizer is not None:
            pred = amortizer(x)
            residual = amortizer.last_residual
        elif implicit:
            stats: dict[str, Any] = {}
            pred = model(x, stats=stats)
            residual = stats["forward"].residual.reshape(())
        else:
            pred, residual = model(x), None
        loss = F.mse_loss(pred, y)
        loss.backward()
        if grad_clip_value is not None:
            torch.nn.utils.clip_grad_value_(model.parameters(), grad_clip_value)
        optimizer.step()
        losses[step] = loss.detach()
        if residuals is not None and residual is not None:
            residuals[step] = residual.detach().to(residuals.dtype)
        if timestamps or step == 0:
            sync(device)
            now = time.perf_counter() - start
            first = now if step == 0 else first
            if timestamps:
                stamps.append(now)
        if (step + 1) % log_every == 0 or step + 1 == steps:  # the health check: the only host read of the loop
            value = float(losses[step])
            if not math.isfinite(value):
                counter.close()
                raise DivergenceError(f"{desc}: non-finite loss at step {step}; no output is written")
            entry = {"step": step + 1, "loss": value, "train_psnr_running": psnr_from_mse(value)}
            if residuals is not None:
                entry["residual"] = float(residuals[step])
            history.append(entry)
            bar.set_postfix({"psnr": f"{entry['train_psnr_running']:.2f}"})
    sync(device)
    total = time.perf_counter() - start
    counter.close()
    return TrainResult(losses.cpu().tolist(), residuals.cpu().tolist() if residuals is not None else None,
                       stamps or None, total, first, counter.count, steps, history, _peak_memory(device))


def _peak_memory(device: torch.device) -> tuple[int, str]:
    """Peak memory of the run (spec C.3 logs it): the CUDA peak allocation since the run started, or on the CPU the
    process's peak resident set (a high-water mark of the whole job, earlier runs of the job included)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda peak allocated during the run"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "cpu peak RSS of the job process so far"


@torch.no_grad()
def predict(model: ImplicitRepresentation, coords: Tensor, device: torch.device) -> tuple[Tensor, dict[str, Any]]:
    """y_hat at ``coords`` from a fresh full solve from z = 0 (implicit) or the one pass (explicit), in eval mode
    (spec C.2 step 5); and the solve's statistics (forward iterations, residual) for implicit models."""
    model.eval()
    stats: dict[str, Any] = {}
    pred = model(coords.to(device), stats=stats)
    model.train()
    info: dict[str, Any] = {}
    if "forward" in stats:
        info = {"forward_iterations": stats["forward"].nfe, "residual": float(stats["forward"].residual.max())}
    return pred, info


def evaluate(model: ImplicitRepresentation, image: CoordinateImage, device: torch.device) -> dict[str, Any]:
    """Test and train PSNR (spec C.3: clipped, [0, 1]) from fresh solves, and the test solve's iterations."""
    test_pred, info = predict(model, image.test_coords, device)
    train_pred, _ = predict(model, image.train_coords, device)
    return {"test_psnr": float(psnr(test_pred, image.test_targets.to(device))),
            "train_psnr": float(psnr(train_pred, image.train_targets.to(device))),
            "eval_forward_iterations": info.get("forward_iterations"), "eval_residual": info.get("residual"),
            "_test_pred": test_pred}


# What a reader compares a representation network with: answers that use the train pixels and no training.
TRIVIAL_BASELINES = {
    "mean_colour": "baseline: mean colour of the train pixels",
    "nearest": "baseline: nearest train pixel (copy of the up-left neighbour)",
    "bilinear": "baseline: bilinear interpolation (mean of the 4 diagonal train neighbours)",
}


def trivial_baselines(image: CoordinateImage) -> dict[str, float]:
    """Test PSNR (spec C.3's clipped [0, 1] PSNR) of answers that need no model: the train pixels' mean colour,
    the nearest train pixel and bilinear interpolation.  Test pixel (2i+1, 2j+1) is the centre of train pixels
    (2i, 2j), (2i, 2j+2), (2i+2, 2j), (2i+2, 2j+2); at the last row / column the missing neighbours repeat the edge.
    The MSE is floored at 1e-10 (100 dB) so an exact answer stays finite."""
    h = image.resolution // 2
    train = image.train_targets.reshape(h, h, 3).permute(2, 0, 1)[None]  # (1, 3, h, h)
    test = image.test_targets.reshape(h, h, 3).permute(2, 0, 1)[None]
    padded = F.pad(train, (0, 1, 0, 1), mode="replicate")
    answers = {
        "mean_colour": train.mean(dim=(2, 3), keepdim=True).expand_as(test),
        "nearest": train,
        "bilinear": (padded[..., :-1, :-1] + padded[..., 1:, :-1] + padded[..., :-1, 1:] + padded[..., 1:, 1:]) / 4,
    }
    return {name: float(-10.0 * torch.log10((a - test).pow(2).mean().clamp_min(1e-10))) for name, a in answers.items()}


def reconstruction(pred: Tensor, shape: tuple[int, int]) -> dict[str, Any]:
    """Test-pixel reconstruction as uint8 RGB (for the pictures, spec C.5), flattened row-major with its shape."""
    pixels = ((pred.detach().cpu().float() + 1.0) / 2.0).clamp(0, 1).mul(255).round().to(torch.uint8)
    return {"shape": [shape[0], shape[1], 3], "uint8": pixels.reshape(-1).tolist()}


def frame_psnrs(pred: Tensor, target: Tensor, frames: int) -> list[float]:
    """Per-frame PSNR (spec C.4: the video table's mean +- std is over frames) of (T*H*W, 3) predictions."""
    p = ((pred.detach() + 1.0) / 2.0).clamp(0.0, 1.0).reshape(frames, -1)
    mse = (p - target.reshape(frames, -1)).pow(2).mean(dim=1)
    return (-10.0 * torch.log10(mse)).cpu().tolist()


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and population std (np.std, ddof = 0: spec C.3)."""
    return float(np.mean(values)), float(np.std(values))
