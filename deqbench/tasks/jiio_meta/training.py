"""Meta-training and evaluation of the Table 6 methods (spec B.2-B.6) on Omniglot or the digits stand-in.

Every method meta-trains through :func:`deqbench.experiments.trainer.fit` (resumable partial checkpoints, a
divergence check per step, atomic writes).  Meta-step ``s`` uses training tasks ``s * B .. s * B + B - 1`` of a
seeded :class:`TaskSampler`, so a resumed run sees the same tasks.  The baselines' meta-gradients come from
:mod:`deqbench.meta` as parameter dictionaries; the optimiser receives them through a surrogate loss whose value is
the outer loss and whose gradient is the meta-gradient.  Reptile's outer step ``theta += eps * mean(phi - theta)``
is plain SGD of size eps (annealed linearly) on the pseudo-gradient ``theta - phi``.

Evaluation (spec B.4, B.5): ``eval.tasks`` tasks of the held-out pool only, the same tasks (seed ``eval.seed``) for
every method; accuracy per task on its query images; mean and 95 % interval 1.96 * sd / sqrt(n).  The conv
baselines see a task's whole query set in one call, so their BatchNorm statistics come from the query batch: the
transductive setting of the published MAML / Reptile numbers (spec B.6, AMBIG-B4).
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call
from tqdm import tqdm

from deqbench.data.omniglot import FewShotSplits, TaskSampler, load_digits_meta, load_omniglot, stack_tasks
from deqbench.experiments.trainer import LoopSettings, StepOutput, fit
from deqbench.meta import (
    IMAMLConfig, MAMLConfig, imaml_adapt, imaml_meta_gradient_batch, maml_adapt, maml_meta_gradient_batch,
    module_loss, module_params, reptile_adapt, tree_dot,
)
from deqbench.meta.jiio_deq import JIIODEQConfig, adapt_task_vectors, flatten_tasks, meta_loss, query_logits
from deqbench.models.conv4 import Conv4
from deqbench.models.mdeq import MDEQClassifier
from deqbench.tasks.jiio_meta.params import (
    ConvBackboneParams, DataParams, JIIODEQParams,
)
from deqbench.tasks.jiio_meta.settings import TrainJob

Support = tuple[Tensor, Tensor]


# ----------------------------------------------------------------------------- data (spec B.5, B.10)


def load_splits(data: DataParams, data_root: str) -> FewShotSplits:
    """Omniglot with the iMAML split (per-task rotations) or the digits stand-in (rotations as classes)."""
    if data.source == "omniglot":
        return load_omniglot(data_root, seed=data.split_seed, image_size=data.image_size)
    return load_digits_meta(image_size=data.image_size)


def data_source_of(splits: FewShotSplits) -> str:
    """What every result and table says about its data."""
    if splits.stand_in_for:
        return f"digits (embedded stand-in for {splits.stand_in_for}; accuracy not comparable to Table 6)"
    return f"Omniglot, iMAML split (permutation seed {splits.seed}, {splits.meta_test.num_classes} held-out classes)"


def test_sampler(data: DataParams, splits: FewShotSplits, seed: int) -> TaskSampler:
    """The held-out tasks every method is scored on (never the meta-training classes, spec B.5)."""
    return TaskSampler(splits.meta_test, data.n_way, data.k_shot, data.k_query, seed=seed)


def _to(batch: tuple[Support, Support], device: torch.device) -> tuple[Support, Support]:
    (sx, sy), (qx, qy) = batch
    return (sx.to(device), sy.to(device)), (qx.to(device), qy.to(device))


# ----------------------------------------------------------------------------- models (spec B.3, B.6)


def jiio_deq_model(p: JIIODEQParams, n_way: int) -> MDEQClassifier:
    """The FiLM-conditioned MDEQ of spec B.3.  The FiLM weights are drawn N(0, film_init_std), biases 0: at x = 0
    the model is the plain MDEQ, as the zero init intends, but unlike weights and x0 both zero (an exact stationary
    point: J_x = 0 keeps x at 0 and the weight gradient outer(dL/dgamma, x) is 0) the task vector can learn.
    ``contractive_gain`` sets the initial weight-norm gains of the blocks' first convs and the post-fusion convs
    (see :class:`MDEQParams`): at the default init the small MDEQ's solve does not converge (relative residual
    about 0.3 after 18 Broyden iterations on the stand-in), z* is then a nearly chaotic function of x and the inner
    loop cannot lower the support cost."""
    m = p.model
    model = MDEQClassifier(m.config(in_channels=1, num_classes=n_way))
    with torch.no_grad():
        for block in model.blocks:
            assert block.film is not None
            block.film.weight.normal_(0.0, m.film_init_std)
            if m.contractive_gain is not None:
                block.conv1.weight_g.fill_(m.contractive_gain)
        if m.contractive_gain is not None:
            for post in model.post_fuse:
                post.conv.weight_g.fill_(m.contractive_gain)
    return model


def jiio_deq_config(p: JIIODEQParams, meta_training: bool = False) -> JIIODEQConfig:
    """The library settings of the inner loop, query solve and outer loss (spec B.2, B.4); ``meta_training``: the
    inner loop of a meta-step (``inner.train_iterations``, see :meth:`InnerParams.for_meta_training`)."""
    i, q = (p.inner.for_meta_training() if meta_training else p.inner), p.query
    return JIIODEQConfig(
        inner_iters=i.iterations, alpha=tuple(i.alpha), alpha_x_late=i.alpha_x_late, alpha_x_switch=i.alpha_x_switch,
        anderson_memory=i.anderson_memory, anderson_type=i.anderson_type, task_l2=i.task_l2,
        query_solver=q.solver, query_max_iter=q.max_iter, backward_max_iter=q.backward_max_iter,
        jac_reg=p.jac_reg, jac_reg_probes=p.jac_reg_probes, jac_reg_start=min(15, max(i.iterations - 1, 0)))


def conv_model(b: ConvBackboneParams, n_way: int) -> Conv4:
    """The baselines' 4-block conv backbone (spec B.6)."""
    return Conv4(n_way=n_way, in_channels=1, hidden=b.hidden, norm=b.norm)


