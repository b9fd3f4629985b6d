"""Adversarial robustness of MDEQ classifiers: JIIO paper section 4.3, appendix B.2 (Tables 2, 5 and 8).

Three training methods (clean, PGD adversarial training, JIO adversarial training, eq. 26) and three test
conditions (clean, PGD-20, JIO-80), all with L2 perturbations of radius eps.  Stages (``python -m deqbench
jiio_adversarial STAGE``): ``prepare`` a dataset, ``train`` one model, ``evaluate`` one checkpoint at one eps,
``timing`` PGD vs JIO side by side (Table 2).  Each takes its typed settings from :mod:`.settings`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from deqbench.core.deq import fixed_point
from deqbench.core.jacobian import hutchinson_jacobian_loss
from deqbench.core.norms import reset_norms
from deqbench.core.state import flat_map, spec_of
from deqbench.data import scaled_eps
from deqbench.experiments import distributed
from deqbench.experiments.config import ConfigError
from deqbench.experiments.io import atomic_torch_save, atomic_write_json, load_artifact
from deqbench.experiments.memory import peak_memory, probe_in_child
from deqbench.experiments.prepared import run_prepare_job as prepare_dataset
from deqbench.experiments.registry import Job
from deqbench.experiments.runtime import DivergenceError, data_source_label, seed_everything, sync
from deqbench.experiments.settings import settings_hash, to_plain
from deqbench.experiments.trainer import EpochBatches, LoopSettings, StepOutput, fit
from deqbench.inputopt.baselines import InputOptResult, pgd
from deqbench.inputopt.jiio import JIIOResult, jiio
from deqbench.models.mdeq import MDEQClassifier
from deqbench.tasks.jiio_adversarial.settings import (
    EvaluateJob, JIOAttack, MemoryJob, Network, PGDParams, TimingJob, TrainJob,
)

# ----------------------------------------------------------------------------- data and model


def input_scale(net: Network, meta: dict[str, Any]) -> float:
    """The factor that carries the paper's input-space lengths over to this data: eps, the PGD step and JIO's
    alpha_x all scale with it (1 on real data; on stand-ins with ``eps_scaling: rms_norm`` the ratio of RMS image
    norms, see :func:`deqbench.data.scaled_eps`), so an attack keeps the paper's step-to-radius proportions."""
    if net.eps_scaling == "none":
        return 1.0
    return scaled_eps(1.0, meta.get("stand_in_for"), meta["rms_norm"])


def build_model(net: Network, in_channels: int, num_classes: int) -> MDEQClassifier:
    return MDEQClassifier(net.model.config(in_channels, num_classes))


def load_model(net: Network, path: str | Path, device: torch.device) -> tuple[MDEQClassifier, dict[str, Any]]:
    """A trained classifier; refuses a checkpoint whose architecture differs from the settings'."""
    state = load_artifact(path, device)
    if state.get("model_settings") != to_plain(net.model):
        raise ConfigError(f"{path} holds an MDEQ with other model settings than jiio_adversarial.model."
                          f"{net.dataset} now has; retrain it")
    model = build_model(net, state["in_channels"], state["num_classes"]).to(device)
    model.load_state_dict(state["model"])
    model.eval()
    reset_norms(model)
    return model, state


def equilibrium(model: MDEQClassifier, images: Tensor, net: Network, stats: dict[str, Any] | None = None):
    """z* of the MDEQ at ``images`` (differentiable when grad is enabled) and the layer map."""
    injection = model.inject(images)

    def layer(z):
        return model.layer(z, injection)

    z = fixed_point(layer, model.z0(images), stats=stats, **net.solver.fixed_point_kwargs(net.cuda_graph))
    return z, layer


# ----------------------------------------------------------------------------- attacks


def pgd_attack(model: MDEQClassifier, images: Tensor, labels: Tensor, net: Network, attack: PGDParams,
               eps: float, scale: float = 1.0) -> InputOptResult:
    """PGD on the L2 (or Linf) ball of radius ``scale * eps`` with steps ``scale * step_size``: every step a full
    MDEQ solve plus implicit backward (their CUDA graphs captured once per call and replayed in later steps)."""
    return pgd(model.layer_fn(images), model.cost_fn(labels), model.z0(images), torch.zeros_like(images),
               steps=attack.steps, step_size=scale * attack.step_size, projection=attack.norm, eps=scale * eps,
               normalized_step=True, forward=net.solver.forward_kwargs(net.cuda_graph),
               backward_options=net.solver.backward_options(net.cuda_graph))


