"""Adversarial robustness of MDEQ classifiers: JIIO paper section 4.3, appendix B.2, Tables 2, 5 and 8.

Three training methods (clean, PGD adversarial training, JIO adversarial
training, eq. 26) and three test conditions (clean, PGD-20, JIO-80), all with
L2 perturbations of radius eps.  Every function takes a resolved profile from
params.yaml (:mod:`deqbench.experiments.config`); nothing here hard-codes a
hyper-parameter.

Command line (what the Snakemake rules call)::

    python -m deqbench.tasks.adversarial prepare  --profile P --dataset D --out data/prepared/P/D.pt
    python -m deqbench.tasks.adversarial train    --profile P --dataset D --method M --eps E --seed S --out ckpt.pt
    python -m deqbench.tasks.adversarial evaluate --profile P --checkpoint ckpt.pt --eps E --out eval.json
    python -m deqbench.tasks.adversarial timing   --profile P --out results/table2_timing.json
"""

from __future__ import annotations

import copy
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from deqbench.inputopt.baselines import pgd
from deqbench.experiments.config import ConfigError, config_hash, load_profile
from deqbench.data import DatasetNotFoundError, load_dataset
from deqbench.core.deq import fixed_point
from deqbench.experiments.io import atomic_torch_save, atomic_write_json
from deqbench.core.jacobian import hutchinson_jacobian_loss
from deqbench.inputopt.jiio import JIIOResult, jiio
from deqbench.models.mdeq import MDEQClassifier, MDEQConfig
from deqbench.core.norms import reset_norms
from deqbench.experiments.provenance import provenance, resolve_device
from deqbench.tasks.common import (
    DivergenceError, data_source_label, load_partial, load_prepared, save_partial, seed_everything, sync, task_parser,
)
from deqbench.core.state import flat_map, spec_of

METHODS = ("clean", "pgd", "jio")


def prepare_dataset(profile: dict[str, Any], dataset: str) -> dict[str, Any]:
    """Load both splits of ``dataset`` as the profile says and resize to its image size."""
    spec = profile["datasets"][dataset]
    size = spec["image_size"]
    splits: dict[str, Any] = {}
    for split in ("train", "test"):
        data = load_dataset(spec["source"], split, root=profile["data_root"])
        images = data.images
        if images.shape[-1] != size or images.shape[-2] != size:
            images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True).clamp_(0, 1)
        splits[split] = {"images": images.contiguous(), "labels": data.labels.clone()}
        meta = {"name": data.name, "source": data.source, "stand_in_for": data.stand_in_for, "num_classes": data.num_classes}
    return {"dataset": dataset, "image_size": size, "meta": meta, **splits}


def build_model(profile: dict[str, Any], dataset: str, in_channels: int, num_classes: int) -> MDEQClassifier:
    cfg = dict(profile["model"][dataset])
    config = MDEQConfig(
        in_channels=in_channels,
        num_classes=num_classes,
        channels=tuple(cfg["channels"]),
        expansion=cfg["expansion"],
        block_groups=cfg["block_groups"],
        fuse_groups=cfg["fuse_groups"],
        post_fuse_groups=cfg["post_fuse_groups"],
        head_channels=tuple(cfg["head_channels"]),
        final_channels=cfg["final_channels"],
        weight_norm=cfg["weight_norm"],
    )
    return MDEQClassifier(config)


def _solve_options(options: dict[str, Any]) -> tuple[str, int, float, dict[str, Any]]:
    rest = {k: v for k, v in options.items() if k not in ("method", "max_iter", "tol")}
    return options["method"], options["max_iter"], options["tol"], rest


