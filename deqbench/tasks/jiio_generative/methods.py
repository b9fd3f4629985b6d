"""Models and latent-optimisation methods of the JIIO generative experiments (sections 4.1-4.2, appendix C).

* building any of the trainable models from its :class:`Architecture`;
* JIIO on the latent (eqs. 10-11 / 20 / 22), Adam on the latent of a DEQ or explicit decoder (eq. 21) and
  reconstruction through an encoder, dispatched on the type of the method's settings (:func:`reconstruct`);
* decoding sampled latents (:func:`decode`) and one training step per model family (:data:`TRAINING_STEPS`).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import torch
from torch import Tensor, nn

from deqbench.inputopt.baselines import adam
from deqbench.inputopt.costs import masked_sq_error
from deqbench.inputopt.jiio import JIIOResult, jiio
from deqbench.experiments.trainer import StepOutput
from deqbench.models.conv_ae import ConvAutoencoder
from deqbench.models.mdeq import injection_cached, mdeq_layer
from deqbench.models.mdeq_generator import MDEQAutoencoder, MDEQGenerator
from deqbench.tasks.jiio_generative.settings import (
    MODELS, AdamSolve, Architecture, EncoderSolve, JIIOSolve, TrainJob,
)


def build_model(arch: Architecture, channels: int) -> nn.Module:
    """The model ``arch.kind`` for images with ``channels`` channels."""
    family = MODELS[arch.kind].family
    if family == "conv_autoencoder":
        return ConvAutoencoder(arch.conv_config(channels))
    generator = arch.generator.config(channels, arch.image_size)
    if family == "jiio":
        return MDEQGenerator(generator)
    kind = "vae" if arch.kind == "mdeq_vae" else "ae"
    encoder = arch.encoder.config(channels, arch.latent_dim * (2 if kind == "vae" else 1))
    # MDEQ-AE standardises its code (our choice, recorded in the model description): see MDEQAutoencoder.
    return MDEQAutoencoder(kind, encoder, generator, code_norm=kind == "ae")


def generator_of(model: nn.Module) -> MDEQGenerator:
    """The MDEQ generator of a JIIO model or the decoder of an MDEQ autoencoder."""
    return model.decoder if isinstance(model, MDEQAutoencoder) else model


def to_model_range(images_uint8: Tensor, device: torch.device) -> Tensor:
    return images_uint8.to(device=device, dtype=torch.float32).div_(127.5).sub_(1.0)


# ----------------------------------------------------------------------------- latent optimisation


def jiio_reconstruct(gen: MDEQGenerator, observed: Tensor, mask: Tensor | None, solve: JIIOSolve,
                     jac_probes: int = 0, backward: str = "none",
                     backward_options: dict[str, Any] | None = None,
                     history_dtype: str | None = None, method: str = "anderson",
                     solver_options: dict[str, Any] | None = None) -> JIIOResult:
    """JIIO on ``min_{x,z: z=f(z,x)} ||mask (h(z) - observed)||^2`` (eq. 20 / 22) from z = 0, x = 0;
    ``history_dtype="bfloat16"`` keeps the Anderson history in bf16 (appendix C.6 memory); ``method`` and
    ``solver_options`` replace the settings' Anderson accelerator (Figure 4 compares accelerators)."""
    gen.prepare()
    b = observed.shape[0]
    options: dict[str, Any] = {}
    if solve.alpha_x_late is not None:
        options.update(alpha_x_late=solve.alpha_x_late, alpha_x_switch=solve.alpha_x_switch)
    if jac_probes:
        options.update(jac_reg="trajectory", jac_reg_probes=jac_probes)
    if backward_options is not None:
        options["backward_options"] = backward_options
    return jiio(gen.layer, gen.cost_fn(observed, mask), gen.z0(b, observed), observed.new_zeros(b, gen.config.latent_dim),
                max_iter=solve.iterations, alpha=solve.alpha, method=method,
                solver_options=solver_options if solver_options is not None else
                {"m": solve.memory, "kind": solve.anderson_kind, "history_dtype": history_dtype},
                selection=solve.selection,
                cuda_graph=solve.cuda_graph, backward=backward, **options)