def pgd_perturbation(model: MDEQClassifier, images: Tensor, labels: Tensor, net: Network, attack: PGDParams,
                     eps: float, scale: float = 1.0) -> Tensor:
    """The perturbation found by :func:`pgd_attack`."""
    return pgd_attack(model, images, labels, net, attack, eps, scale).x.detach()


def jio_attack(model: MDEQClassifier, images: Tensor, labels: Tensor, net: Network, attack: JIOAttack, eps: float,
               jac_reg: int = 0, scale: float = 1.0, backward: str = "mu") -> JIIOResult:
    """JIIO on the augmented (z, mu, delta) system with the inner cost -CE (eq. 26) in the L2 ball of radius
    ``scale * eps``, with input steps alpha_x scaled alike; ``jac_reg``: Hutchinson probes of the Jacobian
    regulariser at a random trajectory iterate (0: none); ``backward``: the parameter gradient of a loss at z* from
    mu* (eq. 19, the paper) or from an adjoint solve warm-started at mu* ("ift")."""
    options: dict[str, Any] = {}
    if attack.alpha_x_late is not None:
        options.update(alpha_x_late=scale * attack.alpha_x_late, alpha_x_switch=attack.alpha_x_switch)
    a_z, a_mu, a_x = attack.alpha
    if jac_reg:
        options.update(jac_reg="trajectory", jac_reg_probes=jac_reg)
    if backward == "ift":
        options["backward_options"] = net.solver.backward_options(net.cuda_graph)
    return jiio(model.layer_fn(images), model.cost_fn(labels), model.z0(images), torch.zeros_like(images),
                max_iter=attack.iterations, alpha=(a_z, a_mu, scale * a_x), method="anderson",
                solver_options={"m": attack.memory, "kind": attack.anderson_kind}, projection="l2", eps=scale * eps,
                normalized_step=True, selection=attack.selection, backward=backward, cuda_graph=net.cuda_graph,
                **options)


# ----------------------------------------------------------------------------- training


def training_step(model: MDEQClassifier, images: Tensor, labels: Tensor, job: TrainJob, eps: float,
                  scale: float = 1.0) -> StepOutput:
    """Loss of one step of clean, PGD or JIO adversarial training (eq. 26), with Jacobian regularisation."""
    reset_norms(model)
    lam = job.jac_reg
    if job.method == "jio":
        result = jio_attack(model, images, labels, job.net, job.jio, eps, jac_reg=job.jac_probes if lam > 0 else 0,
                            scale=scale, backward=job.jio_backward)
        ce = F.cross_entropy(model.logits(result.z), labels)
        loss = ce + lam * result.jac_loss if result.jac_loss is not None else ce
        return StepOutput(loss, {"ce": ce.detach(), "residual": result.residual.mean()}, result.residual)
    if job.method == "pgd":
        with torch.enable_grad():
            images = images + pgd_perturbation(model, images, labels, job.net, job.pgd, eps, scale)
    stats: dict[str, Any] = {}
    z, layer = equilibrium(model, images, job.net, stats)
    ce = F.cross_entropy(model.logits(z), labels)
    loss = ce
    if lam > 0:
        spec = spec_of(z)
        loss = ce + lam * hutchinson_jacobian_loss(flat_map(layer, spec), spec.flatten(z).detach(), job.jac_probes)
    residual = stats["forward"].residual
    return StepOutput(loss, {"ce": ce.detach(), "residual": residual.mean()}, residual)


