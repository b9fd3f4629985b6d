"""The models of the ``jiio_generative`` task, the methods its tables use, and what each of its jobs reads.

The params block is declared in :mod:`.params`.  :data:`MODELS` lists the
trainable models once (Snakemake's wildcards and the task read it).  :class:`GenerativeSettings` gives each job
exactly the settings it uses: the architecture of the model it loads, the method that reconstructs with it
(JIIO, Adam on the latent, or the encoder), and the evaluation or timing options.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from deqbench.data.inverse import InverseProblem
from deqbench.experiments.config import ConfigError, ProfileInfo
from deqbench.experiments.params import MDEQParams, SolverParams
from deqbench.experiments.settings import to_plain
from deqbench.metrics.density import DensityConfig
from deqbench.models.conv_ae import ConvAEConfig
from deqbench.tasks.jiio_generative.params import (
    ConvAEParams, FacesParams, GenerativeParams, GeneratorParams, InpaintParams, Selection, TimingParams,
)


@dataclass(frozen=True)
class ModelKind:
    """A trainable model: its family, the problems it trains on and (JIIO) its inner-loop iterations."""

    name: str
    family: Literal["jiio", "mdeq_autoencoder", "conv_autoencoder"]
    trains_on: Literal["any", "reconstruct", "inverse"]
    jiio_iterations: int | None = None


MODELS: dict[str, ModelKind] = {m.name: m for m in (
    ModelKind("jiio40", "jiio", "any", 40),
    ModelKind("jiio100", "jiio", "any", 100),
    ModelKind("mdeq_vae", "mdeq_autoencoder", "reconstruct"),
    ModelKind("mdeq_ae", "mdeq_autoencoder", "inverse"),
    ModelKind("vae", "conv_autoencoder", "reconstruct"),
    ModelKind("rae", "conv_autoencoder", "reconstruct"),
    ModelKind("ae", "conv_autoencoder", "inverse"),
)}
RECONSTRUCT = "reconstruct"


# ----------------------------------------------------------------------------- what each job reads


@dataclass(frozen=True)
class Architecture:
    """Everything that builds one model (the generator, and for autoencoders the encoder / conv net)."""

    kind: str
    image_size: int
    latent_dim: int
    generator: GeneratorParams | None
    encoder: MDEQParams | None
    conv_ae: ConvAEParams | None

    def conv_config(self, channels: int) -> ConvAEConfig:
        c = self.conv_ae
        return ConvAEConfig(kind=self.kind, image_size=self.image_size, in_channels=channels,
                            latent_dim=self.latent_dim, channels=c.channels, norm=c.norm, kl_weight=c.kl_weight,
                            rae_latent_weight=c.rae_latent_weight, rae_decoder_weight=c.rae_decoder_weight,
                            **({"groups": c.groups} if c.groups is not None else {}))


@dataclass(frozen=True)
class JIIOSolve:
    """JIIO on the latent for ``iterations`` steps (appendix C.3)."""

    iterations: int
    memory: int
    anderson_kind: str
    alpha: tuple[float, float, float]
    alpha_x_late: float | None
    alpha_x_switch: int | None
    selection: Selection
    cuda_graph: str


@dataclass(frozen=True)
class AdamSolve:
    """Adam on the latent (eq. 21); ``solver`` is the DEQ decoder's (None: an explicit decoder)."""

    steps: int
    lr: float
    solver: SolverParams | None
    cuda_graph: str


@dataclass(frozen=True)
class EncoderSolve:
    """Reconstruction through the encoder; ``solver`` for MDEQ autoencoders' decoder solve."""

    solver: SolverParams | None
    cuda_graph: str


@dataclass(frozen=True)
class TrivialAnswer:
    """A Table 4 reference row that uses no trained network: the observation itself, the mean training image, or
    the PCA basis of the training images with the generator's latent size, fitted to the observed pixels."""

    kind: Literal["corrupted_input", "mean_image", "pca_projection"]
    components: int = 0  # pca_projection: principal directions kept (the generator's latent_dim)


Method = JIIOSolve | AdamSolve | EncoderSolve | TrivialAnswer


@dataclass(frozen=True)
class Problem:
    name: str
    kind: Literal["none", "inpaint", "denoise"]
    window: int = 20
    sigma: float = 0.0

    def inverse_problem(self) -> InverseProblem:
        return InverseProblem(kind=self.kind, window=self.window, sigma=self.sigma)


@dataclass(frozen=True)
class PrepareJob:
    dataset: FacesParams
    data_root: str


