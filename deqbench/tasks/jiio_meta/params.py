"""The ``jiio_meta`` block of params.yaml: its typed schema (JIIO meta-learning, spec section B).

One block declares, once: the few-shot data (Omniglot or the embedded digits stand-in, spec B.5 / B.10), the
evaluation protocol (held-out tasks, 95 % confidence interval), one entry per method of Table 6 (JIIO-DEQ, MAML,
Reptile, iMAML-GD, with their standard settings, spec B.2-B.4 and B.6), the training loop's bookkeeping, and the
Table 7 timing (Adam-20 vs JIIO-100 on the same batch of tasks, spec B.7).  :mod:`.settings` checks the
cross-references and hands each job exactly the slice it reads.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from deqbench.experiments.params import MDEQParams
from deqbench.models.mdeq import MDEQConfig
from deqbench.experiments.settings import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt

MethodName = Literal["jiio_deq", "maml", "reptile", "imaml"]


@dataclass(frozen=True)
class DataParams:
    """Where the tasks come from (spec B.5, B.10) and the N-way K-shot protocol."""

    source: Literal["omniglot", "digits"]  # digits: the embedded stand-in (labelled in every output)
    image_size: PositiveInt  # Omniglot 28 (paper); the stand-in's 8 px digits are resized to this
    n_way: PositiveInt
    k_shot: PositiveInt
    k_query: PositiveInt
    split_seed: NonNegativeInt  # Omniglot: the seed of the 1623-character permutation (first 1200 meta-train)
    train_seed: NonNegativeInt  # seed of the meta-training task stream (task i of step s: index s * batch + i)


@dataclass(frozen=True)
class EvalParams:
    """Evaluation on held-out classes only (spec B.4 "600 test tasks", B.5 code bug not reproduced)."""

    tasks: PositiveInt  # paper 600
    seed: NonNegativeInt  # seed of the test-task stream (the same tasks for every method)
    batch_tasks: PositiveInt  # tasks per JIIO-DEQ evaluation batch (the reference: 20 per GPU)


@dataclass(frozen=True)
class LoopParams:
    """Bookkeeping shared by every method's meta-training: resumable checkpoints and logging."""

    checkpoint_every: PositiveInt
    log_every: PositiveInt
    seed: NonNegativeInt  # model initialisation and the JIIO-DEQ Jacobian-probe draws


@dataclass(frozen=True)
class FiLMMDEQParams(MDEQParams):
    """The FiLM-conditioned 2-branch MDEQ of spec B.3 (Table 9: channels [64, 128], GroupNorm(8), 5x, weight norm;
    ``task_dim`` 400): the shared MDEQ block plus how the FiLM and the solver convs start."""

    film_init_std: NonNegativeFloat = 0.0  # N(0, std) of the FiLM weights (bias 0); 0 with x0 = 0 never moves
    # Initial weight-norm gain g of each block's first conv and of the post-fusion convs; null: PyTorch's (||w||).
    # Small g starts the GroupNorms after them in their eps-dominated, nearly linear regime, so f starts contractive
    # and the solves converge at initialisation (an initialisation choice, not in the paper).
    contractive_gain: PositiveFloat | None = None
    # "task": standardise the head's pooled features over each task's images before the classifier (not in the
    # paper; see deqbench.models.mdeq).  With the per-example GroupNorm head they barely vary over images and
    # JIIO-DEQ meta-training stays at chance.
    pooled_norm: Literal["none", "task"] = "none"
    pooled_norm_eps: PositiveFloat = 1e-5  # added to the per-task variance of each pooled feature (as BatchNorm's)

    def config(self, in_channels: int, num_classes: int) -> MDEQConfig:
        return dataclasses.replace(super().config(in_channels, num_classes), pooled_norm=self.pooled_norm,
                                   pooled_norm_eps=self.pooled_norm_eps)


@dataclass(frozen=True)
class InnerParams:
    """The JIIO inner loop over (z, mu, x) on the support images (spec B.2; Table 9 Omniglot column)."""

    iterations: PositiveInt  # paper 100, always run (no early stop)
    alpha: tuple[PositiveFloat, PositiveFloat, PositiveFloat]  # (a_z, a_mu, a_x) = (0.8, 0.6, 0.04)
    alpha_x_late: PositiveFloat  # a_x after alpha_x_switch iterations (0.01)
    alpha_x_switch: NonNegativeInt  # paper 65, code 61 (AMBIG-B3)
    anderson_memory: PositiveInt  # 10
    anderson_type: Literal["I", "II"]  # paper I, code II (AMBIG-B3)
    task_l2: NonNegativeFloat  # the code's per-example mean x^2 term (B.2 [C]); 0 disables
    # Meta-training only (not in the paper): JIIO iterations of the inner loop inside each meta-step; null: the
    # paper's ``iterations``.  alpha_x_switch scales with it.  Evaluation and Table 7 always run ``iterations``.
    train_iterations: PositiveInt | None = None

    def for_meta_training(self) -> "InnerParams":
        """The inner loop a meta-step runs: ``train_iterations`` iterations with the switch of the damping of x
        moved proportionally (65 of 100 -> 26 of 40), or this loop unchanged."""
        if self.train_iterations is None or self.train_iterations == self.iterations:
            return self
        switch = round(self.alpha_x_switch * self.train_iterations / self.iterations)
        return dataclasses.replace(self, iterations=self.train_iterations, alpha_x_switch=switch)