def adam_reconstruct_deq(gen: MDEQGenerator, observed: Tensor, mask: Tensor | None, solve: AdamSolve):
    """The Adam baseline on the MDEQ decoder's latent (eq. 21): each step a forward solve and an IFT backward."""
    gen.prepare()
    b = observed.shape[0]
    # The latent injection (31.7 M parameters at paper size) is computed once per solve, as a plain DEQ decoder does.
    layer = injection_cached(gen.inject, lambda z, injection: mdeq_layer(gen.blocks, gen.fuse, gen.post_fuse, z,
                                                                         injection))
    return adam(layer, gen.cost_fn(observed, mask), gen.z0(b, observed),
                observed.new_zeros(b, gen.config.latent_dim), steps=solve.steps, lr=solve.lr,
                forward=solve.solver.forward_kwargs(solve.cuda_graph),
                backward_options=solve.solver.backward_options(solve.cuda_graph))


def adam_reconstruct_explicit(model: ConvAutoencoder, observed: Tensor, mask: Tensor | None,
                              solve: AdamSolve) -> tuple[Tensor, Tensor]:
    """Adam on the latent of an explicit decoder (eq. 21, "VAE (Adam)"); the lowest-cost images and the cost trace."""
    b = observed.shape[0]
    latent = observed.new_zeros(b, model.config.latent_dim, requires_grad=True)
    opt = torch.optim.Adam([latent], lr=solve.lr)
    best_cost = observed.new_full((b,), math.inf)
    best = observed.new_zeros(observed.shape)
    trace = observed.new_zeros(b, solve.steps)
    for k in range(solve.steps):
        with torch.enable_grad():
            images = model.decode(latent)
            cost = masked_sq_error(images, observed, mask)
            (latent.grad,) = torch.autograd.grad(cost.sum(), latent)  # only the latent: no grads on the decoder
        c = cost.detach()
        trace[:, k] = c
        better = c < best_cost
        torch.where(better, c, best_cost, out=best_cost)
        torch.where(better.view(b, 1, 1, 1), images.detach(), best, out=best)
        opt.step()
    return best, trace


@functools.singledispatch
def reconstruct(solve: Any, model: nn.Module, observed: Tensor, mask: Tensor | None) -> Tensor:
    """The images a method recovers from ``observed`` (masked by ``mask`` for inpainting), no gradients."""
    raise TypeError(f"no reconstruction method for {type(solve).__name__}")


@reconstruct.register
def _(solve: JIIOSolve, model: nn.Module, observed: Tensor, mask: Tensor | None) -> Tensor:
    gen = generator_of(model)
    with torch.no_grad():
        return gen.output(jiio_reconstruct(gen, observed, mask, solve).z)


@reconstruct.register
def _(solve: AdamSolve, model: nn.Module, observed: Tensor, mask: Tensor | None) -> Tensor:
    if solve.solver is None:
        return adam_reconstruct_explicit(model, observed, mask, solve)[0]
    gen = generator_of(model)
    with torch.no_grad():
        return gen.output(adam_reconstruct_deq(gen, observed, mask, solve).z)


@reconstruct.register
def _(solve: EncoderSolve, model: nn.Module, observed: Tensor, mask: Tensor | None) -> Tensor:
    with torch.no_grad():
        if solve.solver is None:
            return model(observed)
        model.decoder.prepare()
        return model.reconstruct(observed, solve.solver.forward_kwargs())