@dataclass(frozen=True)
class TrainJob:
    arch: Architecture
    problem: Problem
    flip: bool
    lr: float
    lr_min: float
    batch_size: int
    steps: int
    checkpoint_every: int
    log_every: int
    solver: SolverParams | None  # MDEQ autoencoders' solves; supervised JIIO models' IFT backward
    jiio: JIIOSolve | None  # JIIO models: the training inner loop
    jac_reg: float
    jac_probes: int
    kl_warmup_epochs: int | None  # MDEQ-VAE
    cuda_graph: str
    device: str


@dataclass(frozen=True)
class DensityJob:
    arch: Architecture
    latents: JIIOSolve | None  # JIIO x* of the training images (None: the RAE encoder's codes)
    config: DensityConfig  # what is fitted (RAE: Ghosh et al.'s ex-post GMM on the codes, no aux VAE)
    max_latents: int
    batch_size: int
    device: str


@dataclass(frozen=True)
class FIDSettings:
    """Table 1's FID: the Inception weights file and how many images to generate."""

    weights: str
    generation_samples: int


@dataclass(frozen=True)
class CellJob:
    """One table cell: reconstruct (or solve an inverse problem on) the test images with ``method``."""

    row: str
    arch: Architecture | None  # None: a trivial answer, no model
    problem: Problem
    method: Method
    sampling: Literal["prior", "density", "none"]
    decoder_solver: SolverParams | None  # decoding sampled latents with a DEQ decoder
    batch_size: int
    limit: int | None
    reference_psnr_batch: int
    corruption_seed: int | None  # inverse problems only
    fid: FIDSettings | None  # Table 1 cells only
    device: str


@dataclass(frozen=True)
class TimingJob:
    arch: Architecture
    adam: AdamSolve
    jiio40: JIIOSolve
    jiio_test: JIIOSolve
    timing: TimingParams
    eval_limit: int | None
    device: str


@dataclass(frozen=True)
class AccelerationJob:
    """Figure 4 (appendix A.2): JIIO with each accelerator on the decoder of ``arch`` (the MDEQ-VAE); every
    accelerator gets ``jiio``'s iterations, step sizes and memory."""

    arch: Architecture
    jiio: JIIOSolve
    images: int
    batch_size: int
    device: str


@dataclass(frozen=True)
class TableJob:
    table: str
    problems: tuple[str, ...]
    profile: str
    scale: str


