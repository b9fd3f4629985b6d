"""MOptEqs image classification: train and evaluate the models of the paper's tables, and trace their convergence.

Stages (``python -m deqbench moptqs STAGE``): ``prepare`` a dataset, ``train`` one named model (SGD with the
multi-step schedule of appendix A.6, implicit or one-step gradients), ``evaluate`` one checkpoint (test accuracy
with the forward solve of spec A.6, PE off and, for PE models, on), ``convergence`` (Figure 4: the relative
residual per Anderson iteration).  Each takes its typed settings from :mod:`.settings`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from deqbench.core.deq import fixed_point
from deqbench.core.jacobian import hutchinson_jacobian_loss
from deqbench.core.norms import reset_norms
from deqbench.core.state import flat_map, spec_of
from deqbench.experiments.config import ConfigError
from deqbench.experiments.io import atomic_torch_save, atomic_write_json, load_artifact
from deqbench.experiments.prepared import run_prepare_job
from deqbench.experiments.registry import Job
from deqbench.experiments.runtime import DivergenceError, data_source_label, seed_everything
from deqbench.experiments.settings import settings_hash, to_plain
from deqbench.experiments.trainer import EpochBatches, LoopSettings, StepOutput, fit, standard_augment
from deqbench.models.mdeq import MDEQClassifier
from deqbench.models.moptqs import MOptEqs
from deqbench.tasks.moptqs.analysis import run_figure2_data, run_figure3a_data
from deqbench.tasks.moptqs.robustness import adversarial_examples, attack_accuracy
from deqbench.tasks.moptqs.settings import (
    AnyModel, AttackJob, BaselineParams, ConvergenceJob, EvaluateJob, Figure2Job, Figure3aJob, TrainEvaluateJob,
    TrainJob,
)

Classifier = MOptEqs | MDEQClassifier

# ----------------------------------------------------------------------------- model


def build_model(model: AnyModel, data: dict[str, Any]) -> Classifier:
    """The declared model (an MOptEqs-family model or an MDEQ baseline) for the prepared data's channels, classes
    and image size."""
    images = data["train"]["images"]
    if isinstance(model, BaselineParams):
        return MDEQClassifier(model.config(images.shape[1], data["meta"]["num_classes"]))
    return MOptEqs(model.config(images.shape[1], data["meta"]["num_classes"], data["image_size"]))


def load_model(name: str, model: AnyModel, data: dict[str, Any], path: str | Path,
               device: torch.device) -> tuple[Classifier, dict[str, Any]]:
    """A trained model; refuses a checkpoint whose architecture differs from the settings'."""
    state = load_artifact(path, device)
    if state.get("model_settings") != to_plain(model):
        raise ConfigError(f"{path} holds another architecture than moptqs.models.{name} now declares; retrain it")
    net = build_model(model, data).to(device)
    net.load_state_dict(state["model"])
    net.eval()
    return net, state


def inference_kwargs(job: EvaluateJob) -> dict[str, Any]:
    """How a model infers at test: the forward solve with ``eval.max_iter``, or for a one-step model the K plain
    iterations it trains with (appendix A.11)."""
    kwargs = solve_kwargs(job, job.eval.max_iter)
    if job.one_step_iterations is not None:
        kwargs.update(gradient="one_step", one_step_iterations=job.one_step_iterations)
    return kwargs


def solve_kwargs(job: TrainJob | EvaluateJob | AttackJob, max_iter: int | None = None) -> dict[str, Any]:
    """The model's forward-solve and IFT keyword arguments from the solver settings."""
    f, b = job.solver.forward, job.solver.backward
    return {"solver": f.method, "max_iter": max_iter or f.max_iter, "tol": f.tol, "solver_options": f.options(),
            "backward": "ift", "backward_options": {"method": b.method, "max_iter": b.max_iter, "tol": b.tol,
                                                    **b.options()}}


# ----------------------------------------------------------------------------- training


