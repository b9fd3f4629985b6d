"""The ``jiio_adversarial`` block of params.yaml and the typed settings each of its jobs reads.

:class:`AdversarialParams` declares the block (its JSON schema is generated from it); :class:`AdversarialSettings`
is built from it once per job and hands each stage exactly the slice it needs (:meth:`AdversarialSettings.train`
and friends).  That slice is what the job's rerun hash covers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Mapping

from deqbench.experiments.config import ConfigError, ProfileInfo
from deqbench.experiments.params import MDEQParams, SolverParams
from deqbench.experiments.prepared import DataParams, PrepareJob
from deqbench.experiments.settings import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt

METHODS = ("clean", "pgd", "jio")  # training methods and, in the same order, test-time attacks
Selection = Literal["reference", "lowest_cost", "lowest_residual", "last"]
Alpha = tuple[PositiveFloat, PositiveFloat, PositiveFloat]


@dataclass(frozen=True)
class TrainParams:
    lr: PositiveFloat
    lr_schedule: Literal["constant", "cosine"]  # cosine: decay to lr_min over the run, per step (reference configs)
    lr_min: NonNegativeFloat
    batch_size: PositiveInt
    epochs: Mapping[str, PositiveInt]  # per dataset
    max_steps: PositiveInt | None  # cap on optimisation steps (null: full epochs)
    jac_reg: NonNegativeFloat  # appendix C.4
    jac_probes: PositiveInt
    # Clip the gradient's global L2 norm to this before each Adam step (null: no clipping, as in the paper).
    grad_clip: PositiveFloat | None
    checkpoint_every: PositiveInt
    log_every: PositiveInt
    attack_pgd_steps: PositiveInt | None  # PGD steps inside adversarial training (null: attack.pgd.steps)
    # PGD step (in units of eps = 1, like attack.pgd.step_size) inside training (null: attack.pgd.step_size); a
    # 3-step attack with the test attack's step 0.2 travels at most 0.6 eps, so shorter attacks need longer steps.
    attack_pgd_step_size: PositiveFloat | None
    # JIO iterations inside training, per dataset (null: attack.jio.iterations)
    attack_jio_iterations: Mapping[str, PositiveInt] | None
    # Parameter gradient of JIO training: "mu" (eq. 19: from the JIIO adjoint mu*, no second solve; the paper) or
    # "ift" (an adjoint solve with the backward solver settings, warm-started at mu*).
    jio_backward: Literal["mu", "ift"]
    # Adversarial training fine-tunes the clean model of the same dataset and seed for this many steps (null:
    # adversarial models train from scratch for the same epochs as clean ones, as in the paper).
    warm_start_steps: PositiveInt | None
    warm_start_lr: PositiveFloat | None  # peak LR of that fine-tuning (null: lr)


@dataclass(frozen=True)
class PGDParams:
    steps: PositiveInt
    step_size: PositiveFloat
    norm: Literal["l2", "linf"]


@dataclass(frozen=True)
class JIOParams:
    iterations: PositiveInt
    memory: PositiveInt
    anderson_kind: Literal["I", "II"]
    alpha: Mapping[str, Alpha]  # per dataset: (alpha_z, alpha_mu, alpha_x)
    alpha_x_late: Mapping[str, PositiveFloat | None]  # per dataset: alpha_x after alpha_x_switch iterations
    alpha_x_switch: NonNegativeInt
    selection: Selection


@dataclass(frozen=True)
class AttackParams:
    pgd: PGDParams
    jio: JIOParams


@dataclass(frozen=True)
class EvalParams:
    batch_size: PositiveInt
    limit: PositiveInt | None  # evaluate on the first N test images (null: all)


@dataclass(frozen=True)
class TableParams:
    datasets: tuple[str, ...]
    eps: PositiveFloat  # L2 radius


@dataclass(frozen=True)
class TimingParams:
    dataset: str
    eps: PositiveFloat
    batch_sizes: tuple[PositiveInt, ...]
    repeats: PositiveInt
    warmup: NonNegativeInt


@dataclass(frozen=True)
class MemoryParams:
    """Appendix C.6: peak memory of one PGD and one JIO attack (the test attacks) on one batch."""

    dataset: str
    eps: PositiveFloat
    batch_size: PositiveInt


@dataclass(frozen=True)
class AdversarialParams:
    """JIIO paper section 4.3 and appendix B.2: adversarial training of MDEQ classifiers (Tables 2, 5, 8)."""

    datasets: Mapping[str, DataParams]
    # rms_norm: on an embedded stand-in every eps is scaled by (stand-in RMS image norm / real dataset's), so
    # attacks take the paper's share of an image (deqbench.data.scaled_eps); none: eps as given.
    eps_scaling: Literal["none", "rms_norm"]
    model: Mapping[str, MDEQParams]  # per dataset
    solver: SolverParams
    train: TrainParams
    attack: AttackParams
    eval: EvalParams
    tables: Mapping[str, TableParams]  # table5, table8: datasets and eps
    timing: TimingParams  # Table 2
    memory: MemoryParams  # appendix C.6


# ----------------------------------------------------------------------------- what each job reads


@dataclass(frozen=True)
class Network:
    """Everything needed to build one dataset's MDEQ and solve it, and where; and how eps is carried over to it."""

    dataset: str
    model: MDEQParams
    solver: SolverParams
    cuda_graph: str
    device: str
    eps_scaling: str


