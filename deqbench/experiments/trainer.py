"""One resumable training loop for every task.

A task supplies a model, an optimiser and ``step_fn(step) -> StepOutput`` (fetch a batch, compute the loss); the
trainer does the rest the same way everywhere: learning-rate schedule, backward and optimiser step, a divergence
stop (NaN/inf loss or equilibrium residual: an error and no output), a progress bar, a history of logged scalars,
resumable partial checkpoints (model, optimiser, step, history and RNG states, written atomically outside the
declared outputs) and the final checkpoint, written atomically, after which the partial one is removed.

There is one host read per step (the health check) plus one per logged step; none inside a solver loop.  The health
check also covers every fixed-point solve of the step (:mod:`deqbench.core.watch`): one that met a non-finite value of
f stops the run, naming the step, the solve and the iteration, although the solve itself returned a finite iterate.

Data-parallel training (a profile's ``distributed.processes`` > 1; :mod:`deqbench.experiments.distributed`) runs
the same loop in every rank: each rank's ``step_fn`` computes the loss on its share of the batch
(:class:`EpochBatches` with ``rank`` / ``world``), the gradients are averaged over the ranks after ``backward``,
the divergence check and the logged scalars are agreed on by all ranks, and rank 0 alone writes the partial and
final checkpoints while the others wait.  Gradients are averaged explicitly rather than by wrapping the model in
``DistributedDataParallel``: DDP synchronises only gradients produced through its wrapper's ``forward``, while the
tasks' steps call model parts directly (``model.inject``, ``model.layer``, ``model.logits``) inside fixed-point
solvers and JIIO with custom backward passes; one all-reduce of every gradient after ``backward`` is what DDP's
buckets compute, whatever produced the gradient.
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

from deqbench.core.watch import watch_solves
from deqbench.experiments import distributed, faults
from deqbench.experiments.io import atomic_torch_save, load_artifact
from deqbench.experiments.runtime import DivergenceError
from deqbench.experiments.settings import ConfigError


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
    grad_clip: float | None = None  # clip the gradient's global L2 norm to this before every step (None: no clipping)

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
    ``seed * 1_000_003 + e``; a resumed run therefore sees exactly the batches an uninterrupted one would.

    ``batch_size`` is the batch of one optimiser step.  Split over ``world`` data-parallel ranks, rank ``rank``
    gets the ``rank``-th of ``world`` equal contiguous parts of it, so the ranks' parts together are exactly the
    one-process batch (and its ``uniform`` draws).
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1) -> None:
        self.n, self.batch_size, self.seed = n, min(batch_size, n), seed
        self.steps_per_epoch = max(n // self.batch_size, 1)
        if self.batch_size % world:
            raise ConfigError(f"a batch of {self.batch_size} examples cannot be split evenly over "
                              f"distributed.processes = {world}; use a batch size that is a multiple of it")
        self.rank, self.share = rank, self.batch_size // world
        self._epoch: tuple[int, Tensor, Tensor] | None = None

    def __call__(self, step: int) -> Batch:
        epoch, offset = divmod(step, self.steps_per_epoch)
        if self._epoch is None or self._epoch[0] != epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(self.n, generator=gen)
            self._epoch = (epoch, order, torch.rand(self.n, generator=gen))
        _, order, uniform = self._epoch
        start = offset * self.batch_size + self.rank * self.share
        window = slice(start, start + self.share)
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


def _set_rng_state(rng: Mapping[str, Any], device: torch.device) -> None:
    torch.set_rng_state(rng["torch"].cpu())
    if device.type == "cuda" and rng.get("cuda") is not None:
        torch.cuda.set_rng_state(rng["cuda"].cpu(), device)


def _separate_rank_streams() -> None:
    """Give ranks 1.. their own random streams (rank 0 keeps the job's), so per-example draws inside a step
    (Jacobian-regulariser probes, random iterates) differ between the ranks' shares of a batch."""
    if distributed.rank() > 0:
        torch.manual_seed((torch.initial_seed() * 1_000_003 + distributed.rank()) % 2**63)


def load_partial(path: Path, key: str, settings_hash: str, model: nn.Module, optimizer: torch.optim.Optimizer,
                 device: torch.device) -> tuple[int, list[dict[str, Any]], float]:
    """Restore model, optimiser and RNG state from a partial checkpoint of the same run and settings.

    Returns ``(step, history, seconds trained so far)``; ``(0, [], 0.0)`` without a usable partial checkpoint.
    Under data-parallel training every rank loads the file and takes its own RNG state from it (``rng_ranks``)
    when it was written by as many ranks.
    """
    if not path.exists():
        return 0, [], 0.0
    state = load_artifact(path, device)
    if state.get("settings_hash") != settings_hash or state.get("key") != key:
        print(f"ignoring stale partial checkpoint {path} (other run or settings)", file=sys.stderr)
        return 0, [], 0.0
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    _set_rng_state(state["rng"], device)
    world = distributed.world_size()
    if world > 1:
        ranks = state.get("rng_ranks")
        if ranks is not None and len(ranks) == world:
            _set_rng_state(ranks[distributed.rank()], device)
        else:
            _separate_rank_streams()
    if distributed.is_main():
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

    Inside a process group of several ranks (module docstring) ``step_fn`` must return the loss of this rank's
    share of the batch, as a mean over its examples; rank 0 writes the files and every rank returns the summary.
    """
    distributed.refuse_unsharded(key)
    world, main = distributed.world_size(), distributed.is_main()
    partial = Path(partial_path)
    step, history, earlier = load_partial(partial, key, settings_hash, model, optimizer, device)
    if world > 1:
        if len(set(distributed.gather(step))) > 1:
            raise RuntimeError(f"{key}: the ranks found different partial checkpoints in {partial}")
        distributed.broadcast_state(model)
        if step == 0:  # not resumed: no per-rank RNG state was loaded
            _separate_rank_streams()
    resumed_from = step
    model.train()
    bar = tqdm(total=loop.steps, initial=step, desc=f"train {key}", disable=not (progress and main), unit="step",
               file=sys.stderr)
    start = time.perf_counter()
    while step < loop.steps:
        for group in optimizer.param_groups:
            group["lr"] = loop.lr_at(step)
        optimizer.zero_grad(set_to_none=True)
        with watch_solves(nan_from=faults.nan_from(step + 1)) as watch:
            out = step_fn(step)
        solves = watch.verdict().to(out.loss.device)  # (first solve that met a non-finite f value, its iteration)
        healthy = torch.isfinite(out.loss) & (solves[0] < 0)
        if out.health is not None:
            healthy = healthy & torch.isfinite(out.health).all()
        if not bool(distributed.all_true(healthy)):  # the one host read per step, outside every solver loop
            worst = float(out.health.detach().abs().max()) if out.health is not None else float("nan")
            where = "" if world == 1 else f" on rank {distributed.rank()}" if not bool(healthy) else " on another rank"
            first_solve, iteration = solves.tolist()
            if first_solve >= 0:
                raise DivergenceError(
                    f"{key}: f returned non-finite values at iteration {iteration + 1} of fixed-point solve "
                    f"{first_solve + 1} in training step {step + 1}{where} (a solve keeps its best finite iterate, "
                    f"which would hide this); no output is written")
            raise DivergenceError(f"{key}: non-finite loss or equilibrium residual{where} at step {step} "
                                  f"(loss={float(out.loss.detach())}, max |health|={worst}); no output is written")
        out.loss.backward()
        distributed.average_gradients(model.parameters())
        if loop.grad_clip is not None:  # on the device: the norm is never read on the host
            torch.nn.utils.clip_grad_norm_(model.parameters(), loop.grad_clip)
        optimizer.step()
        step += 1
        faults.after_step(step)
        if step % loop.log_every == 0 or step == loop.steps:
            entry = {"step": step, **_logged(out, world)}
            history.append(entry)
            bar.set_postfix({k: f"{v:.3g}" for k, v in entry.items() if k != "step"})
        bar.update(1)
        if step % loop.checkpoint_every == 0 and step < loop.steps:
            rng = _rng_state(device)
            ranks = {"rng_ranks": distributed.gather(rng), "processes": world} if world > 1 else {}
            if main:
                atomic_torch_save(partial, {"key": key, "settings_hash": settings_hash, "model": model.state_dict(),
                                            "optimizer": optimizer.state_dict(), "step": step, "history": history,
                                            "rng": rng, **ranks, "seconds": earlier + time.perf_counter() - start})
    bar.close()
    result = {**summary, "key": key, "steps": step, "resumed_from_step": resumed_from,
              "train_seconds": earlier + time.perf_counter() - start, "history": history,
              **({"processes": world} if world > 1 else {})}
    if main:
        atomic_torch_save(out_path, {"model": model.state_dict(), "summary": result, "settings_hash": settings_hash,
                                     **checkpoint_meta})
        if partial.exists():
            partial.unlink()
    distributed.barrier()  # no rank leaves before rank 0 has written the final checkpoint
    return result


def _logged(out: StepOutput, world: int) -> dict[str, float]:
    """The loss and logged scalars of a step; over several ranks their means (the whole batch's, for equal
    shares and per-example means)."""
    if world == 1:
        return {"loss": float(out.loss.detach()), **{k: float(v) for k, v in out.logs.items()}}
    names = ["loss", *out.logs]
    values = distributed.mean(torch.stack([out.loss.detach().float(), *(torch.as_tensor(v, device=out.loss.device)
                                                                        .detach().float() for v in out.logs.values())]))
    return dict(zip(names, values.tolist()))