def mdeq_with_jacobian_loss(model: MDEQClassifier, images: Tensor, kwargs: dict[str, Any],
                            stats: dict[str, Any]) -> tuple[Tensor, Tensor]:
    """Logits at the MDEQ's equilibrium and the Hutchinson estimate of ||df/dz||_F^2 / dim there (one probe)."""
    reset_norms(model)
    injection = model.inject(images)

    def layer(z: Any) -> Any:
        return model.layer(z, injection)

    z = fixed_point(layer, model.z0(images), stats=stats, **kwargs)
    spec = spec_of(z)
    return model.logits(z), hutchinson_jacobian_loss(flat_map(layer, spec), spec.flatten(z).detach(), 1)


def train(job: TrainJob, data: dict[str, Any], seed: int, out: str | Path, partial: str | Path,
          device: torch.device, progress: bool = True) -> dict[str, Any]:
    """Train one model with SGD and the multi-step schedule (appendix A.6); resumable from ``partial``."""
    seed_everything(seed)
    images_all, labels_all = data["train"]["images"], data["train"]["labels"]
    model = build_model(job.model, data).to(device)
    batches = EpochBatches(len(labels_all), job.batch_size, seed)
    steps = max(1, round(batches.steps_per_epoch * job.epochs))
    if job.max_steps is not None:
        steps = min(steps, job.max_steps)
    adam_lr = getattr(job.model, "adam_lr", None)
    if adam_lr is not None:  # an MDEQ baseline with MDEQ's own recipe
        optimizer: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=adam_lr)
        loop = LoopSettings(steps, job.checkpoint_every, job.log_every, adam_lr, "cosine", lr_min=1e-6)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=job.lr, momentum=job.momentum, nesterov=job.nesterov,
                                    weight_decay=job.weight_decay)
        loop = LoopSettings(steps, job.checkpoint_every, job.log_every, job.lr, "multistep",
                            lr_milestones=job.lr_milestones, lr_gamma=job.lr_gamma)
    kwargs = solve_kwargs(job)
    attack_kwargs = dict(kwargs)
    if isinstance(model, MOptEqs):
        kwargs.update(gradient=job.model.gradient, one_step_iterations=job.one_step_iterations)

    jac_reg = job.model.jac_reg_on(job.dataset) if isinstance(job.model, BaselineParams) else 0.0
    gamma = getattr(job.model, "hhd_loss_gamma", 0.0)

    def step_fn(step: int) -> StepOutput:
        idx = batches(step).indices
        images = images_all[idx]
        generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
        if job.augment:
            images = standard_augment(images, generator)
        stats: dict[str, Any] = {}
        labels = labels_all[idx].to(device)
        images = images.to(device)
        logged: dict[str, Tensor] = {}
        if job.adversarial is not None:  # Table 5: train on PGD-k examples of the current model
            images = adversarial_examples(model, images, labels, job.adversarial, job.adversarial.train_steps,
                                          attack_kwargs, generator)
        if jac_reg > 0:
            logits, jacobian = mdeq_with_jacobian_loss(model, images, kwargs, stats)
            loss = F.cross_entropy(logits, labels) + jac_reg * jacobian
        elif gamma > 0:  # Figure 3(c): the HH&D terms as a loss regulariser
            assert isinstance(model, MOptEqs)
            z = model.equilibrium(images, stats=stats, **kwargs)
            logits = model.logits(z)
            d, h = model.pair_terms(z, normalize=True)
            regulariser = (job.model.lam * d - h).mean()
            loss = F.cross_entropy(logits, labels) + gamma * regulariser
            logged["hhd_loss"] = regulariser.detach()
        else:
            logits = model(images, stats=stats, **kwargs)
            loss = F.cross_entropy(logits, labels)
        residual = stats["forward"].residual if "forward" in stats else stats["one_step_residual"]
        accuracy = (logits.detach().argmax(1) == labels).float().mean()
        return StepOutput(loss, {"accuracy": accuracy, "residual": residual.mean(), **logged}, residual)

    key = f"{job.dataset}_{job.model_name}_seed{seed}"
    summary = {"dataset": job.dataset, "model_name": job.model_name, "label": job.model.label, "seed": seed,
               "source": data["meta"]["name"],
               "data_source": data_source_label(data["meta"]), "model": model.describe(),
               "num_parameters": model.num_parameters(), "epochs": batches.epochs(steps), "steps": steps,
               "gradient": getattr(job.model, "gradient", "implicit"), "lr": loop.lr, "optimizer": type(optimizer).__name__, "weight_decay": job.weight_decay,
               "batch_size": batches.batch_size, "augment": job.augment,
               "adversarial": to_plain(job.adversarial) if job.adversarial is not None else None}
    meta = {"model_settings": to_plain(job.model)}
    result = fit(key=key, model=model, optimizer=optimizer, step_fn=step_fn, loop=loop, out_path=out,
                 partial_path=partial, settings_hash=settings_hash(job), device=device, summary=summary,
                 checkpoint_meta=meta, progress=progress)
    return result