@dataclass(frozen=True)
class JIOAttack:
    """JIO (eq. 26) as run on one dataset: its step sizes are per dataset; alpha_x drops after the switch."""

    iterations: int
    memory: int
    anderson_kind: str
    alpha: Alpha
    alpha_x_late: float | None
    alpha_x_switch: int | None
    selection: Selection


@dataclass(frozen=True)
class Attack:
    pgd: PGDParams
    jio: JIOAttack


@dataclass(frozen=True)
class TrainJob:
    net: Network
    method: Literal["clean", "pgd", "jio"]
    lr: float
    lr_schedule: Literal["constant", "cosine"]
    lr_min: float
    batch_size: int
    epochs: int
    max_steps: int | None
    jac_reg: float
    jac_probes: int
    grad_clip: float | None
    checkpoint_every: int
    log_every: int
    pgd: PGDParams | None  # PGD inside PGD training (the cheaper train.attack_pgd_steps); None otherwise
    jio: JIOAttack | None  # JIO inside JIO training (train.attack_jio_iterations); None otherwise
    warm_start_steps: int | None  # adversarial methods: fine-tune the clean model for this many steps
    jio_backward: str  # JIO training: "mu" (eq. 19) or "ift"


@dataclass(frozen=True)
class EvaluateJob:
    net: Network
    attack: Attack
    eval: EvalParams


@dataclass(frozen=True)
class TimingJob:
    net: Network
    attack: Attack
    timing: TimingParams


@dataclass(frozen=True)
class MemoryJob:
    net: Network
    attack: Attack
    memory: MemoryParams


@dataclass(frozen=True)
class TableJob:
    table: str
    datasets: tuple[str, ...]
    eps: float
    seeds: tuple[int, ...]
    profile: str
    scale: str


