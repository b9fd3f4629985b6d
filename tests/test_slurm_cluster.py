"""The pipeline on a real single-node Slurm cluster (slurmctld + slurmd + munged from Debian's packages) through
Snakemake's Slurm executor and profiles/slurm: a representative subset of the smoke tables, one or more per paper
experiment, must equal the local smoke run's, cell for cell, except columns that measure wall clock.

Needs root.  Slurm is installed with apt-get only in CI (CI=true) when slurmctld is missing; elsewhere without it,
or without root, the test is skipped.  The daemons run from a scratch directory (tests/cluster/start_slurm.sh) and are
stopped by their pid files afterwards, also when the test fails (tests/cluster/stop_slurm.sh)."""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CLUSTER = REPO / "tests" / "cluster"
APT_PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
pytestmark = pytest.mark.slow

# Through Slurm every job also starts its own Snakemake inside the allocation (about 10 s of CPU each): the whole
# smoke pipeline (181 jobs) would take many times CI's budget for this test on 2 cores, so it runs the three targets
# whose 6 sbatch jobs cover every kind of job a GPU run asks for (job_resources in pipelines/common.smk): a prepare,
# two trainings, two evaluations and a timing job on a whole node (Table 7).  Figure 4's CSV is the generative task's
# whole path (prepare, train, a JIIO evaluation); Table 7 is the meta-learning task's training and timing.
TARGETS = ("table7", "figure4", "implicit2_amortization")
# Columns that legitimately differ between two runs of the same jobs, with why: they measure wall clock, which
# depends on the machine's load and on what runs beside the job.  Every other column (accuracies, PSNRs, costs,
# residuals, iteration, evaluation and parameter counts, device and threads, the paper's reference values, profile
# and data source) must be identical.  No table holds a path (paths are in the provenance JSON, not compared).
WALL_CLOCK = {
    "table7": {"ms_per_batch": "inner-loop wall clock per batch", "ms_per_task": "the same per task",
               "ratio_to_jiio": "ratio of two wall clocks"},
    "figure4": {},
    "implicit2_amortization": {"step_seconds_amortized": "wall clock of one amortised training step",
                               "step_seconds_full_solve": "wall clock of one full-solve training step"},
}


def _env() -> dict[str, str]:
    """The test's environment for Snakemake: the project's interpreter first on PATH, one BLAS thread per job."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _slurm_installed() -> bool:
    """Whether the daemons and the client commands the test uses are installed."""
    tools = ("slurmctld", "slurmd", "munged", "sbatch", "squeue", "scontrol")
    return all(shutil.which(tool) or Path("/usr/sbin", tool).exists() for tool in tools)


def _install_slurm() -> None:
    """Debian's Slurm and munge packages (about 20 s); the image's policy-rc.d keeps apt from starting them."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *APT_PACKAGES]):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory) -> Iterator[Path]:
    """A running single-node Slurm cluster (partition `debug`); its scratch directory, with the daemons' logs."""
    if os.geteuid() != 0:
        pytest.skip("the Slurm test cluster needs root (it starts munged, slurmctld and slurmd)")
    if not _slurm_installed():
        if os.environ.get("CI") != "true":
            pytest.skip("Slurm is not installed (apt-get install " + " ".join(APT_PACKAGES) + "); only CI (CI=true) "
                        "installs it itself")
        _install_slurm()
    conf = Path("/etc/slurm/slurm.conf")
    if conf.exists() and "deqbench single-node test cluster" not in conf.read_text(errors="replace"):
        pytest.skip(f"{conf} belongs to another Slurm installation; the test cluster would replace it")
    scratch = tmp_path_factory.mktemp("slurm")
    try:
        start = subprocess.run(["bash", str(CLUSTER / "start_slurm.sh"), str(scratch)], capture_output=True,
                               text=True, timeout=120)
        assert start.returncode == 0, start.stdout + start.stderr + _daemon_logs(scratch)
        yield scratch
    finally:
        subprocess.run(["bash", str(CLUSTER / "stop_slurm.sh"), str(scratch)], timeout=180)


def _daemon_logs(scratch: Path) -> str:
    """For a failure message: the queue with each job's state and reason (a job that can never start says why
    here), the node, and the tails of slurmctld's and slurmd's logs."""
    state = ""
    for cmd in (["squeue", "-t", "all", "-o", "%i %j %T %r %C %m"], ["sinfo", "-N", "-o", "%N %T %c %m"]):
        try:
            shown = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
            state += f"\n--- {' '.join(cmd)}\n{shown.stdout}{shown.stderr}"
        except subprocess.TimeoutExpired:
            state += f"\n--- {' '.join(cmd)}: no answer in 30 s"
    return state + "".join(f"\n--- {log}\n" + log.read_text(errors="replace")[-3000:]
                           for log in sorted((scratch / "log").glob("*.log")))