# ----------------------------------------------------------------------------- evaluation


def _accuracy(model: Classifier, images_all: Tensor, labels_all: Tensor, job: EvaluateJob, device: torch.device,
              progress: bool, what: str) -> dict[str, float]:
    """Test accuracy (percent) and the mean forward iterations and final relative residual of its solves."""
    correct = torch.zeros((), device=device)
    residuals, iterations = [], []  # per batch
    kwargs = inference_kwargs(job)
    batch = job.eval.batch_size
    with torch.no_grad():
        for start in tqdm(range(0, len(labels_all), batch), desc=what, disable=not progress):
            images = images_all[start : start + batch].to(device)
            stats: dict[str, Any] = {}
            logits = model(images, stats=stats, **kwargs)
            correct += (logits.argmax(1) == labels_all[start : start + batch].to(device)).float().sum()
            if "forward" in stats:
                residuals.append(stats["forward"].residual)
                iterations.append(stats["forward"].nfe)
            else:
                residuals.append(stats["one_step_residual"])
                iterations.append(job.one_step_iterations)
    n = len(labels_all)
    return {"accuracy": 100.0 * float(correct) / n, "residual_mean": float(torch.cat(residuals).mean()),
            "forward_iterations_mean": sum(iterations) / len(iterations)}


def evaluate(job: EvaluateJob, checkpoint: str | Path, data: dict[str, Any], device: torch.device,
             progress: bool = True) -> dict[str, Any]:
    """Test accuracy of one checkpoint; PE models also with PE on at test time (AMBIG-A6: the paper does not say)."""
    model, state = load_model(job.model_name, job.model, data, checkpoint, device)
    images_all, labels_all = data["test"]["images"], data["test"]["labels"]
    if job.eval.limit is not None:
        images_all, labels_all = images_all[: job.eval.limit], labels_all[: job.eval.limit]
    seed_everything(0)
    name = Path(checkpoint).stem
    result = _accuracy(model, images_all, labels_all, job, device, progress, f"eval {name}")
    if isinstance(model, MOptEqs) and job.model.pe_eps > 0:  # the other PE-at-test setting (AMBIG-A6)
        other = model.with_config(pe_at_eval=not job.model.pe_at_eval).eval()
        flipped = _accuracy(other, images_all, labels_all, job, device, progress,
                            f"eval {name} (PE {'off' if job.model.pe_at_eval else 'on'} at test)")
        key = "accuracy_no_pe_at_eval" if job.model.pe_at_eval else "accuracy_pe_at_eval"
        result[key] = flipped["accuracy"]
    if not math.isfinite(result["accuracy"]):
        raise DivergenceError(f"{checkpoint}: non-finite accuracy {result}")
    chance = 100.0 * float(torch.bincount(labels_all).max()) / len(labels_all)  # always the most frequent class
    return {**result, "n_test": len(labels_all), "chance_accuracy": chance, "num_parameters": model.num_parameters(),
            "operator_norms": model.operator_norms() if isinstance(model, MOptEqs) else None, "train": state["summary"],
            "data_source": data_source_label(data["meta"])}


