"""The ``moptqs`` block of params.yaml and the typed settings each of its jobs reads.

The block declares, once: the datasets (real or embedded stand-ins), the named models (every row of every
MOptEqs table is one of them), the solver, the training recipe, and which models each table and figure shows.
:class:`MOptEqsSettings` hands each stage exactly the slice it reads, which is what the job's rerun hash covers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal, Mapping

from deqbench.experiments.config import ConfigError, ProfileInfo
from deqbench.experiments.params import MDEQParams, SolverParams
from deqbench.experiments.prepared import DataParams, PrepareJob
from deqbench.experiments.settings import (
    Above, Max, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt,
)
from deqbench.models.moptqs import MOptEqsConfig

Fraction = Annotated[float, Above(0), Max(1)]


@dataclass(frozen=True)
class ModelParams:
    """One model of the MOptEqs family (``deqbench.models.moptqs``); the paper's name for it is ``label``.

    Fields the paper leaves open carry the spec's defaults (section A, AMBIG-A1...A12) and are labelled in the
    tables: the P scaling, the normalisation of W, the update order, the single-view head width.
    """

    label: str  # the row name the paper uses, e.g. "POptEqs(sum)"
    layout: Literal["single_view", "multi_scale"]
    branches: PositiveInt
    channels: PositiveInt  # C per branch
    coupling: Literal["none", "sum", "conv", "hhd"]  # Parallel-OptEqs, POptEqs(sum / conv), MOptEqs (HH&D)
    hhd_terms: Literal["full", "no_d", "no_h"] = "full"  # Table 3 ablations ("-D,H" is coupling none)
    lam: NonNegativeFloat = 0.01  # lambda of the diversity term (eq. 5)
    pe_eps: NonNegativeFloat = 0.0  # PE strength epsilon (0: no PE)
    pe_at_eval: bool = False  # AMBIG-A6: PE in training only (default) or also at test time
    p_scale: Literal["adjoint", "isometric", "unit"] = "adjoint"  # AMBIG-A1
    wnorm: Literal["spectral", "weight", "none"] = "spectral"  # AMBIG-A3
    zeta: Fraction = 0.9  # spectral: ||W_i||_2 = zeta
    update: Literal["jacobi", "gauss_seidel"] = "jacobi"  # AMBIG-A5
    head_hidden: NonNegativeInt | None = None  # hidden width of the head (AMBIG-A2; null: 22 single view, 0 multi)
    stem_downsample: NonNegativeInt = 0  # stride-2 stem layers (ImageNette)
    gradient: Literal["implicit", "one_step"] = "implicit"  # appendix A.11: one-step gradient

    def config(self, in_channels: int, num_classes: int, image_size: int) -> MOptEqsConfig:
        """The model's constructor config for data of this shape."""
        return MOptEqsConfig(in_channels=in_channels, num_classes=num_classes, image_size=image_size,
                             layout=self.layout, branches=self.branches, channels=self.channels,
                             coupling=self.coupling, hhd_terms=self.hhd_terms, lam=self.lam, pe_eps=self.pe_eps,
                             pe_at_eval=self.pe_at_eval, p_scale=self.p_scale, wnorm=self.wnorm, zeta=self.zeta,
                             update=self.update, head_hidden=self.head_hidden,
                             stem_downsample=self.stem_downsample)


@dataclass(frozen=True)
class BaselineParams(MDEQParams):
    """An MDEQ baseline (``deqbench.models.mdeq``, GroupNorm, no BatchNorm), sized by its channel counts."""

    label: str = "MDEQ"
    # Jacobian regularisation of the MDEQ's training loss (JIIO paper appendix C.4, Bai et al. 2021; Hutchinson
    # estimate with one probe): the narrow embedded MDEQs do not converge without it.  0: none, as MDEQ.
    jac_reg: NonNegativeFloat = 0.0
    # MDEQ's own optimiser (the paper's small MDEQ changes "only the channel number ... without changing the training
    # settings" of MDEQ): Adam with a cosine schedule; null: the moptqs.train recipe (SGD, multi-step).
    adam_lr: PositiveFloat | None = None


AnyModel = ModelParams | BaselineParams


@dataclass(frozen=True)
class TrainParams:
    """The paper's recipe (appendix A.6): SGD 0.1, divided by 10 at epochs 100 / 150 / 175 of 200, batch 128."""

    lr: PositiveFloat
    momentum: NonNegativeFloat  # AMBIG-A9: not stated; 0.9
    nesterov: bool
    weight_decay: Mapping[str, NonNegativeFloat]  # per dataset
    batch_size: Mapping[str, PositiveInt]  # per dataset
    epochs: Mapping[str, PositiveInt]  # per dataset
    lr_milestones: tuple[Fraction, ...]  # fractions of the run
    lr_gamma: Fraction
    augment: bool  # random crop with 4-pixel zero padding and horizontal flip (AMBIG-A9)
    max_steps: PositiveInt | None  # cap on optimisation steps (null: full epochs)
    checkpoint_every: PositiveInt
    log_every: PositiveInt
    one_step_iterations: PositiveInt  # appendix A.11 "one step" training: forward iterations K (AMBIG-A8)