def forward_kwargs(profile: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments of :func:`deqbench.core.deq.fixed_point` from the profile's solver block."""
    method, max_iter, tol, rest = _solve_options(profile["solver"]["forward"])
    b_method, b_iter, b_tol, b_rest = _solve_options(profile["solver"]["backward"])
    return {
        "solver": method,
        "max_iter": max_iter,
        "tol": tol,
        "solver_options": rest,
        "cuda_graph": profile["cuda_graph"],
        "backward": "ift",
        "backward_options": {"method": b_method, "max_iter": b_iter, "tol": b_tol, "cuda_graph": profile["cuda_graph"], **b_rest},
    }


def equilibrium(model: MDEQClassifier, images: Tensor, profile: dict[str, Any], stats: dict[str, Any] | None = None):
    """z* of the MDEQ at ``images`` (differentiable when grad is enabled) and the layer map."""
    injection = model.inject(images)

    def layer(z):
        return model.layer(z, injection)

    z = fixed_point(layer, model.z0(images), stats=stats, **forward_kwargs(profile))
    return z, layer


# ----------------------------------------------------------------------------- attacks


def pgd_perturbation(model: MDEQClassifier, images: Tensor, labels: Tensor, profile: dict[str, Any], eps: float) -> Tensor:
    """PGD on the L2 (or Linf) ball: every step a full MDEQ solve plus implicit backward."""
    cfg = profile["attack"]["pgd"]
    fwd = forward_kwargs(profile)
    result = pgd(
        model.layer_fn(images),
        model.cost_fn(labels),
        model.z0(images),
        torch.zeros_like(images),
        steps=cfg["steps"],
        step_size=cfg["step_size"],
        projection=cfg["norm"],
        eps=eps,
        normalized_step=True,
        forward={k: fwd[k] for k in ("solver", "max_iter", "tol", "solver_options", "cuda_graph")},
        backward_options=fwd["backward_options"],
    )
    return result.x.detach()


def jio_attack(
    model: MDEQClassifier,
    images: Tensor,
    labels: Tensor,
    profile: dict[str, Any],
    dataset: str,
    eps: float,
    jac_reg: bool = False,
) -> JIIOResult:
    """JIIO on the augmented (z, mu, delta) system with the inner cost -CE (eq. 26)."""
    cfg = profile["attack"]["jio"]
    late = cfg["alpha_x_late"][dataset]
    options: dict[str, Any] = {}
    if late is not None and cfg["alpha_x_switch"] < cfg["iterations"]:
        options.update(alpha_x_late=late, alpha_x_switch=cfg["alpha_x_switch"])
    if jac_reg:
        options.update(jac_reg="trajectory", jac_reg_probes=profile["train"]["jac_probes"])
    return jiio(
        model.layer_fn(images),
        model.cost_fn(labels),
        model.z0(images),
        torch.zeros_like(images),
        max_iter=cfg["iterations"],
        alpha=tuple(cfg["alpha"][dataset]),
        method="anderson",
        solver_options={"m": cfg["memory"], "kind": cfg["anderson_kind"]},
        projection="l2",
        eps=eps,
        normalized_step=True,
        selection=cfg["selection"],
        backward="mu",
        cuda_graph=profile["cuda_graph"],
        **options,
    )


# ----------------------------------------------------------------------------- training


@dataclass
class TrainRun:
    profile: dict[str, Any]
    dataset: str
    method: str
    eps: float
    seed: int

    @property
    def key(self) -> str:
        return f"{self.dataset}_{self.method}_eps{self.eps:g}_seed{self.seed}"


def training_attack_profile(profile: dict[str, Any]) -> dict[str, Any]:
    """The profile with the attack sizes used inside adversarial training (``train.attack_*``)."""
    pgd_steps, jio_iters = profile["train"]["attack_pgd_steps"], profile["train"]["attack_jio_iterations"]
    if pgd_steps is None and jio_iters is None:
        return profile
    attack = copy.deepcopy(profile["attack"])
    if pgd_steps is not None:
        attack["pgd"]["steps"] = pgd_steps
    if jio_iters is not None:
        attack["jio"]["iterations"] = jio_iters
    return {**profile, "attack": attack}


def _step_loss(model: MDEQClassifier, images: Tensor, labels: Tensor, run: TrainRun) -> tuple[Tensor, Tensor, Tensor]:
    """Loss, cross-entropy and equilibrium residual (B,) of one training step."""
    profile, lam = training_attack_profile(run.profile), run.profile["train"]["jac_reg"]
    if run.method == "jio":
        result = jio_attack(model, images, labels, profile, run.dataset, run.eps, jac_reg=lam > 0)
        ce = F.cross_entropy(model.logits(result.z), labels)
        jac = result.jac_loss if result.jac_loss is not None else ce.new_zeros(())
        return ce + lam * jac, ce, result.residual
    if run.method == "pgd":
        with torch.enable_grad():
            delta = pgd_perturbation(model, images, labels, profile, run.eps)
        images = images + delta
    stats: dict[str, Any] = {}
    z, layer = equilibrium(model, images, profile, stats)
    ce = F.cross_entropy(model.logits(z), labels)
    loss = ce
    if lam > 0:
        spec = spec_of(z)
        jac = hutchinson_jacobian_loss(flat_map(layer, spec), spec.flatten(z).detach(), profile["train"]["jac_probes"])
        loss = ce + lam * jac
    return loss, ce, stats["forward"].residual


def train(
    run: TrainRun,
    data: dict[str, Any],
    out_path: str | Path,
    partial_path: str | Path,
    device: torch.device,
    progress: bool = True,
) -> dict[str, Any]:
    """Train one model; resumable from ``partial_path``; writes the final checkpoint atomically."""
    if run.method not in METHODS:
        raise ConfigError(f"unknown training method {run.method!r}; known: {list(METHODS)}")
    profile, tcfg = run.profile, run.profile["train"]
    seed_everything(run.seed)
    train_images, train_labels = data["train"]["images"], data["train"]["labels"]
    model = build_model(profile, run.dataset, train_images.shape[1], data["meta"]["num_classes"]).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=tcfg["lr"])
    n = len(train_labels)
    batch = min(tcfg["batch_size"], n)
    steps_per_epoch = n // batch
    total = steps_per_epoch * tcfg["epochs"][run.dataset]
    if tcfg["max_steps"] is not None:
        total = min(total, tcfg["max_steps"])
    chash = config_hash(profile)
    partial = Path(partial_path)
    step, history = load_partial(partial, run.key, chash, model, optimizer, device)
    model.train()
    bar = tqdm(total=total, initial=step, desc=f"train {run.key}", disable=not progress, unit="step")
    start = time.perf_counter()
    while step < total:
        epoch, offset = divmod(step, steps_per_epoch)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(run.seed * 1000 + epoch))
        idx = order[offset * batch : (offset + 1) * batch]
        images, labels = train_images[idx].to(device), train_labels[idx].to(device)
        reset_norms(model)
        optimizer.zero_grad(set_to_none=True)
        loss, ce, residual = _step_loss(model, images, labels, run)
        healthy = torch.isfinite(loss) & torch.isfinite(residual).all()
        if not bool(healthy):  # one host read per training step, outside every solver loop
            raise DivergenceError(
                f"{run.key}: non-finite loss or equilibrium residual at step {step} "
                f"(loss={float(loss.detach())}, max residual={float(residual.max())}); no table is written"
            )
        loss.backward()
        optimizer.step()
        step += 1
        if step % tcfg["log_every"] == 0 or step == total:
            entry = {"step": step, "loss": float(loss.detach()), "ce": float(ce.detach()), "residual": float(residual.mean())}
            history.append(entry)
            bar.set_postfix(loss=f"{entry['loss']:.3f}", res=f"{entry['residual']:.1e}")
        bar.update(1)
        if step % tcfg["checkpoint_every"] == 0 and step < total:
            save_partial(partial, run.key, chash, model, optimizer, step, history, device)
    bar.close()
    summary = {
        "key": run.key,
        "dataset": run.dataset,
        "method": run.method,
        "eps": run.eps,
        "seed": run.seed,
        "steps": step,
        "train_seconds": time.perf_counter() - start,
        "history": history,
        "data_source": data_source_label(data["meta"]),
        "model": model.describe(),
        "num_parameters": model.num_parameters(),
    }
    atomic_torch_save(out_path, {"model": model.state_dict(), "summary": summary, "config_hash": chash,
                                 "in_channels": train_images.shape[1], "num_classes": data["meta"]["num_classes"]})
    if partial.exists():
        partial.unlink()
    return summary