def build_model(method: str, params: Any, n_way: int) -> nn.Module:
    return jiio_deq_model(params, n_way) if method == "jiio_deq" else conv_model(params.backbone, n_way)


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ----------------------------------------------------------------------------- meta-steps


def _surrogate(params: dict[str, Tensor], grads: dict[str, Tensor], value: Tensor) -> Tensor:
    """A scalar whose value is ``value`` and whose gradient w.r.t. ``params`` is ``grads``."""
    dot = tree_dot(params, {k: g.detach() for k, g in grads.items()})
    return value.detach() + dot - dot.detach()


def _train_sampler(job: TrainJob, splits: FewShotSplits) -> TaskSampler:
    d = job.data
    shots = job.params.train_shots if job.method == "reptile" else d.k_shot
    k_query = 0 if job.method == "reptile" else d.k_query
    return TaskSampler(splits.meta_train, d.n_way, shots, max(k_query, 0), seed=d.train_seed)


def step_function(job: TrainJob, model: nn.Module, sampler: TaskSampler, device: torch.device):
    """The method's meta-step ``step(s) -> StepOutput`` (spec B.4 for JIIO-DEQ, B.6 for the baselines)."""
    p, batch = job.params, job.params.meta_batch

    def tasks(step: int) -> tuple[Support, Support]:
        return _to(stack_tasks(sampler.tasks(step * batch, batch)), device)

    if job.method == "jiio_deq":
        config = jiio_deq_config(p, meta_training=True)

        def jiio_step(step: int) -> StepOutput:
            support, query = tasks(step)
            loss, stats = meta_loss(model, support, query, config)
            logs = {"query_ce": stats.query_ce, "query_accuracy": stats.query_accuracy,
                    "x_norm": stats.x_star.norm(dim=1).mean()}
            if stats.jac_loss is not None:
                logs["jac_loss"] = stats.jac_loss
            return StepOutput(loss, logs, health=stats.query_ce)

        return jiio_step
    loss_fn = module_loss(model)
    if job.method == "reptile":
        def reptile_step(step: int) -> StepOutput:
            (sx, sy), _ = tasks(step)
            params = module_params(model)
            g = torch.Generator().manual_seed(job.data.train_seed * 1_000_003 + step)
            pseudo = {k: torch.zeros_like(v) for k, v in params.items()}
            losses = []
            for t in range(sx.shape[0]):
                phi = reptile_adapt(loss_fn, params, (sx[t], sy[t]), steps=p.inner_steps, lr=p.inner_lr,
                                    betas=(0.0, 0.999), batch_size=p.inner_batch, generator=g)
                for k in pseudo:
                    pseudo[k] += (params[k].detach() - phi[k]) / sx.shape[0]
                with torch.no_grad():
                    losses.append(loss_fn(phi, sx[t], sy[t]))
            value = torch.stack(losses).mean()
            return StepOutput(_surrogate(params, pseudo, value), {"support_loss_after": value}, health=value)

        return reptile_step
    config: MAMLConfig | IMAMLConfig
    if job.method == "maml":
        config = MAMLConfig(inner_steps=p.inner_steps, inner_lr=p.inner_lr, first_order=p.first_order)
    else:
        config = IMAMLConfig(lam=p.lam, inner_steps=p.inner_steps, inner_lr=p.inner_lr, cg_steps=p.cg_steps)
    meta_gradient = maml_meta_gradient_batch if job.method == "maml" else imaml_meta_gradient_batch

    def gradient_step(step: int) -> StepOutput:
        support, query = tasks(step)
        params = module_params(model)
        out = meta_gradient(loss_fn, params, support, query, config)
        return StepOutput(_surrogate(params, out.grads, out.loss), {"query_loss": out.loss}, health=out.loss)

    return gradient_step