@dataclass(frozen=True)
class EvalParams:
    batch_size: PositiveInt
    limit: PositiveInt | None  # evaluate on the first N test images (null: all)
    max_iter: PositiveInt  # forward iterations at evaluation (spec A.6: 50)


@dataclass(frozen=True)
class TableParams:
    """A table's rows: per dataset, the declared models (keys of ``models`` or ``baselines``), in order."""

    rows: Mapping[str, tuple[str, ...]]


@dataclass(frozen=True)
class ConvergenceParams:
    """Figure 4 (appendix A.7): the relative residual per Anderson iteration of trained models, one test batch."""

    dataset: str
    models: tuple[str, ...]
    iterations: PositiveInt
    batch_size: PositiveInt
    seed: NonNegativeInt  # whose checkpoint is traced


@dataclass(frozen=True)
class Figure2Params:
    """Figure 2: Average D / H of trained MOptEqs vs POptEqs over test samples, and a channel-correlation map."""

    dataset: str
    moptqs: str  # the MOptEqs model (a key of models)
    poptqs: str  # the POptEqs model it is compared with
    samples: PositiveInt  # the paper: 100
    max_iter: PositiveInt
    seed: NonNegativeInt  # whose checkpoints


@dataclass(frozen=True)
class Figure3aParams:
    """Figure 3(a): test accuracy under reconstructed vs random feature perturbations of a one-branch MOptEqs."""

    dataset: str
    model: str
    eps: tuple[NonNegativeFloat, ...]  # the paper: up to 0.3
    trials: PositiveInt  # random draws per eps (the paper: 5)
    limit: PositiveInt | None  # test images (null: all)
    seed: NonNegativeInt  # whose checkpoint; also seeds the random draws


@dataclass(frozen=True)
class MOptEqsParams:
    """MOptEqs (Li, Wang, Xie, Lin, ICLR 2022): every table and figure of the paper."""

    datasets: Mapping[str, DataParams]  # cifar10, cifar100, imagenette
    models: Mapping[str, ModelParams]
    baselines: Mapping[str, BaselineParams]  # MDEQ baselines of Tables 1(b) and 2
    solver: SolverParams  # forward solve in training and the IFT adjoint solve
    train: TrainParams
    eval: EvalParams
    tables: Mapping[str, TableParams]  # moptqs_table1a, moptqs_table1b, moptqs_table2, moptqs_table3
    convergence: ConvergenceParams  # moptqs_figure4
    figure2: Figure2Params  # moptqs_figure2
    figure3a: Figure3aParams  # moptqs_figure3a


# ----------------------------------------------------------------------------- what each job reads


@dataclass(frozen=True)
class TrainJob:
    dataset: str
    model_name: str
    model: AnyModel
    solver: SolverParams
    device: str
    lr: float
    momentum: float
    nesterov: bool
    weight_decay: float
    batch_size: int
    epochs: int
    lr_milestones: tuple[float, ...]
    lr_gamma: float
    augment: bool
    max_steps: int | None
    checkpoint_every: int
    log_every: int
    one_step_iterations: int


@dataclass(frozen=True)
class EvaluateJob:
    dataset: str
    model_name: str
    model: AnyModel
    solver: SolverParams
    eval: EvalParams
    device: str


@dataclass(frozen=True)
class ConvergenceJob:
    dataset: str
    models: tuple[tuple[str, ModelParams], ...]
    solver: SolverParams
    convergence: ConvergenceParams
    device: str


@dataclass(frozen=True)
class Figure2Job:
    dataset: str
    models: tuple[tuple[str, str, ModelParams], ...]  # (role "MOptEqs" / "POptEqs", key, model)
    figure: Figure2Params
    device: str


@dataclass(frozen=True)
class Figure3aJob:
    dataset: str
    model: ModelParams
    solver: SolverParams
    figure: Figure3aParams
    eval_max_iter: int
    device: str


@dataclass(frozen=True)
class TableJob:
    table: str
    rows: tuple[tuple[str, str, AnyModel], ...]  # (dataset, model key, model)
    seeds: tuple[int, ...]
    profile: str
    scale: str


TABLE_NAMES = ("moptqs_table1a", "moptqs_table1b", "moptqs_table2", "moptqs_table3")  # + figures (convergence)


