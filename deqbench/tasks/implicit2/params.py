"""The ``implicit2`` block of params.yaml: its typed schema (spec section C).

The block declares, once: the image data (the paper's Fourier-features files or the embedded scikit-image stand-ins,
spec C.4 / C.7), the model hyper-parameters shared by every run (C.1), the solver and the truncated-Neumann backward
(C.2), the training recipe (C.3), and one entry per experiment: image generalisation (C.3, the paper's Table 1),
video (C.4, Table 2), the gradient-order sweep (Fig. 4), the cost comparison (README figure, C.6), the amortisation
check (C.2, IMP2-10) and the reconstruction pictures.  :mod:`.settings` validates its cross-references and hands
each job exactly the slice it reads.

Sizes are mappings from the paper's ``nL-dD`` tag to the tag this profile runs (e.g. ``1L-256D: 1L-64D`` on the
embedded profile, spec C.7), so every table row names both and the claims ledger reads rows by the paper's tag.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Mapping

from deqbench.experiments.settings import NonNegativeInt, PositiveFloat, PositiveInt

FilterName = Literal["fourier", "gabor", "siren"]
SetName = Literal["natural", "text"]
Order = NonNegativeInt | Literal["inf"]  # truncated-Neumann order T; "inf": the IFT solve (spec C.2)


@dataclass(frozen=True)
class ImageDataParams:
    """Where the images come from (spec C.4 / C.7) and at which resolution R (even; train/test = 25 % each)."""

    source: Literal["embedded", "paper"]
    resolution: PositiveInt  # R: images are R x R; train pixels [::2, ::2], test pixels [1::2, 1::2]
    images: PositiveInt  # the first N images of each set (embedded: 5 per set; paper files: 16)


@dataclass(frozen=True)
class ModelParams:
    """Hyper-parameters every image model shares (spec C.1); SIREN-like filters use input_scale / 2."""

    input_scale: PositiveFloat  # s (paper 128 at R = 512; embedded 32 = R / 4, spec C.7)
    norm: Literal["spectral", "none"]  # spectral on images (target 0.97), none on video
    target_norm: PositiveFloat
    power_iterations: PositiveInt  # per training step
    gabor_alpha: PositiveFloat  # Gamma(alpha / (n+1), 1) for the layer filters
    gabor_alpha_injection: PositiveFloat  # ... and for g_0 (the reference's quirk, kept)


@dataclass(frozen=True)
class SolverParams:
    """Forward solve and backward of the implicit models (spec C.2): forward iteration to relative tolerance 1e-2
    in at most 100 iterations; backward the truncated Neumann series of order ``neumann_order`` (T = 1 in every
    released config) or the IFT solve (``backward: ift``)."""

    method: Literal["forward", "anderson", "broyden"]
    max_iter: PositiveInt
    tol: PositiveFloat
    check_every: PositiveInt  # iterations between convergence checks (host reads) of the forward solve
    backward: Literal["neumann", "ift"]
    neumann_order: NonNegativeInt
    backward_max_iter: PositiveInt
    backward_tol: PositiveFloat


@dataclass(frozen=True)
class TrainParams:
    """The image recipe (spec C.3): Adam with constant lr, full batch on the train pixels, MSE on 2y - 1."""

    steps: PositiveInt  # paper 2000, embedded 300
    lr: PositiveFloat
    amortize_iters: NonNegativeInt  # F applications per step after the step-0 solve (C.2); 0: full solve every step
    log_every: PositiveInt


@dataclass(frozen=True)
class GeneralizationParams:
    """The image-generalisation table (spec C.3, the paper's Table 1): filters x sizes x {implicit, explicit} on
    every image of each set, a new model per image, implicit and explicit from the same seed (same init)."""

    sets: tuple[SetName, ...]
    filters: tuple[FilterName, ...]
    sizes: Mapping[str, str]  # the paper's tag (1L-256D, 1L-512D, 4L-256D) -> the tag run here
    seed: NonNegativeInt


@dataclass(frozen=True)
class VideoParams:
    """The video table (spec C.4, the paper's Table 2; stand-in C.7): no amortisation (a full solve from zero every
    step), no normalisation, gradient values clipped; PSNR mean and std over frames."""

    source: Literal["embedded", "paper"]
    frames: PositiveInt  # embedded: frames of the synthetic pan; paper: the first N frames of the video
    filters: tuple[FilterName, ...]
    sizes: Mapping[str, str]  # the paper's tag (1L-1024D, 1L-2048D, 4L-1024D) -> the tag run here
    input_scale: PositiveFloat
    norm: Literal["spectral", "none"]
    steps: PositiveInt  # paper 10k, embedded 500
    lr: PositiveFloat
    batch_size: PositiveInt | None  # random pixels per step (paper 65,536); null: every pixel (full batch)
    grad_clip_value: PositiveFloat | None  # clip_grad_value_ (paper 0.1); null: none
    eval_chunk: PositiveInt  # frames per evaluation solve
    seed: NonNegativeInt
    frame_size: PositiveInt = 64  # embedded pan: frame side in px (the paper video keeps the file's)
    pan_step: PositiveInt = 2  # embedded pan: px the window moves per frame, diagonally
    pan_downscale: PositiveInt = 128  # embedded pan: astronaut resized to this side first


@dataclass(frozen=True)
class GradientOrderParams:
    """Fig. 4 (spec C.2): training PSNR per step and wall clock for truncated-Neumann orders T, same seed and
    amortised forward; T = "inf" is the IFT solve (T = 0, Jacobian-free, is an extra point [I])."""

    source: Literal["embedded", "paper"]  # the original used camera (scikit-image, embedded) on every profile
    resolution: PositiveInt  # even
    set: SetName
    image: NonNegativeInt  # index in the set (embedded natural 0: camera)
    pixels: Literal["all", "train"]  # representation (all R^2 pixels) or the generalisation train pixels
    filter: FilterName
    size: str
    input_scale: PositiveFloat | None  # null: model.input_scale (the original used s = 256 at 512 px)
    orders: tuple[Order, ...]
    steps: PositiveInt
    seed: NonNegativeInt


@dataclass(frozen=True)
class CostParams:
    """Per-step time and activation memory, side by side in one process (the reference README's O(1) / O(L) /
    O(M) figure, spec C.6): explicit nL for each L, a DEQ with a full M-iteration solve per step for each M, and
    the amortised (Implicit)^2 model, all of width ``width`` on the train pixels of one image."""

    filter: FilterName
    width: PositiveInt
    layers: tuple[PositiveInt, ...]  # L of the explicit models
    solver_iterations: tuple[PositiveInt, ...]  # M of the full-solve DEQs (tolerance 0: exactly M iterations)
    repeats: PositiveInt
    warmup: NonNegativeInt
    seed: NonNegativeInt


@dataclass(frozen=True)
class AmortizationParams:
    """The amortisation check (spec C.2, IMP2-10): one model trained amortised and with a full solve every step
    from the same init; final test PSNR of both and the cached state's relative residual over training."""

    set: SetName
    images: tuple[NonNegativeInt, ...]  # indices in the set
    filter: FilterName
    size: str  # a paper tag of generalization.sizes
    warmup_steps: NonNegativeInt  # the residual check reads the steps after this one (IMP2-10: ~100)
    seed: NonNegativeInt


@dataclass(frozen=True)
class PicturesParams:
    """Reconstructions of a few images (test pixels): target, explicit, implicit and both error maps."""

    images: tuple[tuple[SetName, NonNegativeInt], ...]  # (set, index)
    filter: FilterName
    size: str  # a paper tag of generalization.sizes


@dataclass(frozen=True)
class Implicit2Params:
    """(Implicit)^2 (Huang, Bai, Kolter, NeurIPS 2021): every table and figure of spec section C."""

    data: ImageDataParams
    model: ModelParams
    solver: SolverParams
    train: TrainParams
    generalization: GeneralizationParams  # implicit2_generalization
    video: VideoParams  # implicit2_video
    gradient_order: GradientOrderParams  # implicit2_gradient_order
    cost: CostParams  # implicit2_cost
    amortization: AmortizationParams  # implicit2_amortization
    pictures: PicturesParams  # implicit2_pictures
