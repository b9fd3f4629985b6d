"""What the Snakefile needs from deqbench: one resolved profile, and for every job the hash of what it reads.

:class:`Pipeline` applies the command line's overrides (``--configfile`` is merged by Snakemake; nested
``--config`` values arrive as strings and are re-typed here), resolves and validates the profile, builds every
task's typed settings once (so a bad key fails before any job starts), and writes the resolved profile to a
content-addressed file that every job reads with ``--resolved``.  :meth:`Pipeline.job_hash` is the rerun hash of
one job: the hash of exactly the settings object that job's stage will receive, computed by the same function.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Mapping

from deqbench.experiments.config import ProfileInfo, deep_merge, resolve_profile, retype_override_strings, write_resolved
from deqbench.experiments.registry import Task, tasks
from deqbench.experiments.settings import settings_hash

RESOLVED_DIR = ".deqbench/profiles"


class Pipeline:
    def __init__(self, config: Mapping[str, Any], command_line_config: Mapping[str, Any] | None = None,
                 resolved_dir: str | Path = RESOLVED_DIR) -> None:
        nested = {k: retype_override_strings(v) for k, v in (command_line_config or {}).items()
                  if isinstance(v, (Mapping, list))}
        self.profile = resolve_profile(deep_merge(config, nested))
        self.info = ProfileInfo.of(self.profile)
        self.tasks: dict[str, Task] = tasks()
        self.settings = {name: task.settings(self.profile) for name, task in self.tasks.items()}
        self.resolved = str(write_resolved(self.profile, resolved_dir))

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def uses_gpu(self) -> int:
        return 0 if self.info.device == "cpu" else 1

    def job_hash(self, task: str, stage: str, **args: Any) -> str:
        """The settings hash of one job of ``task``'s ``stage`` with these arguments (its rerun trigger)."""
        return settings_hash(self.tasks[task].stage(stage).settings(self.settings[task], argparse.Namespace(**args)))

    def table_hash(self, task: str, table: str) -> str:
        return settings_hash(self.tasks[task].table(table).settings_of(self.settings[task]))
