# Shared by every rule file: the resolved profile, the one command line every job runs through, report captions.
#
# The profile is resolved once here, with `--configfile` files merged and `--config` values applied, validated,
# and written to .deqbench/profiles/<name>-<hash>.json; every job reads that file (`--resolved`), so a job computes
# exactly what this DAG was built from.  Each rule's `params.settings` is the hash of the typed settings its job
# reads (deqbench.experiments.pipeline), so editing a setting reruns exactly the jobs that read it; the job
# refuses to run if its own hash differs (`--expect-hash`).
import sys
from typing import NamedTuple

from deqbench.experiments.config import ConfigError
from deqbench.experiments.pipeline import Pipeline

# Slurm partitions (profiles/slurm): `--config slurm_partition=NAME [slurm_gpu_partition=NAME]`.  Not params.yaml
# keys, so they are taken out of the config before the profile is resolved and validated.
SLURM_PARTITION = config.pop("slurm_partition", None)
SLURM_GPU_PARTITION = config.pop("slurm_gpu_partition", None) or SLURM_PARTITION

try:
    PIPE = Pipeline(config, workflow.config_settings.config)
except ConfigError as err:
    raise ValueError(f"params.yaml / --config / --configfile: {err}") from None

P = PIPE.name
PY = sys.executable  # the interpreter running Snakemake, i.e. the project's environment
RESOLVED = PIPE.resolved
GPU = PIPE.uses_gpu
JOB_THREADS = 1 if GPU == 0 else 4
CAPTION = "report/caption.rst"

# {threads} caps torch and BLAS at the rule's thread count; values are shell-quoted (:q) everywhere.
DEQBENCH = ("OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads} {PY:q} -m deqbench --resolved {RESOLVED:q} "
            "--threads {threads} --expect-hash {params.settings:q}")


def train_tasks() -> int:
    """The one place for the number of Slurm tasks (processes) of a training job: the profile's
    `distributed.processes` (data-parallel training under torchrun, deqbench/experiments/distributed.py; 1 by
    default).  `job_resources("train")` turns it into the job's `tasks` (sbatch --ntasks) on the CPU, and into N
    times the GPUs (one per process) on a GPU profile; the job's one command starts the N processes itself."""
    return PIPE.info.distributed.processes


class JobKind(NamedTuple):
    """What one kind of job asks a cluster for."""

    gpu: bool  # runs on the GPU when the profile does
    mem_mb: int  # memory at reduced scale (rules may declare more)
    runtime: int  # minutes at reduced scale
    paper_runtime: int  # minutes at paper scale


JOB_KINDS = {
    "prepare": JobKind(gpu=False, mem_mb=4000, runtime=30, paper_runtime=240),
    "cpu": JobKind(gpu=False, mem_mb=2000, runtime=30, paper_runtime=120),  # small CPU-only jobs
    "train": JobKind(gpu=True, mem_mb=8000, runtime=240, paper_runtime=2880),
    "evaluate": JobKind(gpu=True, mem_mb=4000, runtime=120, paper_runtime=720),  # attacks, cells, figure data
    "alone": JobKind(gpu=True, mem_mb=4000, runtime=120, paper_runtime=240),  # timing: nothing may run beside it
}
PAPER_MEM_MB = 32000  # at paper scale (full CelebA / CIFAR / ImageNette in memory) every job asks at least this


def job_resources(kind: str, mem_mb: int | None = None) -> dict:
    """A rule's `resources`: memory, runtime (minutes), the GPU count when the resolved profile uses a GPU, the
    Slurm partition when `--config slurm_partition=...` names one, and for timing jobs a whole node (locally they
    take every core, see their `threads`).  Snakemake's Slurm executor turns them into sbatch options; a local run
    is bound only by the limits `--resources` sets (e.g. gpu=1).  `--set-resources RULE:KEY=VALUE` overrides one."""
    spec = JOB_KINDS[kind]
    paper = PIPE.info.scale == "paper"
    res = {"mem_mb": max(mem_mb or spec.mem_mb, PAPER_MEM_MB if paper else 0),
           "runtime": spec.paper_runtime if paper else spec.runtime}
    gpus = GPU if spec.gpu else 0
    if kind == "train":
        if gpus:
            res["tasks_per_gpu"] = 1  # the executor's default would take `tasks` per GPU
        else:
            res["tasks"] = train_tasks()
        gpus *= train_tasks()
    if gpus:
        res["gpu"] = gpus
    partition = SLURM_GPU_PARTITION if gpus else SLURM_PARTITION
    if partition is not None:
        res["slurm_partition"] = str(partition)
    if kind == "alone":
        res["slurm_extra"] = "--exclusive"
    return res


def table_outputs(spec):
    """A declared table's outputs; its HTML rendering, CSV and a figure's PNG go into the report under the paper's
    category."""
    out = spec.outputs()
    marked = {k: report(v, caption=CAPTION, category=spec.paper.upper(), subcategory=spec.title)
              for k, v in out.items() if k in ("html", "csv", "png")}
    return {**out, **marked}


def table_caption(spec):
    """The report's caption of a table: what it is and where the paper's values come from (the full caption, with
    seeds and device, heads results/<name>.md)."""
    return (f"{spec.title}. The paper's values ({spec.source}) sit in the columns marked as reference; the full "
            f"caption heads results/{spec.name}.md and the provenance is in results/{spec.name}.provenance.json.")