def train(job: TrainJob, data: dict[str, Any], eps: float, seed: int, out: str | Path, partial: str | Path,
          device: torch.device, progress: bool = True, init: str | Path | None = None) -> dict[str, Any]:
    """Train one model; resumable from ``partial``; the final checkpoint is written atomically.  With
    ``warm_start_steps``, an adversarial model starts from the clean model ``init`` and trains that many steps.
    As one rank of a data-parallel job (``distributed.processes``), it trains on its share of every batch."""
    seed_everything(seed)
    images_all, labels_all = data["train"]["images"], data["train"]["labels"]
    in_channels, num_classes = images_all.shape[1], data["meta"]["num_classes"]
    model = build_model(job.net, in_channels, num_classes).to(device)
    batches = EpochBatches(len(labels_all), job.batch_size, seed, rank=distributed.rank(),
                           world=distributed.world_size())
    steps = batches.steps_per_epoch * job.epochs
    if job.max_steps is not None:
        steps = min(steps, job.max_steps)
    if job.warm_start_steps is not None:
        if init is None:
            raise ConfigError(f"{job.method} training warm-starts from the clean model (train.warm_start_steps): "
                              f"pass --init with the clean checkpoint")
        model.load_state_dict(load_model(job.net, init, device)[0].state_dict())
        steps = job.warm_start_steps
    optimizer = torch.optim.Adam(model.parameters(), lr=job.lr)
    scale = input_scale(job.net, data["meta"])

    def step_fn(step: int) -> StepOutput:
        idx = batches(step).indices
        return training_step(model, images_all[idx].to(device), labels_all[idx].to(device), job, eps, scale)

    key = f"{job.net.dataset}_{job.method}_eps{eps:g}_seed{seed}"
    loop = LoopSettings(steps, job.checkpoint_every, job.log_every, job.lr, job.lr_schedule, job.lr_min,
                        grad_clip=job.grad_clip)
    summary = {"dataset": job.net.dataset, "method": job.method, "eps": eps, "eps_used": scale * eps, "seed": seed,
               "data_source": data_source_label(data["meta"]), "model": model.describe(),
               "num_parameters": model.num_parameters(), "epochs": batches.epochs(steps),
               "warm_start": str(init) if job.warm_start_steps is not None else None, "steps": steps,
               "inner_attack": (f"PGD-{job.pgd.steps} (step {job.pgd.step_size:g} x eps)" if job.pgd is not None else
                                f"JIO-{job.jio.iterations} (Anderson memory {job.jio.memory})"
                                + (", adjoint solve" if job.jio_backward == "ift" else "")
                                if job.jio is not None else None),
               "inner_iterations": (job.pgd.steps if job.pgd is not None else
                                    job.jio.iterations if job.jio is not None else 0),
               "lr": job.lr, "lr_schedule": job.lr_schedule, "grad_clip": job.grad_clip}
    meta = {"in_channels": in_channels, "num_classes": num_classes, "model_settings": to_plain(job.net.model)}
    return fit(key=key, model=model, optimizer=optimizer, step_fn=step_fn, loop=loop, out_path=out,
               partial_path=partial, settings_hash=settings_hash(job), device=device, summary=summary,
               checkpoint_meta=meta, progress=progress)


# ----------------------------------------------------------------------------- evaluation


def _correct(model: MDEQClassifier, images: Tensor, labels: Tensor, net: Network) -> Tensor:
    with torch.no_grad():
        z, _ = equilibrium(model, images, net)
        return (model.logits(z).argmax(1) == labels).float().sum()


def evaluate(job: EvaluateJob, checkpoint: str | Path, data: dict[str, Any], eps: float, device: torch.device,
             progress: bool = True) -> dict[str, Any]:
    """Clean, PGD and JIO robust accuracy (percent) on the test split.

    After each attack the DEQ is solved again from zero at x + delta and the prediction is read from that
    equilibrium (as the reference's JIO evaluation does), so both attacks are scored the same way.
    """
    model, state = load_model(job.net, checkpoint, device)
    images_all, labels_all = data["test"]["images"], data["test"]["labels"]
    if job.eval.limit is not None:
        images_all, labels_all = images_all[: job.eval.limit], labels_all[: job.eval.limit]
    correct = {m: torch.zeros((), device=device) for m in ("clean", "pgd", "jio")}
    max_norm = torch.zeros((), device=device)
    seed_everything(0)
    scale = input_scale(job.net, data["meta"])
    batch = job.eval.batch_size
    for start in tqdm(range(0, len(labels_all), batch), desc=f"eval {Path(checkpoint).stem} eps={eps:g}",
                      disable=not progress):
        images = images_all[start : start + batch].to(device)
        labels = labels_all[start : start + batch].to(device)
        correct["clean"] += _correct(model, images, labels, job.net)
        delta = pgd_perturbation(model, images, labels, job.net, job.attack.pgd, eps, scale)
        correct["pgd"] += _correct(model, images + delta, labels, job.net)
        with torch.no_grad():
            jio_delta = jio_attack(model, images, labels, job.net, job.attack.jio, eps, scale=scale).x
        correct["jio"] += _correct(model, images + jio_delta, labels, job.net)
        norms = torch.stack([delta.flatten(1).norm(dim=1).max(), jio_delta.flatten(1).norm(dim=1).max()])
        max_norm = torch.maximum(max_norm, norms.max())
    n = len(labels_all)
    accuracy = {k: 100.0 * float(v) / n for k, v in correct.items()}
    if not all(math.isfinite(a) for a in accuracy.values()):
        raise DivergenceError(f"{checkpoint}: non-finite accuracy {accuracy}")
    pgd_cfg, jio_cfg = job.attack.pgd, job.attack.jio
    attacks = (f"PGD-{pgd_cfg.steps} (step {pgd_cfg.step_size:g} x eps), JIO-{jio_cfg.iterations} (Anderson "
               f"type {jio_cfg.anderson_kind}, memory {jio_cfg.memory}, alpha_delta {jio_cfg.alpha[2]:g} x eps)")
    return {"accuracy": accuracy, "n_test": n, "eps": eps, "eps_used": scale * eps, "test_attacks": attacks,
            "max_perturbation_norm": float(max_norm),
            "train": state["summary"], "data_source": data_source_label(data["meta"])}


