"""The typed settings each job of the ``jiio_meta`` task reads, from the validated block (:mod:`.params`).

:class:`JIIOMetaSettings` hands each stage exactly the slice it reads (the job's rerun hash covers it);
:func:`build_settings` checks the block's cross-references and names the offending key.
"""

from __future__ import annotations

from dataclasses import dataclass

from deqbench.experiments.config import ConfigError, ProfileInfo
from deqbench.tasks.jiio_meta.params import (
    DataParams, EvalParams, IMAMLParams, JIIODEQParams, JIIOMetaParams, LoopParams, MAMLParams, ReptileParams,
    TimingParams,
)

__all__ = ["METHODS", "MethodParams", "TrainJob", "TrivialJob", "TimingJob", "TableJob", "JIIOMetaSettings",
           "build_settings"]

#: Table 6's rows, in the paper's order, with the name each row prints.
METHODS = {"maml": "MAML", "reptile": "Reptile", "imaml": "iMAML, GD", "jiio_deq": "JIIO-DEQ"}
MethodParams = JIIODEQParams | MAMLParams | ReptileParams | IMAMLParams


@dataclass(frozen=True)
class TrainJob:
    """Meta-train one method, then evaluate it on the held-out test tasks (Table 6, spec B.4-B.6)."""

    method: str
    params: MethodParams
    data: DataParams
    eval: EvalParams
    loop: LoopParams
    data_root: str
    device: str
    profile_scale: str


@dataclass(frozen=True)
class TrivialJob:
    """Answers that need no meta-training, on the same test tasks: chance and 1-nearest-neighbour in pixels."""

    data: DataParams
    eval: EvalParams
    data_root: str


@dataclass(frozen=True)
class TimingJob:
    """Table 7 (spec B.7): Adam-k vs JIIO-k on one batch of test tasks with the trained JIIO-DEQ."""

    model: JIIODEQParams
    timing: TimingParams
    data: DataParams
    eval: EvalParams
    data_root: str
    device: str


@dataclass(frozen=True)
class TableJob:
    """What a table reads: its name, the profile and the settings it reports."""

    name: str
    profile: str
    scale: str
    data: DataParams
    eval: EvalParams
    methods: tuple[str, ...]
    timing: TimingParams


class JIIOMetaSettings:
    """Typed settings of the ``jiio_meta`` task for one profile."""

    def __init__(self, info: ProfileInfo, params: JIIOMetaParams) -> None:
        self.info, self.params = info, params
        self.where = f"profiles.{info.name}.jiio_meta"

    def method_params(self, method: str) -> MethodParams:
        if method not in METHODS:
            raise ConfigError(f"unknown meta-learning method {method!r}; known: {list(METHODS)}")
        return getattr(self.params, method)

    def train(self, method: str) -> TrainJob:
        """The meta-training + evaluation job of one Table 6 row."""
        if method not in self.params.methods:
            raise ConfigError(f"method {method!r} is not in {self.where}.methods {list(self.params.methods)}")
        p = self.params
        return TrainJob(method, self.method_params(method), p.data, p.eval, p.loop, self.info.data_root,
                        self.info.device, self.info.scale)

    def trivial(self) -> TrivialJob:
        p = self.params
        return TrivialJob(p.data, p.eval, self.info.data_root)

    def timing(self) -> TimingJob:
        p = self.params
        return TimingJob(p.jiio_deq, p.timing, p.data, p.eval, self.info.data_root, self.info.device)

    def table(self, name: str) -> TableJob:
        p = self.params
        return TableJob(name, self.info.name, self.info.scale, p.data, p.eval, p.methods, p.timing)


def build_settings(info: ProfileInfo, params: JIIOMetaParams) -> JIIOMetaSettings:
    """Check the block (spec B.3-B.7): methods listed once, task vector split over the branches, GroupNorm groups
    dividing the channels, a timing batch within the test tasks, images per class available."""
    where = f"profiles.{info.name}.jiio_meta"
    if not params.methods or len(set(params.methods)) != len(params.methods):
        raise ConfigError(f"{where}.methods: must be a non-empty list without repeats, got {list(params.methods)}")
    m = params.jiio_deq.model
    if len(m.channels) != len(m.head_channels):
        raise ConfigError(f"{where}.jiio_deq.model.head_channels: one entry per branch ({len(m.channels)}), got "
                          f"{list(m.head_channels)}")
    if m.task_dim < 1:
        raise ConfigError(f"{where}.jiio_deq.model.task_dim: JIIO-DEQ needs a task vector (task_dim >= 1)")
    if m.contractive_gain is not None and not m.weight_norm:
        raise ConfigError(f"{where}.jiio_deq.model.contractive_gain: sets weight-norm gains, needs weight_norm: true")
    if m.task_dim % len(m.channels):
        raise ConfigError(f"{where}.jiio_deq.model.task_dim: {m.task_dim} does not split over {len(m.channels)} "
                          f"branches")
    for key in ("block_groups", "fuse_groups", "post_fuse_groups"):
        groups = getattr(m, key)
        if any(c % groups for c in m.channels):
            raise ConfigError(f"{where}.jiio_deq.model.{key}: {groups} does not divide the channels "
                              f"{list(m.channels)}")
    if params.timing.tasks > params.eval.tasks:
        raise ConfigError(f"{where}.timing.tasks: {params.timing.tasks} exceeds eval.tasks ({params.eval.tasks})")
    inner = params.jiio_deq.inner
    if inner.alpha_x_switch > inner.iterations:
        raise ConfigError(f"{where}.jiio_deq.inner.alpha_x_switch: {inner.alpha_x_switch} is past the "
                          f"{inner.iterations} iterations")
    if inner.train_iterations is not None and inner.train_iterations > inner.iterations:
        raise ConfigError(f"{where}.jiio_deq.inner.train_iterations: {inner.train_iterations} exceeds the "
                          f"{inner.iterations} iterations of evaluation (it shortens meta-training's inner loop)")
    if params.data.n_way < 2:
        raise ConfigError(f"{where}.data.n_way: a few-shot task needs at least 2 classes, got {params.data.n_way}")
    return JIIOMetaSettings(info, params)