# ----------------------------------------------------------------------------- Table 5, Figure 3(b)


def attack(job: AttackJob, checkpoint: str | Path, data: dict[str, Any], device: torch.device,
           progress: bool = True) -> dict[str, Any]:
    """Clean accuracy and accuracy after every PGD iteration of one checkpoint (robustness.attack_accuracy), with the
    training solve (forward and IFT backward) inside the attack; PE off at test."""
    model, state = load_model(job.model_name, job.model, data, checkpoint, device)
    images, labels = data["test"]["images"], data["test"]["labels"]
    if job.attack.limit is not None:
        images, labels = images[: job.attack.limit], labels[: job.attack.limit]
    seed = state["summary"]["seed"]
    bar = lambda it: tqdm(it, desc=f"PGD-{job.steps} {Path(checkpoint).stem}", disable=not progress)  # noqa: E731
    result = attack_accuracy(model, images, labels, job.attack, job.steps, solve_kwargs(job), seed, bar)
    return {**result, "num_parameters": model.num_parameters(), "train": state["summary"],
            "data_source": data_source_label(data["meta"])}


# ----------------------------------------------------------------------------- Figure 4


def convergence(job: ConvergenceJob, checkpoints: list[str], data: dict[str, Any], device: torch.device
                ) -> list[dict[str, Any]]:
    """Relative residual ||T(z) - z|| / ||T(z)|| at every Anderson iteration (tolerance 0), one test batch per model:
    the batch median and quartiles per iteration (appendix A.7, Figure 4, one panel)."""
    if len(checkpoints) != len(job.models):
        raise ConfigError(f"convergence panel {job.panel}: {len(job.models)} models but {len(checkpoints)} "
                          f"checkpoints")
    images = data["test"]["images"][: job.batch_size].to(device)
    f = job.solver.forward
    rows = []
    for (name, params), path in zip(job.models, checkpoints):
        model, state = load_model(name, params, data, path, device)
        stats: dict[str, Any] = {}
        with torch.no_grad():
            model(images, solver=f.method, max_iter=job.iterations, tol=0.0,
                  solver_options=f.options(), backward="none", stats=stats)
        trace = stats["forward"].trace.float()  # (B, iterations)
        quantiles = torch.nanquantile(trace, torch.tensor([0.25, 0.5, 0.75], device=trace.device), dim=0)
        for k in range(trace.shape[1]):
            rows.append({"panel": job.panel, "model_name": name, "label": params.label, "lam": params.lam,
                         "layout": params.layout, "iteration": k + 1, "residual_median": float(quantiles[1, k]),
                         "residual_q25": float(quantiles[0, k]), "residual_q75": float(quantiles[2, k]),
                         "channels": params.channels, "seed": state["summary"]["seed"]})
    return rows


# ----------------------------------------------------------------------------- Figures 2 and 3(a)