def loop_settings(job: TrainJob) -> tuple[LoopSettings, type[torch.optim.Optimizer]]:
    """Steps, outer learning rate and schedule of the method (spec B.4, B.6)."""
    p, loop = job.params, job.loop
    common = dict(steps=p.meta_steps, checkpoint_every=loop.checkpoint_every, log_every=loop.log_every)
    if job.method == "reptile":
        return LoopSettings(lr=p.outer_step_size, lr_schedule="linear", lr_min=p.outer_step_size_final,
                            **common), torch.optim.SGD
    schedule = p.lr_schedule if job.method == "jiio_deq" else "constant"
    return LoopSettings(lr=p.outer_lr, lr_schedule=schedule, **common), torch.optim.Adam


def meta_train(job: TrainJob, model: nn.Module, splits: FewShotSplits, out: str, partial: str, settings_hash: str,
               device: torch.device, progress: bool = True) -> dict[str, Any]:
    """Meta-train ``model`` for the method's ``meta_steps``, checkpointing to ``partial``; final checkpoint ``out``."""
    loop, optimizer_class = loop_settings(job)
    optimizer = optimizer_class(model.parameters(), lr=loop.lr)
    step = step_function(job, model, _train_sampler(job, splits), device)
    summary = {"method": job.method, "meta_steps": job.params.meta_steps, "meta_batch": job.params.meta_batch,
               "seed": job.loop.seed, "num_parameters": num_parameters(model)}
    return fit(key=f"jiio_meta/{job.method}", model=model, optimizer=optimizer, step_fn=step, loop=loop,
               out_path=out, partial_path=partial, settings_hash=settings_hash, device=device, summary=summary,
               checkpoint_meta={"method": job.method}, progress=progress)


# ----------------------------------------------------------------------------- evaluation (spec B.4, B.5)


def _accuracy(logits: Tensor, labels: Tensor) -> float:
    return float((logits.argmax(1) == labels).float().mean())


