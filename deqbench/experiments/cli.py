"""The one command line: ``python -m deqbench`` (or the ``deqbench`` console script).

::

    deqbench list                                            # tasks, stages and tables
    deqbench [--profile P | --resolved F] TASK STAGE [...]   # one job, e.g. jiio_adversarial train --dataset mnist ...
    deqbench [--profile P | --resolved F] TASK table NAME INPUT... --out results/NAME.csv
    deqbench claims --out results/claims.csv                 # the claims ledger from the tables in results/
    deqbench schema                                          # the JSON schema of params.yaml

Settings come from ``--resolved`` (the resolved profile Snakemake wrote, so a job reads exactly what its DAG was
built from) or from ``--params``/``--profile``.  ``--expect-hash`` makes a job refuse to run when its settings
differ from what the caller hashed.  ``--threads`` caps torch/BLAS threads (Snakemake passes the rule's
``threads``).  Errors print one line naming the key or path and exit with status 1; nothing is written.

With ``distributed.processes: N > 1`` in the profile, a stage declared ``distributed`` (a training stage whose
batches are sharded over processes) re-runs this same command under ``torchrun --standalone --nproc_per_node N``
and waits for it; the N ranks see torchrun's environment and train together instead of launching again
(:mod:`deqbench.experiments.distributed`).  ``--threads`` is then the whole job's budget, split over the ranks.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from deqbench.data import DatasetFormatError, DatasetNotFoundError
from deqbench.data.pinned import SourceChangedError
from deqbench.experiments import claims as claims_module
from deqbench.experiments import distributed
from deqbench.experiments.config import (
    ConfigError, ProfileInfo, load_params, load_resolved, params_schema, resolve_profile,
)
from deqbench.experiments.io import CorruptArtifactError, UnsafeArtifactError
from deqbench.experiments.registry import Job, Stage, Task, get_task, task_params, tasks
from deqbench.experiments.runtime import DivergenceError, limit_threads, resolve_device
from deqbench.experiments.settings import settings_hash
from deqbench.experiments.tables import write_table

USER_ERRORS = (ConfigError, DatasetNotFoundError, DatasetFormatError, DivergenceError, UnsafeArtifactError,
               CorruptArtifactError, FileNotFoundError, SourceChangedError, distributed.DistributedRunError)
# A path that cannot be written or read as asked (a file where a folder should be, no permission): one line naming it.
PATH_ERRORS = (PermissionError, FileExistsError, NotADirectoryError, IsADirectoryError)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deqbench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("--profile", default=None, help="profile name (default: the params file's `profile`)")
    parser.add_argument("--resolved", default=None, help="a resolved profile JSON written by the pipeline")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one setting of the profile, e.g. jiio_adversarial.train.max_steps=10 "
                             "(VALUE is YAML; repeatable; not with --resolved)")
    parser.add_argument("--expect-hash", default=None, help="refuse to run unless the job's settings hash matches")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch and BLAS")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    commands = parser.add_subparsers(dest="task", required=True, metavar="TASK|list|claims|schema")
    commands.add_parser("list", help="tasks, their stages and tables")
    commands.add_parser("schema", help="print the JSON schema of params.yaml")
    claims = commands.add_parser("claims", help="evaluate the claims ledger on the tables in --results")
    claims_module.add_arguments(claims)
    for task in tasks().values():
        task_parser = commands.add_parser(task.name, help=task.title)
        stages = task_parser.add_subparsers(dest="stage", required=True)
        for stage in task.stages:
            sub = stages.add_parser(stage.name, help=stage.help)
            for arg in stage.args:
                sub.add_argument(f"--{arg.name}", type=arg.type, required=arg.required, default=arg.default,
                                 nargs=arg.nargs, help=arg.help)
        table = stages.add_parser("table", help="assemble a table or figure from per-job results")
        table.add_argument("name", choices=[t.name for t in task.tables])
        table.add_argument("--out", required=True, help="the table's CSV path; the other outputs go beside it")
        table.add_argument("inputs", nargs="+", help="per-job result files")
    return parser


def _profile(args: argparse.Namespace) -> dict[str, Any]:
    """The resolved profile: the pipeline's file, or the params file with ``--set`` overrides applied."""
    if args.resolved:
        if args.set:
            raise ConfigError("--set cannot change a --resolved profile (it is exactly what the pipeline ran)")
        return load_resolved(args.resolved)
    params = load_params(args.params)
    name = args.profile or params.get("profile")
    for item in args.set:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        node = params.setdefault("profiles", {}).setdefault(name, {})
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: {part!r} is not a mapping")
        node[leaf] = yaml.safe_load(text)
    return resolve_profile(params, name)


def _list() -> None:
    for task in tasks().values():
        print(f"{task.name}: {task.title} ({task.paper})")
        for stage in task.stages:
            print(f"  {stage.name:14s} {stage.help}")
        for spec in task.tables:
            print(f"  table {spec.name:8s} {spec.title}")