def figure2(job: Figure2Job, checkpoints: list[str], data: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Average D / H and the branch-2 / branch-1 channel correlation of trained models (Figure 2)."""
    if len(checkpoints) != len(job.models):
        raise ConfigError(f"figure2: {len(job.models)} models but {len(checkpoints)} checkpoints")
    models = [(name, role, load_model(name, params, data, path, device)[0])  # rows are named by role
              for (role, name, params), path in zip(job.models, checkpoints)]
    return run_figure2_data(models, data, job.figure.samples, job.figure.max_iter, device)


def figure3a(job: Figure3aJob, checkpoint: str, data: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Accuracy under reconstructed vs random feature perturbations (Figure 3(a))."""
    model, _ = load_model(job.figure.model, job.model, data, checkpoint, device)
    f = job.solver.forward
    solve = {"solver": f.method, "max_iter": job.eval_max_iter, "tol": f.tol, "solver_options": f.options(),
             "backward": "none"}
    return run_figure3a_data(model, data, job.figure.eps, job.figure.trials, job.figure.seed, solve, job.figure.limit,
                             device, model_key=job.figure.model, label=job.model.label)


# ----------------------------------------------------------------------------- stages


def run_prepare(job: Job) -> None:
    j = job.settings
    prepared = run_prepare_job(j)
    prepared["provenance"] = job.provenance()
    atomic_torch_save(job.args.out, prepared)
    print(f"{j.dataset}: {data_source_label(prepared['meta'])}, train {len(prepared['train']['labels'])}, "
          f"test {len(prepared['test']['labels'])}, {prepared['image_size']}px -> {job.args.out}")


def run_train(job: Job) -> None:
    a = job.args
    summary = train(job.settings, load_artifact(a.data), a.seed, a.out, a.partial, job.device, job.progress)
    print(f"trained {summary['key']}: {summary['steps']} steps in {summary['train_seconds']:.1f} s")


def run_evaluate(job: Job) -> None:
    a = job.args
    result = evaluate(job.settings, a.checkpoint, load_artifact(a.data), job.device, job.progress)
    result["provenance"] = job.provenance(seeds=[result["train"]["seed"]])
    atomic_write_json(a.out, result)
    print(f"{a.checkpoint}: accuracy {result['accuracy']:.2f} %")


def run_train_evaluate(job: Job) -> None:
    """Train (resumable from ``--partial``), then write the checkpoint's evaluation, as ``train`` + ``evaluate``."""
    a, settings = job.args, job.settings
    assert isinstance(settings, TrainEvaluateJob)
    data = load_artifact(a.data)
    summary = train(settings.train, data, a.seed, a.out, a.partial, job.device, job.progress)
    print(f"trained {summary['key']}: {summary['steps']} steps in {summary['train_seconds']:.1f} s")
    result = evaluate(settings.evaluate, a.out, data, job.device, job.progress)
    result["provenance"] = job.provenance(seeds=[result["train"]["seed"]])
    atomic_write_json(a.evaluation, result)
    print(f"{a.out}: accuracy {result['accuracy']:.2f} %")


def run_attack(job: Job) -> None:
    a = job.args
    result = attack(job.settings, a.checkpoint, load_artifact(a.data), job.device, job.progress)
    result["provenance"] = job.provenance(seeds=[result["train"]["seed"]])
    atomic_write_json(a.out, result)
    print(f"{a.checkpoint}: clean {result['accuracy_clean']:.2f} %, after PGD-{result['steps']} "
          f"{result['accuracy_by_step'][-1]:.2f} %")


def run_convergence(job: Job) -> None:
    a = job.args
    data = load_artifact(a.data)
    rows = convergence(job.settings, list(a.checkpoints), data, job.device)
    atomic_write_json(a.out, {"panel": job.settings.panel, "rows": rows, "data_source": data_source_label(data["meta"]),
                              "provenance": job.provenance(seeds=[job.settings.seed])})
    print(f"traced {len(job.settings.models)} models (panel {job.settings.panel}) -> {a.out}")


def run_figure2(job: Job) -> None:
    a = job.args
    result = figure2(job.settings, list(a.checkpoints), load_artifact(a.data), job.device)
    result["provenance"] = job.provenance(seeds=[job.settings.figure.seed])
    atomic_write_json(a.out, result)
    print(f"figure 2 statistics of {len(a.checkpoints)} models -> {a.out}")


def run_figure3a(job: Job) -> None:
    a = job.args
    result = figure3a(job.settings, a.checkpoint, load_artifact(a.data), job.device)
    result["provenance"] = job.provenance(seeds=[job.settings.figure.seed])
    atomic_write_json(a.out, result)
    print(f"figure 3(a) curves -> {a.out}")