def adapted_query_logits(method: str, params: Any, model: nn.Module, support: Support, query_images: Tensor) -> Tensor:
    """A conv baseline's query logits after its test-time inner loop (spec B.6): MAML ``eval_inner_steps`` SGD
    steps, iMAML its proximal GD, Reptile ``eval_inner_steps`` Adam steps on batches of ``eval_inner_batch``."""
    loss_fn = module_loss(model)
    theta = {k: v.detach() for k, v in module_params(model).items()}
    if method == "maml":
        phi = maml_adapt(loss_fn, theta, support, steps=params.eval_inner_steps, lr=params.inner_lr)
    elif method == "imaml":
        phi = imaml_adapt(loss_fn, theta, support, lam=params.lam, steps=params.inner_steps, lr=params.inner_lr)
    else:
        phi = reptile_adapt(loss_fn, theta, support, steps=params.eval_inner_steps, lr=params.inner_lr,
                            betas=(0.0, 0.999), batch_size=params.eval_inner_batch,
                            generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return functional_call(model, {k: v.detach() for k, v in phi.items()}, (query_images,))


def interval(accuracies: Sequence[float]) -> dict[str, float]:
    """Mean accuracy (%) and the half-width of its 95 % normal interval over tasks, 1.96 sd / sqrt(n)."""
    n = len(accuracies)
    mean = statistics.fmean(accuracies)
    sd = statistics.stdev(accuracies) if n > 1 else 0.0
    return {"accuracy": 100 * mean, "ci95": 100 * 1.96 * sd / math.sqrt(n), "tasks": n}


def evaluate(job: TrainJob, model: nn.Module, splits: FewShotSplits, device: torch.device,
             progress: bool = True) -> dict[str, Any]:
    """Accuracy on ``eval.tasks`` held-out tasks (spec B.4): per task, then mean and 95 % interval."""
    sampler = test_sampler(job.data, splits, job.eval.seed)
    accuracies: list[float] = []
    model.eval()
    bar = tqdm(total=job.eval.tasks, desc=f"evaluate {job.method}", disable=not progress, unit="task")
    if job.method == "jiio_deq":
        config = jiio_deq_config(job.params)
        for start in range(0, job.eval.tasks, job.eval.batch_tasks):
            count = min(job.eval.batch_tasks, job.eval.tasks - start)
            support, query = _to(stack_tasks(sampler.tasks(start, count)), device)
            s_img, s_lab, t = flatten_tasks(*support)
            q_img, q_lab, _ = flatten_tasks(*query, what="query")
            with torch.no_grad():
                x = adapt_task_vectors(model, s_img, s_lab, t, config)
                logits = query_logits(model, q_img, x, config)
            hits = (logits.argmax(1) == q_lab).float().view(t, -1).mean(1)
            accuracies += hits.tolist()
            bar.update(count)
    else:
        for i in range(job.eval.tasks):
            task = sampler.task(i)
            support = (task.support_images.to(device), task.support_labels.to(device))
            logits = adapted_query_logits(job.method, job.params, model, support, task.query_images.to(device))
            accuracies.append(_accuracy(logits, task.query_labels.to(device)))
            bar.update(1)
    bar.close()
    return {**interval(accuracies), "per_task": accuracies, "eval_seed": job.eval.seed}


def trivial_answers(data: DataParams, splits: FewShotSplits, tasks: int, seed: int) -> dict[str, dict[str, float]]:
    """Answers that need no learning, on the same test tasks: chance (1 / N) and 1-nearest-neighbour in pixel space
    (each query image takes the label of the closest support image, Euclidean distance)."""
    sampler = test_sampler(data, splits, seed)
    nearest = []
    for i in range(tasks):
        task = sampler.task(i)
        d = torch.cdist(task.query_images.flatten(1), task.support_images.flatten(1))
        nearest.append(float((task.support_labels[d.argmin(1)] == task.query_labels).float().mean()))
    chance = [1.0 / data.n_way] * tasks
    return {"chance": {**interval(chance), "ci95": 0.0}, "pixel_1nn": interval(nearest)}