# ----------------------------------------------------------------------------- timing (Table 2)


def engineering_levels(net: Network, device: torch.device) -> dict[str, str]:
    """The engineering levels Table 2 times both methods at: eager everywhere, and CUDA-graphed replay
    (the profile's ``cuda_graph`` mode) where CUDA is present."""
    levels = {"eager": "off"}
    if device.type == "cuda" and net.cuda_graph != "off":
        levels["graphed"] = net.cuda_graph
    return levels


def nominal_counts(job: TimingJob) -> dict[str, dict[str, int]]:
    """f evaluations and VJPs per adversarial example set, from the settings: every PGD step runs a forward solve
    (its iterations plus the f that attaches z* to the graph) and an implicit backward (its iterations plus the
    VJP of the loss through that f); every JIIO iteration evaluates f and one VJP of (f, cost) (eq. 11).  Both
    compute the stem injection once per distinct input (:func:`deqbench.models.mdeq.injection_cached`)."""
    steps, fwd, bwd = job.attack.pgd.steps, job.net.solver.forward.max_iter, job.net.solver.backward.max_iter
    iterations = job.attack.jio.iterations
    return {"pgd": {"f_evals": steps * (fwd + 1), "vjps": steps * (bwd + 1), "injections": 2 * steps},
            "jio": {"f_evals": iterations, "vjps": iterations, "injections": iterations}}


def time_attacks(job: TimingJob, data: dict[str, Any], device: torch.device, progress: bool = True) -> list[dict[str, Any]]:
    """ms per example to compute one adversarial example with PGD and with JIO, timed side by side at each
    engineering level (:func:`engineering_levels`), with the f / VJP counts of each method and the CUDA graphs each
    captures per call (PGD reuses its forward and adjoint graphs across steps, JIIO has one solve).

    The model is freshly initialised (seed 0): both attacks run fixed iteration counts, so their cost does not
    depend on the weights.  Each repeat times PGD then JIO with device synchronisation; medians are reported.
    """
    seed_everything(0)
    images_all, labels_all = data["test"]["images"], data["test"]["labels"]
    model = build_model(job.net, images_all.shape[1], data["meta"]["num_classes"]).to(device).eval()
    reset_norms(model)
    eps, scale, cfg = job.timing.eps, input_scale(job.net, data["meta"]), job.timing
    counts = nominal_counts(job)
    rows = []
    for engineering, mode in engineering_levels(job.net, device).items():
        net = dataclasses.replace(job.net, cuda_graph=mode)
        for batch in cfg.batch_sizes:
            images, labels = images_all[:batch].to(device), labels_all[:batch].to(device)

            graphed = engineering == "graphed"
            captures = {"pgd": 0, "jio": 1 if graphed else 0}  # JIIO: one solve, one graph per call

            def run_pgd() -> None:
                result = pgd_attack(model, images, labels, net, job.attack.pgd, eps, scale)
                captures["pgd"] = result.info["graph_workspaces"] if graphed else 0  # one graph per workspace

            def run_jio() -> None:
                with torch.no_grad():
                    jio_attack(model, images, labels, net, job.attack.jio, eps, scale=scale)

            samples: dict[str, list[float]] = {"pgd": [], "jio": []}
            for _ in range(cfg.warmup):
                run_pgd()
                run_jio()
            for _ in tqdm(range(cfg.repeats), desc=f"timing {engineering} batch {batch}", disable=not progress):
                for name, fn in (("pgd", run_pgd), ("jio", run_jio)):
                    sync(device)
                    t0 = time.perf_counter()
                    fn()
                    sync(device)
                    samples[name].append(time.perf_counter() - t0)
            med = {k: float(np.median(v)) for k, v in samples.items()}
            for name, iterations in (("pgd", job.attack.pgd.steps), ("jio", job.attack.jio.iterations)):
                rows.append({"method": name, "iterations": iterations, "engineering": engineering,
                             "batch_size": len(labels), "eps_used": scale * eps, **counts[name],
                             "graph_captures": captures[name],
                             "ms_per_call": 1e3 * med[name], "ms_per_example": 1e3 * med[name] / len(labels),
                             "repeats": cfg.repeats, "samples_ms": [1e3 * s for s in samples[name]],
                             "pgd_over_jio": med["pgd"] / med["jio"]})
    return rows