@dataclass(frozen=True)
class GenerativeSettings:
    info: ProfileInfo
    params: GenerativeParams

    def model_kind(self, name: str) -> ModelKind:
        if name not in MODELS:
            raise ConfigError(f"unknown model {name!r}; known: {list(MODELS)}")
        return MODELS[name]

    def problem(self, name: str) -> Problem:
        if name == RECONSTRUCT:
            return Problem(RECONSTRUCT, "none")
        if name not in self.params.problems:
            raise ConfigError(f"unknown problem {name!r}; jiio_generative.problems of profile {self.info.name!r} "
                              f"has {[RECONSTRUCT, *self.params.problems]}")
        spec = self.params.problems[name]
        if isinstance(spec, InpaintParams):
            return Problem(name, "inpaint", window=spec.window)
        return Problem(name, "denoise", sigma=spec.sigma)

    def architecture(self, model: str) -> Architecture:
        kind, p = self.model_kind(model), self.params
        return Architecture(model, p.dataset.image_size, p.generator.latent_dim,
                            p.generator if kind.family != "conv_autoencoder" else None,
                            p.encoder if kind.family == "mdeq_autoencoder" else None,
                            p.conv_ae if kind.family == "conv_autoencoder" else None)

    def jiio(self, iterations: int) -> JIIOSolve:
        """JIIO settings for ``iterations`` steps; alpha_x drops after the switch only in longer runs."""
        j = self.params.jiio
        late = j.alpha_x_late if iterations > j.alpha_x_switch else None
        return JIIOSolve(iterations, j.memory, j.anderson_kind, j.alpha, late,
                         j.alpha_x_switch if late is not None else None, j.selection, self.info.cuda_graph)

    def adam(self, model: str) -> AdamSolve:
        a = self.params.adam
        if self.model_kind(model).family == "conv_autoencoder":
            return AdamSolve(a.steps, a.lr_explicit, None, self.info.cuda_graph)
        return AdamSolve(a.steps, a.lr, self.params.solver, self.info.cuda_graph)

    def encoder(self, model: str) -> EncoderSolve:
        deq = self.model_kind(model).family == "mdeq_autoencoder"
        return EncoderSolve(self.params.solver if deq else None, self.info.cuda_graph)

    def prepare(self) -> PrepareJob:
        return PrepareJob(self.params.dataset, self.info.data_root)

    def train(self, model: str, problem: str) -> TrainJob:
        kind, prob, t = self.model_kind(model), self.problem(problem), self.params.train
        if kind.trains_on == "reconstruct" and prob.kind != "none":
            raise ConfigError(f"{model} is an unsupervised generative model: train it with --problem {RECONSTRUCT}")
        if kind.trains_on == "inverse" and prob.kind == "none":
            raise ConfigError(f"{model} is a supervised inverse-problem model (eq. 23): give an inverse problem")
        jiio = kind.family == "jiio"
        unknown = sorted(set(t.inverse_steps_by_model) - set(MODELS))
        if unknown:
            raise ConfigError(f"profiles.{self.info.name}.jiio_generative.train.inverse_steps_by_model: unknown "
                              f"model(s) {unknown}; known: {list(MODELS)}")
        if jiio and model not in t.jac_reg:
            raise ConfigError(f"profiles.{self.info.name}.jiio_generative.train.jac_reg: no entry for {model!r}")
        return TrainJob(self.architecture(model), prob, self.params.flip, t.lr, t.lr_min, t.batch_size,
                        t.steps if prob.kind == "none" else t.inverse_steps_by_model.get(model, t.inverse_steps),
                        t.checkpoint_every, t.log_every,
                        self.params.solver if kind.family == "mdeq_autoencoder" or (jiio and prob.kind != "none") else None,
                        self.jiio(kind.jiio_iterations) if jiio else None, t.jac_reg.get(model, 0.0),
                        self.params.jiio.jac_probes, t.vae_kl_warmup_epochs if model == "mdeq_vae" else None,
                        self.info.cuda_graph, self.info.device)

    def density(self, model: str) -> DensityJob:
        kind, d = self.model_kind(model), self.params.density
        if kind.family == "jiio":
            fields = {k: v for k, v in to_plain(d).items() if k not in ("max_latents", "rae_gmm_components")}
            latents, config = self.jiio(kind.jiio_iterations), DensityConfig(**fields)
        else:
            latents, config = None, DensityConfig(aux_vae=False, gmm_components=d.rae_gmm_components,
                                                  gmm_max_iter=d.gmm_max_iter, gmm_tol=d.gmm_tol, seed=d.seed)
        return DensityJob(self.architecture(model), latents, config, d.max_latents, self.params.eval.batch_size,
                          self.info.device)

    def cell(self, row: str, model: str | None, method: str, problem: str, sampling: str) -> CellJob:
        """A table cell: ``method`` is ``jiio`` (test iterations), ``adam``, ``encoder`` or (no model) a trivial
        answer, ``corrupted_input``, ``mean_image`` or ``pca_projection``."""
        e, prob = self.params.eval, self.problem(problem)
        if model is None:
            answer = TrivialAnswer(method, self.params.generator.latent_dim if method == "pca_projection" else 0)  # type: ignore[arg-type]
            return CellJob(row, None, prob, answer, "none", None, e.batch_size, e.limit,
                           e.reference_psnr_batch, e.corruption_seed if prob.kind != "none" else None, None,
                           self.info.device)
        if method == "jiio":
            solve: Method = self.jiio(self.params.jiio.test_iterations)
        elif method == "adam":
            solve = self.adam(model)
        else:
            solve = self.encoder(model)
        decoder = self.params.solver if sampling != "none" and self.model_kind(model).family != "conv_autoencoder" else None
        fid = FIDSettings(e.fid_weights, e.generation_samples) if prob.kind == "none" else None
        return CellJob(row, self.architecture(model), prob, solve, sampling, decoder, e.batch_size, e.limit,
                       e.reference_psnr_batch, e.corruption_seed if prob.kind != "none" else None, fid,
                       self.info.device)

    def timing(self) -> TimingJob:
        return TimingJob(self.architecture("jiio40"), self.adam("jiio40"), self.jiio(40),
                         self.jiio(self.params.jiio.test_iterations), self.params.timing, self.params.eval.limit,
                         self.info.device)

    def acceleration(self) -> AccelerationJob:
        return AccelerationJob(self.architecture("mdeq_vae"), self.jiio(self.params.jiio.test_iterations),
                               self.params.acceleration.images, self.params.eval.batch_size, self.info.device)

    def table(self, name: str) -> TableJob:
        return TableJob(name, tuple(self.params.problems) if name == "table4" else (), self.info.name,
                        self.info.scale)


def build_settings(info: ProfileInfo, params: GenerativeParams) -> GenerativeSettings:
    if params.timing.trace_batch not in params.timing.batch_sizes:
        raise ConfigError(f"profiles.{info.name}.jiio_generative.timing.trace_batch={params.timing.trace_batch} is "
                          f"not in timing.batch_sizes {list(params.timing.batch_sizes)}")
    for name in params.problems:
        if name == RECONSTRUCT:
            raise ConfigError(f"profiles.{info.name}.jiio_generative.problems: {RECONSTRUCT!r} is reserved")
    return GenerativeSettings(info, params)
