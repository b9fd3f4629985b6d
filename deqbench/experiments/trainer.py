"""One resumable training loop for every task.

A task supplies a model, an optimiser and ``step_fn(step) -> StepOutput`` (fetch a batch, compute the loss); the
trainer does the rest the same way everywhere: learning-rate schedule, backward and optimiser step, a divergence
stop (NaN/inf loss or equilibrium residual: an error and no output), a progress bar, a history of logged scalars,
resumable partial checkpoints (model, optimiser, step, history and RNG states, written atomically outside the
declared outputs) and the final checkpoint, written atomically, after which the partial one is removed.

There is one host read per step (the health check) plus one per logged step; none inside a solver loop.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

import torch
from torch import Tensor, nn
from tqdm import tqdm

from deqbench.experiments import faults
from deqbench.experiments.io import atomic_torch_save, load_artifact
from deqbench.experiments.runtime import DivergenceError


@dataclass(frozen=True)
class LoopSettings:
    """How long to train and how often to log and write a resumable checkpoint."""

    steps: int
    checkpoint_every: int
    log_every: int
    lr: float
    lr_schedule: Literal["constant", "cosine", "multistep", "linear"] = "constant"
    lr_min: float = 0.0
    lr_milestones: tuple[float, ...] = ()  # multistep: fractions of the run where the LR is multiplied by lr_gamma
    lr_gamma: float = 0.1

    def lr_at(self, step: int) -> float:
        """The learning rate of optimisation step ``step`` (cosine: decay to ``lr_min`` over the run, per step;
        multistep: ``lr * lr_gamma ** k`` after the k-th milestone, e.g. epochs 100/150/175 of 200 = 0.5/0.75/0.875;
        linear: from ``lr`` at step 0 towards ``lr_min`` at ``steps``, Reptile's outer step-size annealing)."""
        if self.lr_schedule == "constant":
            return self.lr
        if self.lr_schedule == "linear":
            frac = min(max(step / max(self.steps, 1), 0.0), 1.0)
            return (1.0 - frac) * self.lr + frac * self.lr_min
        if self.lr_schedule == "multistep":
            passed = sum(step >= round(m * self.steps) for m in self.lr_milestones)
            return self.lr * self.lr_gamma**passed
        return self.lr_min + 0.5 * (self.lr - self.lr_min) * (1 + math.cos(math.pi * min(step, self.steps) / max(self.steps, 1)))


@dataclass
class StepOutput:
    """What one training step returns: the loss to minimise, scalars to log and tensors that must stay finite."""

    loss: Tensor
    logs: Mapping[str, Tensor]
    health: Tensor | None = None


@dataclass(frozen=True)
class Batch:
    epoch: int
    indices: Tensor  # (B,) example indices
    uniform: Tensor  # (B,) U(0, 1) draws of the same epoch generator, for per-example augmentation decisions


class EpochBatches:
    """Deterministic minibatches: epoch ``e`` visits a permutation of the ``n`` examples drawn from
    ``seed * 1_000_003 + e``; a resumed run therefore sees exactly the batches an uninterrupted one would."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        self.n, self.batch_size, self.seed = n, min(batch_size, n), seed
        self.steps_per_epoch = max(n // self.batch_size, 1)
        self._epoch: tuple[int, Tensor, Tensor] | None = None

    def __call__(self, step: int) -> Batch:
        epoch, offset = divmod(step, self.steps_per_epoch)
        if self._epoch is None or self._epoch[0] != epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(self.n, generator=gen)
            self._epoch = (epoch, order, torch.rand(self.n, generator=gen))
        _, order, uniform = self._epoch
        window = slice(offset * self.batch_size, (offset + 1) * self.batch_size)
        return Batch(epoch, order[window], uniform[window])

    def epochs(self, steps: int) -> float:
        return steps / self.steps_per_epoch


def standard_augment(images: Tensor, generator: torch.Generator, pad: int = 4) -> Tensor:
    """The standard CIFAR augmentation: a random ``H x W`` crop of the zero-padded image and a horizontal flip with
    probability 1/2, per example, drawn from ``generator`` (on the CPU, so a resumed run draws the same crops)."""
    n, _, h, w = images.shape
    offsets = torch.randint(0, 2 * pad + 1, (2, n), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    rows = (offsets[0].view(n, 1) + torch.arange(h).view(1, h)).to(images.device)  # (n, h)
    cols = (offsets[1].view(n, 1) + torch.arange(w).view(1, w)).to(images.device)  # (n, w)
    batch = torch.arange(n, device=images.device).view(n, 1, 1, 1)
    channel = torch.arange(images.shape[1], device=images.device).view(1, -1, 1, 1)
    crops = padded[batch, channel, rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]
    return torch.where(flips.to(images.device).view(n, 1, 1, 1), crops.flip(-1), crops)


def _rng_state(device: torch.device) -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def load_partial(path: Path, key: str, settings_hash: str, model: nn.Module, optimizer: torch.optim.Optimizer,
                 device: torch.device) -> tuple[int, list[dict[str, Any]], float]:
    """Restore model, optimiser and RNG state from a partial checkpoint of the same run and settings.

    Returns ``(step, history, seconds trained so far)``; ``(0, [], 0.0)`` without a usable partial checkpoint.
    """
    if not path.exists():
        return 0, [], 0.0
    state = load_artifact(path, device)
    if state.get("settings_hash") != settings_hash or state.get("key") != key:
        print(f"ignoring stale partial checkpoint {path} (other run or settings)", file=sys.stderr)
        return 0, [], 0.0
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"]["torch"].cpu())
    if device.type == "cuda" and state["rng"].get("cuda") is not None:
        torch.cuda.set_rng_state(state["rng"]["cuda"].cpu(), device)
    print(f"resuming {key} from step {state['step']} ({path})", file=sys.stderr)
    return int(state["step"]), list(state["history"]), float(state.get("seconds", 0.0))


def fit(
    *,
    key: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    step_fn: Callable[[int], StepOutput],
    loop: LoopSettings,
    out_path: str | Path,
    partial_path: str | Path,
    settings_hash: str,
    device: torch.device,
    summary: Mapping[str, Any],
    checkpoint_meta: Mapping[str, Any],
    progress: bool = True,
) -> dict[str, Any]:
    """Train ``model`` for ``loop.steps`` optimiser steps, resuming from ``partial_path`` when it belongs to the same
    run (``key``) and settings (``settings_hash``); write the final checkpoint to ``out_path`` and return its summary.
    """
    partial = Path(partial_path)
    step, history, earlier = load_partial(partial, key, settings_hash, model, optimizer, device)
    resumed_from = step
    model.train()
    bar = tqdm(total=loop.steps, initial=step, desc=f"train {key}", disable=not progress, unit="step", file=sys.stderr)
    start = time.perf_counter()
    while step < loop.steps:
        for group in optimizer.param_groups:
            group["lr"] = loop.lr_at(step)
        optimizer.zero_grad(set_to_none=True)
        out = step_fn(step)
        healthy = torch.isfinite(out.loss)
        if out.health is not None:
            healthy = healthy & torch.isfinite(out.health).all()
        if not bool(healthy):  # the one host read per step, outside every solver loop
            worst = float(out.health.detach().abs().max()) if out.health is not None else float("nan")
            raise DivergenceError(f"{key}: non-finite loss or equilibrium residual at step {step} "
                                  f"(loss={float(out.loss.detach())}, max |health|={worst}); no output is written")
        out.loss.backward()
        optimizer.step()
        step += 1
        faults.after_step(step)
        if step % loop.log_every == 0 or step == loop.steps:
            entry = {"step": step, "loss": float(out.loss.detach()), **{k: float(v) for k, v in out.logs.items()}}
            history.append(entry)
            bar.set_postfix({k: f"{v:.3g}" for k, v in entry.items() if k != "step"})
        bar.update(1)
        if step % loop.checkpoint_every == 0 and step < loop.steps:
            atomic_torch_save(partial, {"key": key, "settings_hash": settings_hash, "model": model.state_dict(),
                                        "optimizer": optimizer.state_dict(), "step": step, "history": history,
                                        "rng": _rng_state(device), "seconds": earlier + time.perf_counter() - start})
    bar.close()
    result = {**summary, "key": key, "steps": step, "resumed_from_step": resumed_from,
              "train_seconds": earlier + time.perf_counter() - start, "history": history}
    atomic_torch_save(out_path, {"model": model.state_dict(), "summary": result, "settings_hash": settings_hash,
                                 **checkpoint_meta})
    if partial.exists():
        partial.unlink()
    return result
