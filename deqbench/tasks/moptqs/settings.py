"""The typed settings each job of the ``moptqs`` task reads, from the validated block (:mod:`.params`).

:class:`MOptEqsSettings` hands each stage exactly the slice it reads, which is what the job's rerun hash covers.
"""

from __future__ import annotations

from dataclasses import dataclass

from deqbench.experiments.config import ConfigError, ProfileInfo
from deqbench.experiments.params import SolverParams
from deqbench.experiments.prepared import PrepareJob
from deqbench.tasks.moptqs.params import (
    AdversarialParams, AnyModel, BaselineParams, ConvergencePanel, CostParams, EvalParams, Figure2Params,
    Figure3aParams, Figure3bParams, Figure3cParams, ModelParams, MOptEqsParams, TrainParams,
)

__all__ = ["AdversarialParams", "AnyModel", "BaselineParams", "ConvergencePanel", "CostParams", "EvalParams",
           "Figure2Params", "Figure3aParams", "Figure3bParams", "Figure3cParams", "ModelParams", "MOptEqsParams",
           "TrainParams", "MOptEqsSettings", "build_settings"]


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
    epochs: float
    lr_milestones: tuple[float, ...]
    lr_gamma: float
    augment: bool
    max_steps: int | None
    checkpoint_every: int
    log_every: int
    one_step_iterations: int
    adversarial: AdversarialParams | None  # set for adversarially trained models only


@dataclass(frozen=True)
class EvaluateJob:
    dataset: str
    model_name: str
    model: AnyModel
    solver: SolverParams
    eval: EvalParams
    one_step_iterations: int | None  # one-step models infer with these K plain iterations, as they train
    device: str


@dataclass(frozen=True)
class TrainEvaluateJob:
    """Train one model, then evaluate its checkpoint in the same process: one Python + torch start-up and one data
    load per model instead of two (about 4 s of every job on a CPU)."""

    train: TrainJob
    evaluate: EvaluateJob


@dataclass(frozen=True)
class AttackJob:
    """PGD-``steps`` on one checkpoint, recording the accuracy after every step (Table 5, Figure 3(b))."""

    dataset: str
    model_name: str
    model: ModelParams
    solver: SolverParams
    attack: AdversarialParams
    steps: int
    device: str


@dataclass(frozen=True)
class ConvergenceJob:
    panel: str
    dataset: str
    models: tuple[tuple[str, ModelParams], ...]
    solver: SolverParams
    iterations: int
    batch_size: int
    seed: int
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
class CostJob:
    """Table 6: the models timed side by side, with the settings each one's inference and training step use."""

    dataset: str
    models: tuple[tuple[str, AnyModel], ...]
    solver: SolverParams
    eval_max_iter: int
    one_step_iterations: int
    cost: CostParams
    device: str


@dataclass(frozen=True)
class TableJob:
    table: str
    rows: tuple[tuple[str, str, AnyModel], ...]  # (dataset, model key, model)
    seeds: tuple[int, ...]
    profile: str
    scale: str
    extra: tuple[tuple[str, str], ...] = ()  # figure roles, e.g. ("baseline", key)


# Tables of the tables block (accuracy tables); moptqs_table4 needs ImageNet, which has no stand-in.
TABLE_NAMES = ("moptqs_table1a", "moptqs_table1b", "moptqs_table2", "moptqs_table3", "moptqs_table4",
               "moptqs_table5", "moptqs_table6")