def _run_locally(work: Path, targets: list[str]) -> None:
    """Build `targets` on the smoke profile in `work` with the local executor, as the `smoke` fixture does."""
    shutil.copy(REPO / "params.yaml", work / "params.yaml")
    cmd = [str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "--directory", str(work), "--cores", "2",
           *targets, "--config", "profile=smoke"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=1800)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]


@pytest.fixture(scope="module")
def local_run(request, tmp_path_factory) -> Path:
    """The local smoke run to compare with: the session's whole-pipeline run when other tests need it anyway, else
    only the targets."""
    others = [item for item in request.session.items
              if "smoke" in getattr(item, "fixturenames", ()) and item.get_closest_marker("skip") is None]
    if others:
        return request.getfixturevalue("smoke")
    work = tmp_path_factory.mktemp("local")
    _run_locally(work, [f"results/{name}.csv" for name in TARGETS])
    return work


def rows(path: Path) -> list[dict[str, str]]:
    """A CSV table's rows, every cell as written."""
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_slurm_run_matches_the_local_run(slurm_cluster: Path, local_run: Path, tmp_path: Path) -> None:
    """Every target through `--executor slurm` with profiles/slurm: each job went through sbatch with its rule's
    resources, and every table equals the local run's except its wall-clock columns."""
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(REPO / "params.yaml", work / "params.yaml")
    targets = [f"results/{name}.csv" for name in TARGETS]
    # No slurmdbd on the test cluster: job states come from squeue (start_slurm.sh keeps finished jobs an hour), and
    # there is no account.  Snakemake notices a finished job only at its next status check (up to 20-30 s later),
    # so it keeps many jobs queued and the node never waits for it (with --jobs 4 it often did).  SIGTERM does not
    # stop a Snakemake waiting on Slurm: timeout -k kills it, after about 3 times the run's usual wall time.
    cmd = ["timeout", "-k", "30", "900", str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"),
           "--directory", str(work), "--workflow-profile", str(REPO / "profiles" / "slurm"),
           "--jobs", "12", "--cores", "2", "--slurm-no-account", "--slurm-status-command", "squeue",
           "--slurm-init-seconds-before-status-checks", "2", *targets,
           "--config", "profile=smoke", "slurm_partition=debug"]
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=1000)
    elapsed = time.monotonic() - started
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:] + _daemon_logs(slurm_cluster)

    submitted = re.findall(r"submitted with SLURM jobid (\d+) \(log: \S*/rule_(\w+)/", out)
    print(f"\nSlurm run: {len(submitted)} jobs through sbatch in {elapsed:.0f} s")
    assert {rule for _, rule in submitted} == {"jiio_meta_train", "jiio_meta_timing", "generative_prepare",
                                               "generative_train", "generative_acceleration",
                                               "implicit2_fit_amortization"}, out[-4000:]
    # The rules' resources reached sbatch (job_resources in pipelines/common.smk), partition included; slurmctld
    # keeps finished jobs for an hour (MinJobAge in start_slurm.sh).
    expected = {"generative_train": ("Partition=debug", "TimeLimit=04:00:00", "MinMemoryNode=8000M", "NumTasks=1"),
                "jiio_meta_timing": ("Partition=debug", "TimeLimit=02:00:00", "OverSubscribe=NO", "NumCPUs=2")}
    for rule, fields in expected.items():
        job = next(job_id for job_id, name in submitted if name == rule)
        shown = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
        assert all(field in shown for field in fields), (rule, fields, shown)

    for name in TARGETS:
        ours, reference = rows(work / f"results/{name}.csv"), rows(local_run / f"results/{name}.csv")
        assert ours and len(ours) == len(reference), name
        assert list(ours[0]) == list(reference[0]), name
        skipped = set(WALL_CLOCK[name])
        assert skipped <= set(ours[0]), (name, skipped - set(ours[0]))  # a renamed column must be renamed here too
        for row, ref in zip(ours, reference):
            differing = {k: (row[k], ref[k]) for k in row if k not in skipped and row[k] != ref[k]}
            assert not differing, (name, differing)