# ----------------------------------------------------------------------------- memory (appendix C.6)


MEMORY_METHODS = ("pgd", "jio")


def attack_memory(job: MemoryJob, data: dict[str, Any], method: str, device: torch.device) -> dict[str, Any]:
    """Peak working memory of one test attack (PGD with ``attack.pgd.steps`` or JIO with ``attack.jio.iterations``)
    on the first ``memory.batch_size`` test images (repeated if fewer), with a fresh seed-0 model: both run fixed
    iteration counts, so their memory does not depend on the weights."""
    if method not in MEMORY_METHODS:
        raise ConfigError(f"memory probe --method must be one of {list(MEMORY_METHODS)}, got {method!r}")
    batch = job.memory.batch_size
    images_all, labels_all = data["test"]["images"], data["test"]["labels"]
    repeat = -(-batch // len(labels_all))
    images = images_all.repeat(repeat, 1, 1, 1)[:batch].to(device)
    labels = labels_all.repeat(repeat)[:batch].to(device)
    seed_everything(0)
    model = build_model(job.net, images.shape[1], data["meta"]["num_classes"]).to(device).eval()
    reset_norms(model)
    scale = input_scale(job.net, data["meta"])
    eps = job.memory.eps
    if method == "pgd":
        with torch.enable_grad():
            measured = peak_memory(lambda: pgd_perturbation(model, images, labels, job.net, job.attack.pgd, eps, scale),
                                   device)
        iterations = job.attack.pgd.steps
    else:
        with torch.no_grad():
            measured = peak_memory(lambda: jio_attack(model, images, labels, job.net, job.attack.jio, eps, scale=scale),
                                   device)
        iterations = job.attack.jio.iterations
    return {"method": method, "iterations": iterations, "batch_size": batch, "eps": eps, "eps_used": scale * eps,
            **measured}


def measure_attack_memory(job: Job) -> list[dict[str, Any]]:
    """PGD vs JIO peak memory: on CUDA in this process, on the CPU each in a fresh child process."""
    if job.device.type == "cuda":
        data = load_artifact(job.args.data, job.device)
        return [attack_memory(job.settings, data, m, job.device) for m in MEMORY_METHODS]
    return [probe_in_child(job, "jiio_adversarial", "memory-probe", ["--data", job.args.data, "--method", m])
            for m in MEMORY_METHODS]


# ----------------------------------------------------------------------------- stages


def run_prepare(job: Job) -> None:
    prepared = prepare_dataset(job.settings)
    prepared["provenance"] = job.provenance()
    atomic_torch_save(job.args.out, prepared)
    print(f"{job.settings.dataset}: {data_source_label(prepared['meta'])}, train {len(prepared['train']['labels'])}, "
          f"test {len(prepared['test']['labels'])}, {prepared['image_size']}px -> {job.args.out}")


def run_train(job: Job) -> None:
    a = job.args
    summary = train(job.settings, load_artifact(a.data), a.eps, a.seed, a.out, a.partial, job.device, job.progress,
                    a.init)
    print(f"trained {summary['key']}: {summary['steps']} steps in {summary['train_seconds']:.1f} s")


def run_evaluate(job: Job) -> None:
    a = job.args
    result = evaluate(job.settings, a.checkpoint, load_artifact(a.data), a.eps, job.device, job.progress)
    result["provenance"] = job.provenance(seeds=[result["train"]["seed"]])
    atomic_write_json(a.out, result)
    print(f"{a.checkpoint}: {result['accuracy']}")


def run_memory(job: Job) -> None:
    data = load_artifact(job.args.data)
    rows = measure_attack_memory(job)
    atomic_write_json(job.args.out, {"rows": rows, "data_source": data_source_label(data["meta"]),
                                     "provenance": job.provenance(seeds=[0])})
    for row in rows:
        print(f"{row['method']}-{row['iterations']} batch {row['batch_size']}: {row['peak_gib']:.4f} GiB "
              f"({row['measure']})")


def run_memory_probe(job: Job) -> None:
    result = attack_memory(job.settings, load_artifact(job.args.data), job.args.method, job.device)
    print(json.dumps(result))


def run_timing(job: Job) -> None:
    data = load_artifact(job.args.data)
    rows = time_attacks(job.settings, data, job.device, job.progress)
    atomic_write_json(job.args.out, {"rows": rows, "data_source": data_source_label(data["meta"]),
                                     "provenance": job.provenance(seeds=[0])})
    for row in rows:
        print(f"{row['method']}-{row['iterations']} batch {row['batch_size']}: {row['ms_per_example']:.2f} ms/example")
