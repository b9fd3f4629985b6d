"""The ``jiio_generative`` block of params.yaml (JIIO paper sections 4.1-4.2, appendix C, Table 9).

:class:`GenerativeParams` declares the block; its JSON schema is generated from these dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal, Mapping

from deqbench.data.faces import IMAGE_DATASETS
from deqbench.experiments.params import MDEQParams, SolverParams
from deqbench.experiments.settings import (
    Above, Below, Min, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt,
)
from deqbench.models.mdeq_generator import MDEQGeneratorConfig

Selection = Literal["reference", "lowest_cost", "lowest_residual", "last"]


@dataclass(frozen=True)
class FacesParams:
    source: Literal[tuple(IMAGE_DATASETS)]  # type: ignore[valid-type]
    image_size: PositiveInt


@dataclass(frozen=True)
class GeneratorParams:
    """The decoder-only MDEQ generator (JIIO paper C.2, Table 9)."""

    channels: tuple[PositiveInt, ...]
    expansion: PositiveInt
    block_groups: PositiveInt
    fuse_groups: PositiveInt
    post_fuse_groups: PositiveInt
    latent_dim: PositiveInt
    head_channels: PositiveInt
    head_groups: PositiveInt
    weight_norm: bool

    def config(self, out_channels: int, image_size: int) -> MDEQGeneratorConfig:
        return MDEQGeneratorConfig(out_channels=out_channels, image_size=image_size, latent_dim=self.latent_dim,
                                   channels=self.channels, expansion=self.expansion, block_groups=self.block_groups,
                                   fuse_groups=self.fuse_groups, post_fuse_groups=self.post_fuse_groups,
                                   head_channels=self.head_channels, head_groups=self.head_groups,
                                   weight_norm=self.weight_norm)


@dataclass(frozen=True)
class ConvAEParams:
    """Ghosh et al. 2020's convolutional VAE / RAE / AE (the baselines of JIIO Tables 1 and 4)."""

    channels: tuple[PositiveInt, ...]
    norm: Literal["batch", "group"]
    kl_weight: NonNegativeFloat
    rae_latent_weight: NonNegativeFloat
    rae_decoder_weight: NonNegativeFloat
    groups: PositiveInt | None = None


@dataclass(frozen=True)
class JIIOParams:
    memory: PositiveInt
    anderson_kind: Literal["I", "II"]
    alpha: tuple[PositiveFloat, PositiveFloat, PositiveFloat]
    alpha_x_late: PositiveFloat  # alpha_x after alpha_x_switch iterations (only runs longer than the switch)
    alpha_x_switch: NonNegativeInt
    selection: Selection
    jac_probes: PositiveInt
    test_iterations: PositiveInt


@dataclass(frozen=True)
class TrainParams:
    lr: PositiveFloat
    lr_min: NonNegativeFloat
    batch_size: PositiveInt
    steps: PositiveInt  # generation (reconstruct) models
    inverse_steps: PositiveInt  # models trained on an inverse problem
    inverse_steps_by_model: Mapping[str, PositiveInt]  # per-model overrides of inverse_steps (stand-in budgets)
    jac_reg: Mapping[str, NonNegativeFloat]  # per JIIO model
    vae_kl_warmup_epochs: NonNegativeInt
    checkpoint_every: PositiveInt
    log_every: PositiveInt


@dataclass(frozen=True)
class AdamParams:
    steps: PositiveInt
    lr: PositiveFloat  # on the latent of an MDEQ decoder
    lr_explicit: PositiveFloat  # on the latent of an explicit conv decoder


@dataclass(frozen=True)
class DensityParams:
    """Post-hoc density on the training latents (JIIO C.2): aux MLP VAE, then a full-covariance GMM."""

    aux_vae: bool
    aux_latent_dim: PositiveInt
    hidden: PositiveInt
    depth: PositiveInt
    epochs: PositiveInt
    batch_size: PositiveInt
    lr: PositiveFloat
    kl_weight: NonNegativeFloat
    val_fraction: Annotated[float, Min(0), Below(1)]
    plateau_factor: Annotated[float, Above(0), Below(1)]
    plateau_patience: NonNegativeInt
    gmm_components: PositiveInt
    gmm_max_iter: PositiveInt
    gmm_tol: PositiveFloat
    seed: NonNegativeInt
    max_latents: PositiveInt
    rae_gmm_components: PositiveInt  # RAE: Ghosh et al.'s ex-post GMM on the codes


@dataclass(frozen=True)
class InpaintParams:
    kind: Literal["inpaint"]
    window: PositiveInt


@dataclass(frozen=True)
class DenoiseParams:
    kind: Literal["denoise"]
    sigma: PositiveFloat  # in the [-1, 1] model range


@dataclass(frozen=True)
class EvalParams:
    batch_size: PositiveInt
    limit: PositiveInt | None  # reconstruct the first N test images (null: all)
    generation_samples: Annotated[int, Min(2)]
    reference_psnr_batch: PositiveInt
    corruption_seed: NonNegativeInt
    fid_weights: str


@dataclass(frozen=True)
class TimingParams:
    batch_sizes: tuple[PositiveInt, ...]
    repeats: PositiveInt
    warmup: NonNegativeInt
    trace_batch: PositiveInt  # Figure 3's curves come from this batch size
    memory_batch: PositiveInt  # appendix C.6
    distinct_examples: PositiveInt  # Table 3 time per example over up to this many distinct test images (paper: 200)


@dataclass(frozen=True)
class AccelerationParams:
    """Figure 4 (appendix A.2): Broyden vs Anderson Type-I / Type-II inside JIIO on the MDEQ-VAE decoder."""

    images: PositiveInt  # the first N test images are reconstructed (in batches of eval.batch_size)


@dataclass(frozen=True)
class GenerativeParams:
    """JIIO paper sections 4.1-4.2, appendix A.2, C: generative modelling and inverse problems (Tables 1, 3, 4,
    Figures 3 and 4)."""

    dataset: FacesParams
    flip: bool  # random horizontal flips in training (C.1)
    generator: GeneratorParams
    encoder: MDEQParams  # MDEQ-VAE / MDEQ-AE encoder
    conv_ae: ConvAEParams
    solver: SolverParams  # decoder solves of MDEQ-VAE / MDEQ-AE and of the Adam baseline
    jiio: JIIOParams
    train: TrainParams
    adam: AdamParams
    density: DensityParams
    problems: Mapping[str, InpaintParams | DenoiseParams]
    eval: EvalParams
    timing: TimingParams
    acceleration: AccelerationParams