# ----------------------------------------------------------------------------- evaluation


def _accuracy(model: MDEQClassifier, images: Tensor, labels: Tensor, profile: dict[str, Any]) -> Tensor:
    with torch.no_grad():
        z, _ = equilibrium(model, images, profile)
        return (model.logits(z).argmax(1) == labels).float().sum()


def evaluate(
    profile: dict[str, Any],
    dataset: str,
    checkpoint: str | Path,
    data: dict[str, Any],
    eps: float,
    device: torch.device,
    progress: bool = True,
) -> dict[str, Any]:
    """Clean, PGD and JIO robust accuracy (percent) on the test split.

    After each attack the DEQ is solved again from zero at x + delta and the
    prediction is read from that equilibrium (as the reference's JIO
    evaluation does), so both attacks are scored the same way.
    """
    state = torch.load(checkpoint, map_location=device, weights_only=False)
    model = build_model(profile, dataset, state["in_channels"], state["num_classes"]).to(device)
    model.load_state_dict(state["model"])
    model.eval()
    reset_norms(model)
    images_all, labels_all = data["test"]["images"], data["test"]["labels"]
    limit = profile["eval"]["limit"]
    if limit is not None:
        images_all, labels_all = images_all[:limit], labels_all[:limit]
    batch = profile["eval"]["batch_size"]
    correct = {"clean": torch.zeros((), device=device), "pgd": torch.zeros((), device=device), "jio": torch.zeros((), device=device)}
    max_norm = torch.zeros((), device=device)
    seed_everything(0)
    for start in tqdm(range(0, len(labels_all), batch), desc=f"eval {Path(checkpoint).stem} eps={eps:g}", disable=not progress):
        images = images_all[start : start + batch].to(device)
        labels = labels_all[start : start + batch].to(device)
        correct["clean"] += _accuracy(model, images, labels, profile)
        delta = pgd_perturbation(model, images, labels, profile, eps)
        correct["pgd"] += _accuracy(model, images + delta, labels, profile)
        with torch.no_grad():
            attack = jio_attack(model, images, labels, profile, dataset, eps)
        correct["jio"] += _accuracy(model, images + attack.x, labels, profile)
        max_norm = torch.maximum(max_norm, torch.maximum(delta.flatten(1).norm(dim=1).max(), attack.x.flatten(1).norm(dim=1).max()))
    n = len(labels_all)
    accuracy = {k: 100.0 * float(v) / n for k, v in correct.items()}
    if not all(math.isfinite(a) for a in accuracy.values()):
        raise DivergenceError(f"{checkpoint}: non-finite accuracy {accuracy}")
    return {
        "accuracy": accuracy,
        "n_test": n,
        "eps": eps,
        "max_perturbation_norm": float(max_norm),
        "train": state["summary"],
        "data_source": data_source_label(data["meta"]),
    }


