"""The ``moptqs`` block of params.yaml: its typed schema.

The block declares, once: the datasets (real or embedded stand-ins), the named models (every row of every
MOptEqs table is one of them), the solver, the training recipe, the attacks, and which models each table and figure
shows.  :mod:`.settings` validates its cross-references and hands each job its slice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal, Mapping

from deqbench.experiments.params import MDEQParams, SolverParams
from deqbench.experiments.prepared import DataParams
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
    adversarial: bool = False  # Table 5: PGD adversarial training with moptqs.adversarial's train attack
    # Figure 3(c): the HH&D terms as a loss regulariser, gamma * sum_k (lam D - H)(z_k, z_k+1) at z* (AMBIG-A10 sign:
    # minimise D, maximise H) on unit-norm channel vectors; 0: none.
    hhd_loss_gamma: NonNegativeFloat = 0.0

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
    # jac_reg per dataset, where it differs from jac_reg (null: jac_reg everywhere).
    jac_reg_per_dataset: Mapping[str, NonNegativeFloat] | None = None
    # MDEQ's own optimiser (the paper's small MDEQ changes "only the channel number ... without changing the training
    # settings" of MDEQ): Adam with a cosine schedule; null: the moptqs.train recipe (SGD, multi-step).
    adam_lr: PositiveFloat | None = None
    # Epochs of MDEQ's own recipe per dataset, where they differ from moptqs.train.epochs (null: the same).
    epochs: Mapping[str, PositiveFloat] | None = None

    def jac_reg_on(self, dataset: str) -> float:
        """The Jacobian-regularisation weight of training on ``dataset``."""
        return float((self.jac_reg_per_dataset or {}).get(dataset, self.jac_reg))


AnyModel = ModelParams | BaselineParams


@dataclass(frozen=True)
class TrainParams:
    """The paper's recipe (appendix A.6): SGD 0.1, divided by 10 at epochs 100 / 150 / 175 of 200, batch 128."""

    lr: PositiveFloat
    momentum: NonNegativeFloat  # AMBIG-A9: not stated; 0.9
    nesterov: bool
    weight_decay: Mapping[str, NonNegativeFloat]  # per dataset
    batch_size: Mapping[str, PositiveInt]  # per dataset
    epochs: Mapping[str, PositiveFloat]  # per dataset; a fraction trains round(epochs x steps per epoch) steps
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
    """A table's rows: per dataset, the declared models (keys of ``models`` or ``baselines``), in order, and the
    seeds it averages."""

    rows: Mapping[str, tuple[str, ...]]
    seeds: tuple[NonNegativeInt, ...] | None = None  # null: the profile's seeds


@dataclass(frozen=True)
class ConvergencePanel:
    """One panel of Figure 4: trained models of one dataset."""

    dataset: str
    models: tuple[str, ...]


@dataclass(frozen=True)
class ConvergenceParams:
    """Figure 4 (appendix A.7): the relative residual per Anderson iteration of trained models, one test batch."""

    panels: Mapping[str, ConvergencePanel]  # a: single view, several lambda; b: the multi-scale model
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
class AdversarialParams:
    """Table 5 and Figure 3(b) (appendix A.10): L-inf PGD with a random start, on pixels in [0, 1] (spec defaults
    8/255 and steps of 2/255: the paper gives neither).  Gradients through the DEQ by the IFT."""

    dataset: str
    eps: PositiveFloat
    step_size: PositiveFloat
    train_steps: PositiveInt  # PGD-k inside adversarial training (the paper: 3)
    train_epochs: PositiveFloat | None  # epochs of adversarial training (null: train.epochs, as natural training)
    attack_steps: PositiveInt  # PGD-k of the robust accuracy (Table 5: 20)
    limit: PositiveInt | None  # attacked test images (null: all)
    batch_size: PositiveInt


@dataclass(frozen=True)
class Figure3bParams:
    """Figure 3(b): accuracy under PGD-k of naturally trained single-view MOptEqs with PE eps 0 / 0.1 / 0.25 / 0.5."""

    dataset: str
    models: tuple[str, ...]
    iterations: tuple[PositiveInt, ...]  # the PGD iteration counts plotted (the paper: 3 ... 10)
    seeds: tuple[NonNegativeInt, ...] | None  # null: the profile's seeds


@dataclass(frozen=True)
class Figure3cParams:
    """Figure 3(c): POptEqs with the HH&D terms as a loss regulariser (gamma sweep) against the architecture."""

    dataset: str
    baseline: str  # gamma = 0 (Parallel-OptEqs / POptEqs)
    reference: str  # MOptEqs w/o PE
    models: tuple[str, ...]  # the regularised models, gamma = their hhd_loss_gamma
    seeds: tuple[NonNegativeInt, ...] | None  # null: the profile's seeds


@dataclass(frozen=True)
class CostParams:
    """Table 6 (appendix A.11.2): memory of one training step, inference time per batch, side by side."""

    dataset: str
    models: tuple[str, ...]  # MDEQ baseline, one-step MOptEq
    batch_size: PositiveInt  # the paper: 32
    repeats: PositiveInt
    warmup: NonNegativeInt
    seed: NonNegativeInt  # whose checkpoints are timed


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
    adversarial: AdversarialParams  # moptqs_table5, moptqs_figure3b
    figure3b: Figure3bParams  # moptqs_figure3b
    figure3c: Figure3cParams  # moptqs_figure3c
    cost: CostParams  # moptqs_table6