@dataclass(frozen=True)
class QueryParams:
    """The query equilibria at x* fixed and their IFT backward (spec B.2 last bullet, B.4)."""

    solver: Literal["broyden", "anderson", "forward"]
    max_iter: PositiveInt  # Table 9 T_f = 18
    backward_max_iter: PositiveInt  # effective 18 in the code, Table 9 says 20 (AMBIG-B6)


@dataclass(frozen=True)
class JIIODEQParams:
    """JIIO-DEQ (spec B.2-B.4): the model, inner loop, query solve, Jacobian regulariser and the outer Adam."""

    model: FiLMMDEQParams
    inner: InnerParams
    query: QueryParams
    jac_reg: NonNegativeFloat  # 0.5 (B.4), Hutchinson at a random support-trajectory iterate
    jac_reg_probes: PositiveInt  # 2
    meta_steps: PositiveInt  # paper 20,000 (AMBIG-B7)
    meta_batch: PositiveInt  # tasks per meta-step (Table 9: 80)
    outer_lr: PositiveFloat  # Adam, 1e-3 (AMBIG-B1)
    lr_schedule: Literal["constant", "cosine"]  # cosine in the reference config


@dataclass(frozen=True)
class ConvBackboneParams:
    """The 4-block conv backbone of the baselines (spec B.6, Finn et al. 2017): 64 filters, BatchNorm, stride 2."""

    hidden: PositiveInt
    norm: Literal["batch", "group", "none"]


@dataclass(frozen=True)
class MAMLParams:
    """Second-order MAML (spec B.6): 1 inner SGD step of 0.4, 3 at test time; Adam 1e-3, 32 tasks, 60k steps."""

    backbone: ConvBackboneParams
    inner_steps: PositiveInt
    inner_lr: PositiveFloat
    eval_inner_steps: PositiveInt
    meta_batch: PositiveInt
    outer_lr: PositiveFloat
    meta_steps: PositiveInt
    first_order: bool


@dataclass(frozen=True)
class ReptileParams:
    """Reptile (spec B.6): inner Adam (1e-3, beta1 0) 5 steps on batches of 10; outer step 1 -> 0 linearly, 5
    tasks, 100k steps; test 50 steps on batches of 5.  ``train_shots``: images per class in meta-training tasks
    (Nichol et al.'s Omniglot command line uses 10)."""

    backbone: ConvBackboneParams
    inner_steps: PositiveInt
    inner_lr: PositiveFloat
    inner_batch: PositiveInt
    train_shots: PositiveInt
    outer_step_size: PositiveFloat
    outer_step_size_final: NonNegativeFloat
    meta_batch: PositiveInt
    meta_steps: PositiveInt
    eval_inner_steps: PositiveInt
    eval_inner_batch: PositiveInt


@dataclass(frozen=True)
class IMAMLParams:
    """iMAML-GD (spec B.6): lam 2, 16 inner GD steps of 0.1, 5 CG steps; Adam 1e-3, 32 tasks, 20k steps."""

    backbone: ConvBackboneParams
    lam: PositiveFloat
    inner_steps: PositiveInt
    inner_lr: PositiveFloat
    cg_steps: PositiveInt
    meta_batch: PositiveInt
    outer_lr: PositiveFloat
    meta_steps: PositiveInt


@dataclass(frozen=True)
class TimingParams:
    """Table 7 (spec B.7): the inner loop of one batch of test tasks, Adam on x vs JIIO, same device and batch, in
    one process, with the trained JIIO-DEQ; mean over ``repeats`` after ``warmup`` untimed runs."""

    tasks: PositiveInt  # tasks per batch (the reference: 20 per GPU)
    adam_steps: PositiveInt  # 20
    adam_lr: PositiveFloat  # 0.1
    adam_solver_max_iter: PositiveInt  # forward and adjoint Broyden threshold per Adam step (20)
    jiio_iterations: PositiveInt  # 100
    repeats: PositiveInt
    warmup: NonNegativeInt


@dataclass(frozen=True)
class JIIOMetaParams:
    """JIIO meta-learning (JIIO paper section 4.4, appendix B.1, C.1-C.5; spec section B): Tables 6 and 7."""

    data: DataParams
    eval: EvalParams
    loop: LoopParams
    methods: tuple[MethodName, ...]  # the Table 6 rows this profile trains
    jiio_deq: JIIODEQParams
    maml: MAMLParams
    reptile: ReptileParams
    imaml: IMAMLParams
    timing: TimingParams