@dataclass(frozen=True)
class AdversarialSettings:
    """The validated block plus the profile's common keys; its methods give each job its settings."""

    info: ProfileInfo
    params: AdversarialParams

    def network(self, dataset: str) -> Network:
        return Network(dataset, self.params.model[dataset], self.params.solver, self.info.cuda_graph,
                       self.info.device, self.params.eps_scaling)

    def attack(self, dataset: str, training: bool = False) -> Attack:
        """PGD / JIO settings on ``dataset``; ``training``: with the ``train.attack_*`` step counts."""
        a, t = self.params.attack, self.params.train
        pgd = a.pgd
        iterations = a.jio.iterations
        if training and (t.attack_pgd_steps is not None or t.attack_pgd_step_size is not None):
            pgd = PGDParams(t.attack_pgd_steps or pgd.steps, t.attack_pgd_step_size or pgd.step_size, pgd.norm)
        if training and t.attack_jio_iterations is not None:
            iterations = t.attack_jio_iterations[dataset]
        late = a.jio.alpha_x_late[dataset]
        switch_used = late is not None and a.jio.alpha_x_switch < iterations
        jio = JIOAttack(iterations, a.jio.memory, a.jio.anderson_kind, a.jio.alpha[dataset],
                        late if switch_used else None, a.jio.alpha_x_switch if switch_used else None, a.jio.selection)
        return Attack(pgd, jio)

    def prepare(self, dataset: str) -> PrepareJob:
        self._check_dataset(dataset, "--dataset")
        return PrepareJob(dataset, self.params.datasets[dataset], self.info.data_root)

    def train(self, dataset: str, method: str) -> TrainJob:
        self._check_dataset(dataset, "--dataset")
        if method not in METHODS:
            raise ConfigError(f"unknown training method {method!r}; known: {list(METHODS)}")
        t = self.params.train
        processes = self.info.distributed.processes
        if t.batch_size % processes:
            raise ConfigError(f"profiles.{self.info.name}.jiio_adversarial.train.batch_size: {t.batch_size} cannot be "
                              f"split evenly over distributed.processes = {processes}; use a multiple of it")
        attack = self.attack(dataset, training=True)
        warm = method != "clean" and t.warm_start_steps is not None
        lr = t.warm_start_lr if warm and t.warm_start_lr is not None else t.lr
        return TrainJob(self.network(dataset), method, lr, t.lr_schedule, t.lr_min, t.batch_size, t.epochs[dataset],
                        t.max_steps, t.jac_reg, t.jac_probes, t.grad_clip, t.checkpoint_every, t.log_every,
                        attack.pgd if method == "pgd" else None, attack.jio if method == "jio" else None,
                        t.warm_start_steps if warm else None, t.jio_backward if method == "jio" else "mu")

    def evaluate(self, dataset: str) -> EvaluateJob:
        self._check_dataset(dataset, "--dataset")
        return EvaluateJob(self.network(dataset), self.attack(dataset), self.params.eval)

    def timing(self) -> TimingJob:
        dataset = self.params.timing.dataset
        return TimingJob(self.network(dataset), self.attack(dataset), self.params.timing)

    def memory(self) -> MemoryJob:
        dataset = self.params.memory.dataset
        return MemoryJob(self.network(dataset), self.attack(dataset), self.params.memory)

    def table(self, name: str) -> TableJob:
        if name == "table2":
            return TableJob(name, (self.params.timing.dataset,), self.params.timing.eps, (), self.info.name,
                            self.info.scale)
        if name == "memory_adversarial":
            return TableJob(name, (self.params.memory.dataset,), self.params.memory.eps, (), self.info.name,
                            self.info.scale)
        spec = self.params.tables[name]
        return TableJob(name, spec.datasets, spec.eps, self.info.seeds, self.info.name, self.info.scale)

    def _check_dataset(self, dataset: str, what: str) -> None:
        if dataset not in self.params.datasets:
            raise ConfigError(f"{what} {dataset!r} is not in profiles.{self.info.name}.jiio_adversarial.datasets "
                              f"({sorted(self.params.datasets)})")


def build_settings(info: ProfileInfo, params: AdversarialParams) -> AdversarialSettings:
    """Check the block's cross-references (every dataset a table, timing or attack names has its entries)."""
    where = f"profiles.{info.name}.jiio_adversarial"
    datasets = set(params.datasets)
    for name, table in params.tables.items():
        for ds in table.datasets:
            if ds not in datasets:
                raise ConfigError(f"{where}.tables.{name}.datasets: {ds!r} has no entry in {where}.datasets")
    for key, block in (("timing", params.timing), ("memory", params.memory)):
        if block.dataset not in datasets:
            raise ConfigError(f"{where}.{key}.dataset: {block.dataset!r} is not in {where}.datasets")
    for ds in sorted(datasets):
        for path, mapping in (("model", params.model), ("train.epochs", params.train.epochs),
                              ("attack.jio.alpha", params.attack.jio.alpha),
                              ("attack.jio.alpha_x_late", params.attack.jio.alpha_x_late),
                              *((("train.attack_jio_iterations", params.train.attack_jio_iterations),)
                                if params.train.attack_jio_iterations is not None else ())):
            if ds not in mapping:
                raise ConfigError(f"{where}.{path}: missing entry for dataset {ds!r}")
    return AdversarialSettings(info, params)