# ----------------------------------------------------------------------------- timing (Table 2)


def time_attacks(
    profile: dict[str, Any],
    data: dict[str, Any],
    device: torch.device,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """ms per example to compute one adversarial example with PGD and with JIO, timed side by side.

    The model is freshly initialised (seed 0): both attacks run fixed
    iteration counts, so their cost does not depend on the weights.  Each
    repeat times PGD then JIO with device synchronisation; medians are
    reported.
    """
    dataset = profile["timing"]["dataset"]
    eps = profile["experiments"].get("table5", next(iter(profile["experiments"].values())))["eps"]
    seed_everything(0)
    images_all, labels_all = data["test"]["images"], data["test"]["labels"]
    model = build_model(profile, dataset, images_all.shape[1], data["meta"]["num_classes"]).to(device).eval()
    reset_norms(model)
    rows = []
    cfg = profile["timing"]
    for batch in cfg["batch_sizes"]:
        images = images_all[:batch].to(device)
        labels = labels_all[:batch].to(device)

        def run_pgd() -> None:
            pgd_perturbation(model, images, labels, profile, eps)

        def run_jio() -> None:
            with torch.no_grad():
                jio_attack(model, images, labels, profile, dataset, eps)

        samples: dict[str, list[float]] = {"pgd": [], "jio": []}
        for _ in range(cfg["warmup"]):
            run_pgd()
            run_jio()
        for _ in tqdm(range(cfg["repeats"]), desc=f"timing batch {batch}", disable=not progress):
            for name, fn in (("pgd", run_pgd), ("jio", run_jio)):
                sync(device)
                t0 = time.perf_counter()
                fn()
                sync(device)
                samples[name].append(time.perf_counter() - t0)
        med = {k: float(np.median(v)) for k, v in samples.items()}
        for name, iterations in (("pgd", profile["attack"]["pgd"]["steps"]), ("jio", profile["attack"]["jio"]["iterations"])):
            rows.append({
                "method": name,
                "iterations": iterations,
                "batch_size": len(labels),
                "ms_per_call": 1e3 * med[name],
                "ms_per_example": 1e3 * med[name] / len(labels),
                "repeats": cfg["repeats"],
                "samples_ms": [1e3 * s for s in samples[name]],
            })
        rows[-2]["pgd_over_jio"] = rows[-1]["pgd_over_jio"] = med["pgd"] / med["jio"]
    return rows


# ----------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser, sub = task_parser("python -m deqbench.tasks.adversarial", __doc__)
    p = sub.add_parser("prepare")
    p.add_argument("--dataset", required=True)
    p.add_argument("--out", required=True)
    p = sub.add_parser("train")
    p.add_argument("--data", required=True, help="prepared dataset file")
    p.add_argument("--dataset", required=True)
    p.add_argument("--method", required=True, choices=METHODS)
    p.add_argument("--eps", type=float, required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--partial", required=True, help="resumable partial checkpoint (outside declared outputs)")
    p = sub.add_parser("evaluate")
    p.add_argument("--data", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--eps", type=float, required=True)
    p.add_argument("--out", required=True)
    p = sub.add_parser("timing")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    try:
        profile = load_profile(args.params, args.profile)
        device = resolve_device(profile["device"])
        progress = not args.no_progress
        if args.command == "prepare":
            if args.dataset not in profile["datasets"]:
                raise ConfigError(f"--dataset {args.dataset!r} is not in profiles.{profile['name']}.datasets ({sorted(profile['datasets'])})")
            prepared = prepare_dataset(profile, args.dataset)
            prepared["provenance"] = provenance(profile, "cpu")
            atomic_torch_save(args.out, prepared)
            print(f"{args.dataset}: {data_source_label(prepared['meta'])}, train {len(prepared['train']['labels'])}, "
                  f"test {len(prepared['test']['labels'])}, {prepared['image_size']}px -> {args.out}")
        elif args.command == "train":
            run = TrainRun(profile, args.dataset, args.method, args.eps, args.seed)
            summary = train(run, load_prepared(args.data), args.out, args.partial, device, progress)
            print(f"trained {summary['key']}: {summary['steps']} steps in {summary['train_seconds']:.1f} s")
        elif args.command == "evaluate":
            result = evaluate(profile, args.dataset, args.checkpoint, load_prepared(args.data), args.eps, device, progress)
            result["provenance"] = provenance(profile, device, seeds=[result["train"]["seed"]])
            atomic_write_json(args.out, result)
            print(f"{args.checkpoint}: {result['accuracy']}")
        elif args.command == "timing":
            data = load_prepared(args.data)
            rows = time_attacks(profile, data, device, progress)
            out = {"rows": rows, "data_source": data_source_label(data["meta"]), "provenance": provenance(profile, device, seeds=[0])}
            atomic_write_json(args.out, out)
            for row in rows:
                print(f"{row['method']}-{row['iterations']} batch {row['batch_size']}: {row['ms_per_example']:.2f} ms/example")
    except (ConfigError, DatasetNotFoundError, DivergenceError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