def check_input_profiles(inputs: list[str], profile: str) -> None:
    """Refuse to assemble a table from per-job results another profile produced (their provenance says which)."""
    for path in inputs:
        if not str(path).endswith(".json") or not Path(path).is_file():
            continue
        try:
            recorded = json.loads(Path(path).read_text()).get("provenance", {}).get("profile")
        except (UnicodeDecodeError, json.JSONDecodeError, AttributeError) as err:
            raise ConfigError(f"{path}: not a readable result file ({err})") from None
        if recorded is not None and recorded != profile:
            raise ConfigError(f"{path} was produced by profile {recorded!r}, but this table is built for profile "
                              f"{profile!r}; rebuild the input with the same profile")


def _distributed_stages() -> tuple[str, ...]:
    """``TASK STAGE`` of every stage that trains data-parallel over several processes."""
    return tuple(f"{t.name} {s.name}" for t in tasks().values() for s in t.stages if s.distributed)


def _launch(task: Task, stage: Stage, args: argparse.Namespace, processes: int, where: str) -> None:
    """Run this same command as ``processes`` ranks under torchrun; a failed rank fails the job."""
    argv = args.argv if args.argv is not None else sys.argv[1:]
    per_rank = max(1, args.threads // processes) if args.threads else None
    print(f"{task.name} {stage.name}: {processes} processes under torchrun ({where})", file=sys.stderr)
    status = distributed.launch(argv, processes, per_rank)
    if status != 0:
        raise distributed.DistributedRunError(f"{task.name} {stage.name}: distributed training failed (torchrun exit "
                                              f"status {status}); the failing rank's message is above")


def run_task(task: Task, args: argparse.Namespace) -> None:
    """Build the job's typed settings from the resolved profile and run the stage (or assemble the table).

    A ``distributed`` stage with ``distributed.processes`` > 1 runs under torchrun (:func:`_launch`); inside it,
    this function joins the process group and runs the stage as one rank.
    """
    profile = _profile(args)
    task_settings = task.settings(profile)
    if args.stage == "table":
        spec = task.table(args.name)
        settings = spec.settings_of(task_settings)
    else:
        stage = task.stage(args.stage)
        settings = stage.settings(task_settings, args)
    actual = settings_hash(settings)
    if args.expect_hash is not None and args.expect_hash != actual:
        raise ConfigError(f"{task.name} {args.stage}: settings hash {actual} differs from the expected "
                          f"{args.expect_hash} (the job would not compute what the pipeline asked for)")
    info = ProfileInfo.of(profile)
    if args.stage == "table":
        limit_threads(args.threads)
        check_input_profiles(args.inputs, info.name)
        job = Job(task.name, "table", settings, args, info, resolve_device("cpu"), False, args.resolved)
        built = spec.build(settings, args.inputs)
        outputs = write_table(spec, built, args.out, job.provenance(seeds=built.provenance.get("seeds")))
        print(f"wrote {', '.join(str(p) for p in outputs.values())}")
        return
    processes, where = info.distributed.processes, f"profiles.{info.name}.distributed.processes"
    ranks = distributed.launched_world_size()
    if ranks > 1:
        if not stage.distributed:
            raise ConfigError(f"{task.name} {stage.name} runs in one process, but was started as {ranks} ranks "
                              f"(WORLD_SIZE); run it without torchrun")
        if ranks != processes:
            raise ConfigError(f"{where} is {processes}, but this job was started as {ranks} ranks (WORLD_SIZE); "
                              f"set it to {ranks} or start {processes} ranks")
    elif processes > 1 and stage.distributed:
        _launch(task, stage, args, processes, where)
        return
    threads = limit_threads(max(1, args.threads // ranks) if args.threads else None)
    device = resolve_device(info.device)
    if ranks > 1:
        device = distributed.init(info.distributed.backend, device)
    try:
        job = Job(task.name, stage.name, settings, args, info, device,
                  not args.no_progress and distributed.is_main(), args.resolved)
        rank = f", rank {distributed.rank()} of {ranks}" if ranks > 1 else ""
        print(f"{task.name} {stage.name}: profile {info.name}, settings {actual}, device {job.device}, "
              f"{threads} threads{rank}", file=sys.stderr)
        with distributed.requested(processes, where, _distributed_stages()):
            stage.run(job)
    finally:
        distributed.shutdown()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.argv = argv  # a distributed job re-runs exactly this command line under torchrun
    try:
        if args.task == "list":
            _list()
        elif args.task == "schema":
            print(json.dumps(params_schema(task_params()), indent=2))
        elif args.task == "claims":
            claims_module.run(args)
        else:
            run_task(get_task(args.task), args)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except PATH_ERRORS as err:
        print(f"error: {err.filename}: {err.strerror or type(err).__name__} (cannot create or write the output "
              f"there; is a file in the way of a folder?)", file=sys.stderr)
        return 1
    return 0
