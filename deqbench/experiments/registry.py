"""Task protocol and registry.

A :class:`Task` is one paper experiment: its ``params.yaml`` block (a frozen dataclass), the typed settings built
once from it, its stages (prepare, train, evaluate, time, ...) and its tables.  A :class:`Stage` says which typed
settings a job of it reads (``settings(task_settings, args)``, the object its rerun hash covers), which
arguments it takes and what it runs.  Every stage runs through one command line, ``python -m deqbench TASK
STAGE ...`` (:mod:`deqbench.experiments.cli`); every table through ``python -m deqbench TASK table NAME ...``.

Tasks live in :mod:`deqbench.tasks` (one package per paper experiment) and register themselves when that package
is imported; :func:`tasks` imports it by name, so this layer never imports the layer above it statically.
"""

from __future__ import annotations

import argparse
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

from deqbench.experiments.config import ConfigError, ProfileInfo
from deqbench.experiments.provenance import provenance
from deqbench.experiments.settings import from_mapping, settings_hash
from deqbench.experiments.tables import TableSpec

TASK_PACKAGES = ("deqbench.tasks",)


@dataclass(frozen=True)
class Arg:
    """A command-line argument of a stage (``--name``)."""

    name: str
    type: Callable[[str], Any] = str
    help: str = ""
    required: bool = True
    default: Any = None
    nargs: str | None = None  # "+": one or more values (a list)


@dataclass(frozen=True)
class Job:
    """What a stage's ``run`` receives: its typed settings, its arguments, the profile, device and options."""

    task: str
    stage: str
    settings: Any
    args: argparse.Namespace
    profile: ProfileInfo
    device: torch.device
    progress: bool = True
    resolved_path: str | None = None

    @property
    def hash(self) -> str:
        """The job's rerun hash: the hash of exactly the settings it reads."""
        return settings_hash(self.settings)

    def provenance(self, seeds: list[int] | None = None, **extra: Any) -> dict[str, Any]:
        """The provenance record of this job's result."""
        return provenance(self.settings, self.device, seeds=seeds, profile=self.profile.name,
                          scale=self.profile.scale, task=self.task, stage=self.stage,
                          resolved_profile=self.resolved_path, **extra)


@dataclass(frozen=True)
class Stage:
    """One step of a task's pipeline: ``run(job)`` with ``settings(task_settings, args)`` as ``job.settings``.

    ``distributed``: the stage trains through the shared trainer on batches sharded over the ranks
    (``EpochBatches(rank=, world=)``), so with ``distributed.processes`` > 1 it runs under torchrun; a stage
    without it that reaches the trainer with more processes asked for is refused (a ConfigError naming the key).
    """

    name: str
    help: str
    settings: Callable[[Any, argparse.Namespace], Any]
    run: Callable[[Job], None]
    args: tuple[Arg, ...] = ()
    distributed: bool = False


@dataclass(frozen=True)
class Task:
    """A paper experiment: its params block, typed settings, stages and tables."""

    name: str
    paper: str
    title: str
    params: type  # the frozen dataclass declaring the task's params.yaml block
    build_settings: Callable[[ProfileInfo, Any], Any]  # (profile info, parsed params block) -> task settings
    stages: tuple[Stage, ...]
    tables: tuple[TableSpec, ...] = field(default=())

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise ConfigError(f"task {self.name!r} has no stage {name!r}; stages: {[s.name for s in self.stages]}")

    def table(self, name: str) -> TableSpec:
        for spec in self.tables:
            if spec.name == name:
                return spec
        raise ConfigError(f"task {self.name!r} has no table {name!r}; tables: {[t.name for t in self.tables]}")

    def settings(self, profile: Mapping[str, Any]) -> Any:
        """The task's typed settings from a resolved profile (built once per job or per Snakemake run)."""
        block = from_mapping(self.params, profile[self.name], f"profiles.{profile['name']}.{self.name}")
        return self.build_settings(ProfileInfo.of(profile), block)


_TASKS: dict[str, Task] = {}


def register(task: Task) -> Task:
    """Add ``task`` to the registry (called by each task package on import)."""
    if task.name in _TASKS and _TASKS[task.name] is not task:
        raise ValueError(f"task {task.name!r} is registered twice")
    _TASKS[task.name] = task
    return task


def tasks() -> dict[str, Task]:
    """Every registered task, importing the built-in task packages first."""
    for package in TASK_PACKAGES:
        importlib.import_module(package)
    return dict(_TASKS)


def get_task(name: str) -> Task:
    known = tasks()
    if name not in known:
        raise ConfigError(f"unknown task {name!r}; tasks: {sorted(known)}")
    return known[name]


def task_params() -> dict[str, type]:
    """Task name -> its params block dataclass (what params.yaml's schema is generated from)."""
    return {name: task.params for name, task in tasks().items()}


def all_tables() -> dict[str, TableSpec]:
    """Every declared table or figure by name, across tasks (names are unique)."""
    out: dict[str, TableSpec] = {}
    for task in tasks().values():
        for spec in task.tables:
            if spec.name in out:
                raise ValueError(f"table {spec.name!r} is declared by two tasks")
            out[spec.name] = spec
    return out