def pca_basis(train: Tensor, components: int) -> tuple[Tensor, Tensor]:
    """Mean image (1, C, H, W) and the top ``components`` principal directions (k, C*H*W, orthonormal rows) of the
    training images ``train`` (model range): the best linear decoder with a latent of that size (Eckart-Young)."""
    flat = train.reshape(train.shape[0], -1).double()
    mean = flat.mean(0, keepdim=True)
    _, _, vt = torch.linalg.svd(flat - mean, full_matrices=False)
    k = min(components, vt.shape[0])
    return mean.to(train.dtype).view(1, *train.shape[1:]), vt[:k].to(train.dtype)


def pca_reconstruct(mean: Tensor, basis: Tensor, observed: Tensor, mask: Tensor | None) -> Tensor:
    """The linear analogue of eq. 21: the code c minimising ||M (mean + c V - y)||^2 over the observed pixels
    (all pixels when ``mask`` is None), decoded as mean + c V; a tiny ridge keeps windows without data solvable."""
    b = observed.shape[0]
    resid = (observed - mean).reshape(b, -1).double()
    v = basis.double()
    m = torch.ones_like(resid) if mask is None else mask.expand_as(observed).reshape(b, -1).double()
    gram = torch.einsum("kd,bd,jd->bkj", v, m, v)
    gram = gram + 1e-6 * torch.eye(v.shape[0], dtype=gram.dtype, device=gram.device)
    code = torch.linalg.solve(gram, torch.einsum("kd,bd->bk", v, m * resid))
    return (mean.reshape(1, -1).double() + code @ v).to(observed.dtype).view_as(observed)


def decode(model: nn.Module, latents: Tensor, solver: Any) -> Tensor:
    """Images of sampled latents: the explicit decoder, or a forward solve of the MDEQ generator / decoder."""
    with torch.no_grad():
        if isinstance(model, ConvAutoencoder):
            return model.decode(latents)
        gen = generator_of(model)
        gen.prepare()
        return gen(latents, solver.forward_kwargs())


# ----------------------------------------------------------------------------- training steps


def _jiio_step(model: MDEQGenerator, job: TrainJob, clean: Tensor, observed: Tensor, mask: Tensor | None,
               kl_scale: float) -> StepOutput:
    """Eq. 20 (reconstruct, gradient by eq. 19) or eq. 24 (inverse problem: IFT adjoint over z, x* constant)."""
    supervised = job.problem.kind != "none"
    backward_options = job.solver.backward_options(job.cuda_graph) if supervised else None
    result = jiio_reconstruct(model, observed, mask, job.jiio, job.jac_probes if job.jac_reg > 0 else 0,
                              backward="ift" if supervised else "mu", backward_options=backward_options)
    mse = (model.output(result.z) - clean).pow(2).mean()
    loss = mse + job.jac_reg * result.jac_loss if result.jac_loss is not None else mse
    return StepOutput(loss, {"mse": mse.detach(), "residual": result.residual.mean()}, result.residual)


def _mdeq_autoencoder_step(model: MDEQAutoencoder, job: TrainJob, clean: Tensor, observed: Tensor,
                           mask: Tensor | None, kl_scale: float) -> StepOutput:
    model.decoder.prepare()
    loss, parts = model.loss(observed, clean, kl_scale=kl_scale, forward=job.solver.forward_kwargs(),
                             backward_options=job.solver.backward_options(job.cuda_graph))
    return StepOutput(loss, parts, loss.detach())


def _conv_autoencoder_step(model: ConvAutoencoder, job: TrainJob, clean: Tensor, observed: Tensor,
                           mask: Tensor | None, kl_scale: float) -> StepOutput:
    loss, parts = model.loss(observed, clean)
    return StepOutput(loss, {"mse": parts["recon"].detach() / math.prod(clean.shape[1:])}, loss.detach())


TRAINING_STEPS: dict[str, Callable[..., StepOutput]] = {
    "jiio": _jiio_step,
    "mdeq_autoencoder": _mdeq_autoencoder_step,
    "conv_autoencoder": _conv_autoencoder_step,
}