FIGURE_NAMES = ("moptqs_figure2", "moptqs_figure3a", "moptqs_figure3b", "moptqs_figure3c", "moptqs_figure4")


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
        t, m = self.params.train, self.model(model)
        adversarial = self.params.adversarial if getattr(m, "adversarial", False) else None
        own = getattr(m, "epochs", None) or {}
        epochs = own.get(dataset, t.epochs[dataset]) if adversarial is None or adversarial.train_epochs is None \
            else adversarial.train_epochs
        return TrainJob(dataset, model, m, self.params.solver, self.info.device, t.lr,
                        t.momentum, t.nesterov, t.weight_decay[dataset], t.batch_size[dataset], epochs,
                        t.lr_milestones, t.lr_gamma, t.augment, t.max_steps, t.checkpoint_every, t.log_every,
                        t.one_step_iterations, adversarial)

    def evaluate(self, dataset: str, model: str) -> EvaluateJob:
        self._check("datasets", dataset)
        m = self.model(model)
        one_step = self.params.train.one_step_iterations if getattr(m, "gradient", "") == "one_step" else None
        return EvaluateJob(dataset, model, m, self.params.solver, self.params.eval, one_step, self.info.device)

    def train_evaluate(self, dataset: str, model: str) -> TrainEvaluateJob:
        return TrainEvaluateJob(self.train(dataset, model), self.evaluate(dataset, model))

    def attack_steps(self, model: str) -> int:
        """PGD steps of a model's attack job: the most its consumers (Table 5, Figure 3(b)) read."""
        steps = []
        if any(model in models for models in self.params.tables["moptqs_table5"].rows.values()):
            steps.append(self.params.adversarial.attack_steps)
        if model in self.params.figure3b.models:
            steps.append(max(self.params.figure3b.iterations))
        if not steps:
            raise ConfigError(f"{model!r} is attacked by neither moptqs.tables.moptqs_table5 nor moptqs.figure3b")
        return max(steps)

    def attack(self, dataset: str, model: str) -> AttackJob:
        self._check("datasets", dataset)
        if model not in self.params.models:
            raise ConfigError(f"{model!r} is not in profiles.{self.info.name}.moptqs.models; only MOptEqs models are "
                              f"attacked")
        return AttackJob(dataset, model, self.params.models[model], self.params.solver, self.params.adversarial,
                         self.attack_steps(model), self.info.device)

    def convergence(self, panel: str) -> ConvergenceJob:
        c = self.params.convergence
        if panel not in c.panels:
            raise ConfigError(f"{panel!r} is not in profiles.{self.info.name}.moptqs.convergence.panels "
                              f"({sorted(c.panels)})")
        p = c.panels[panel]
        return ConvergenceJob(panel, p.dataset, tuple((m, self.params.models[m]) for m in p.models),
                              self.params.solver, c.iterations, c.batch_size, c.seed, self.info.device)

    def figure2(self) -> Figure2Job:
        f = self.params.figure2
        return Figure2Job(f.dataset, tuple((role, m, self.params.models[m]) for role, m in
                                           (("MOptEqs", f.moptqs), ("POptEqs", f.poptqs))), f, self.info.device)

    def figure3a(self) -> Figure3aJob:
        f = self.params.figure3a
        return Figure3aJob(f.dataset, self.params.models[f.model], self.params.solver, f, self.params.eval.max_iter,
                           self.info.device)

    def cost(self) -> CostJob:
        c = self.params.cost
        return CostJob(c.dataset, tuple((m, self.model(m)) for m in c.models), self.params.solver,
                       self.params.eval.max_iter, self.params.train.one_step_iterations, c, self.info.device)

    def figure_seeds(self, name: str) -> tuple[int, ...]:
        """The seeds a figure averages: its own ``seeds`` or the profile's."""
        f = self.params.figure3b if name == "moptqs_figure3b" else self.params.figure3c
        return tuple(f.seeds) if f.seeds is not None else tuple(self.info.seeds)

    def table(self, name: str) -> TableJob:
        p, info = self.params, self.info
        if name == "moptqs_figure4":
            c = p.convergence
            rows = tuple((panel.dataset, m, p.models[m]) for panel in c.panels.values() for m in panel.models)
            return TableJob(name, rows, (c.seed,), info.name, info.scale,
                            tuple((key, m) for key, panel in c.panels.items() for m in panel.models))
        if name in ("moptqs_figure2", "moptqs_figure3a"):
            f2, f3 = p.figure2, p.figure3a
            dataset, models, seed = ((f2.dataset, (f2.moptqs, f2.poptqs), f2.seed) if name == "moptqs_figure2" else
                                     (f3.dataset, (f3.model,), f3.seed))
            return TableJob(name, tuple((dataset, m, p.models[m]) for m in models), (seed,), info.name, info.scale)
        if name == "moptqs_figure3b":
            f = p.figure3b
            return TableJob(name, tuple((f.dataset, m, p.models[m]) for m in f.models), self.figure_seeds(name),
                            info.name, info.scale, tuple(("iteration", str(k)) for k in f.iterations))
        if name == "moptqs_figure3c":
            f = p.figure3c
            keys = (f.baseline, *f.models, f.reference)
            return TableJob(name, tuple((f.dataset, m, p.models[m]) for m in keys), self.figure_seeds(name),
                            info.name, info.scale, (("baseline", f.baseline), ("reference", f.reference)))
        spec = p.tables[name]
        rows = tuple((ds, m, self.model(m)) for ds, models in spec.rows.items() for m in models)
        return TableJob(name, rows, tuple(spec.seeds) if spec.seeds is not None else tuple(info.seeds), info.name,
                        info.scale)

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
    unknown_tables = sorted(set(params.tables) - set(TABLE_NAMES))
    if unknown_tables:
        raise ConfigError(f"{where}.tables: unknown {unknown_tables}; known: {list(TABLE_NAMES)}")
    both = sorted(set(params.models) & set(params.baselines))
    if both:
        raise ConfigError(f"{where}: keys {both} are in both models and baselines")
    blocks = [(f"tables.{name}.rows.{ds}", ds, models, name != "moptqs_table5") for name, t in params.tables.items()
              for ds, models in t.rows.items()]
    blocks += [(f"convergence.panels.{key}", panel.dataset, panel.models, False)
               for key, panel in params.convergence.panels.items()]
    f3b, f3c, cost = params.figure3b, params.figure3c, params.cost
    blocks.append(("figure2", params.figure2.dataset, (params.figure2.moptqs, params.figure2.poptqs), False))
    blocks.append(("figure3a", params.figure3a.dataset, (params.figure3a.model,), False))
    blocks.append(("figure3b", f3b.dataset, f3b.models, False))
    blocks.append(("figure3c", f3c.dataset, (f3c.baseline, *f3c.models, f3c.reference), False))
    blocks.append(("cost", cost.dataset, cost.models, True))
    blocks.append(("adversarial", params.adversarial.dataset, (), False))
    for path, dataset, models, baselines_allowed in blocks:
        if dataset not in params.datasets:
            raise ConfigError(f"{where}.{path}: dataset {dataset!r} has no entry in {where}.datasets")
        for model in models:
            if model not in params.models and not (baselines_allowed and model in params.baselines):
                raise ConfigError(f"{where}.{path}: {model!r} has no entry in {where}.models"
                                  + (" or .baselines" if baselines_allowed else ""))
    for ds, models in params.tables["moptqs_table5"].rows.items():
        if ds != params.adversarial.dataset:
            raise ConfigError(f"{where}.tables.moptqs_table5.rows: dataset {ds!r}, but the attacks run on "
                              f"{where}.adversarial.dataset {params.adversarial.dataset!r}")
        for model in models:
            if not params.models[model].adversarial:
                raise ConfigError(f"{where}.tables.moptqs_table5: {model!r} is not adversarially trained "
                                  f"({where}.models.{model}.adversarial: true)")
    if f3b.dataset != params.adversarial.dataset:
        raise ConfigError(f"{where}.figure3b.dataset {f3b.dataset!r} differs from {where}.adversarial.dataset "
                          f"{params.adversarial.dataset!r}")
    for model in f3c.models:
        if params.models[model].hhd_loss_gamma <= 0 or params.models[model].coupling != "none":
            raise ConfigError(f"{where}.figure3c.models: {model!r} must be a POptEqs (coupling none) with "
                              f"hhd_loss_gamma > 0")
    for ds in sorted(params.datasets):
        for path, mapping in (("train.weight_decay", params.train.weight_decay),
                              ("train.batch_size", params.train.batch_size), ("train.epochs", params.train.epochs)):
            if ds not in mapping:
                raise ConfigError(f"{where}.{path}: missing entry for dataset {ds!r}")
    for name, baseline in params.baselines.items():
        for key, per_dataset in (("epochs", baseline.epochs), ("jac_reg_per_dataset", baseline.jac_reg_per_dataset)):
            unknown = sorted(set(per_dataset or {}) - set(params.datasets))
            if unknown:
                raise ConfigError(f"{where}.baselines.{name}.{key}: unknown datasets {unknown} "
                                  f"({sorted(params.datasets)})")
    return MOptEqsSettings(info, params)