@dataclass(frozen=True)
class MOptEqsSettings:
    """The validated block plus the profile's common keys; its methods give each job its settings."""

    info: ProfileInfo
    params: MOptEqsParams

    def prepare(self, dataset: str) -> PrepareJob:
        self._check("datasets", dataset)
        return PrepareJob(dataset, self.params.datasets[dataset], self.info.data_root)

    def model(self, key: str) -> AnyModel:
        """A declared model or baseline by key."""
        if key in self.params.models:
            return self.params.models[key]
        if key in self.params.baselines:
            return self.params.baselines[key]
        raise ConfigError(f"{key!r} is not in profiles.{self.info.name}.moptqs.models "
                          f"({sorted(self.params.models)}) nor .baselines ({sorted(self.params.baselines)})")

    def train(self, dataset: str, model: str) -> TrainJob:
        self._check("datasets", dataset)
        t = self.params.train
        return TrainJob(dataset, model, self.model(model), self.params.solver, self.info.device, t.lr,
                        t.momentum, t.nesterov, t.weight_decay[dataset], t.batch_size[dataset], t.epochs[dataset],
                        t.lr_milestones, t.lr_gamma, t.augment, t.max_steps, t.checkpoint_every, t.log_every,
                        t.one_step_iterations)

    def evaluate(self, dataset: str, model: str) -> EvaluateJob:
        self._check("datasets", dataset)
        return EvaluateJob(dataset, model, self.model(model), self.params.solver, self.params.eval,
                           self.info.device)

    def convergence(self) -> ConvergenceJob:
        c = self.params.convergence
        return ConvergenceJob(c.dataset, tuple((m, self.params.models[m]) for m in c.models), self.params.solver, c,
                              self.info.device)

    def figure2(self) -> Figure2Job:
        f = self.params.figure2
        return Figure2Job(f.dataset, tuple((role, m, self.params.models[m]) for role, m in
                                           (("MOptEqs", f.moptqs), ("POptEqs", f.poptqs))), f, self.info.device)

    def figure3a(self) -> Figure3aJob:
        f = self.params.figure3a
        return Figure3aJob(f.dataset, self.params.models[f.model], self.params.solver, f, self.params.eval.max_iter,
                           self.info.device)

    def table(self, name: str) -> TableJob:
        if name == "moptqs_figure4":
            c = self.params.convergence
            return TableJob(name, tuple((c.dataset, m, self.params.models[m]) for m in c.models), (c.seed,),
                            self.info.name, self.info.scale)
        if name in ("moptqs_figure2", "moptqs_figure3a"):
            f2, f3 = self.params.figure2, self.params.figure3a
            dataset, models, seed = ((f2.dataset, (f2.moptqs, f2.poptqs), f2.seed) if name == "moptqs_figure2" else
                                     (f3.dataset, (f3.model,), f3.seed))
            return TableJob(name, tuple((dataset, m, self.params.models[m]) for m in models), (seed,),
                            self.info.name, self.info.scale)
        spec = self.params.tables[name]
        rows = tuple((ds, m, self.model(m)) for ds, models in spec.rows.items() for m in models)
        return TableJob(name, rows, self.info.seeds, self.info.name, self.info.scale)

    def _check(self, kind: str, key: str) -> None:
        known = getattr(self.params, kind)
        if key not in known:
            raise ConfigError(f"{key!r} is not in profiles.{self.info.name}.moptqs.{kind} ({sorted(known)})")


def build_settings(info: ProfileInfo, params: MOptEqsParams) -> MOptEqsSettings:
    """Check the block's cross-references: every table's dataset and models, and per-dataset entries."""
    where = f"profiles.{info.name}.moptqs"
    missing_tables = sorted(set(TABLE_NAMES) - set(params.tables))
    if missing_tables:
        raise ConfigError(f"{where}.tables: missing {missing_tables}")
    both = sorted(set(params.models) & set(params.baselines))
    if both:
        raise ConfigError(f"{where}: keys {both} are in both models and baselines")
    blocks = [(f"tables.{name}.rows.{ds}", ds, models, True) for name, t in params.tables.items()
              for ds, models in t.rows.items()]
    blocks.append(("convergence", params.convergence.dataset, params.convergence.models, False))
    blocks.append(("figure2", params.figure2.dataset, (params.figure2.moptqs, params.figure2.poptqs), False))
    blocks.append(("figure3a", params.figure3a.dataset, (params.figure3a.model,), False))
    for path, dataset, models, baselines_allowed in blocks:
        if dataset not in params.datasets:
            raise ConfigError(f"{where}.{path}: dataset {dataset!r} has no entry in {where}.datasets")
        for model in models:
            if model not in params.models and not (baselines_allowed and model in params.baselines):
                raise ConfigError(f"{where}.{path}: {model!r} has no entry in {where}.models"
                                  + (" or .baselines" if baselines_allowed else ""))
    for ds in sorted(params.datasets):
        for path, mapping in (("train.weight_decay", params.train.weight_decay),
                              ("train.batch_size", params.train.batch_size), ("train.epochs", params.train.epochs)):
            if ds not in mapping:
                raise ConfigError(f"{where}.{path}: missing entry for dataset {ds!r}")
    return MOptEqsSettings(info, params)
