"""Reliability at the pipeline level (issue 13): R5 determinism (``--cores 1`` and ``--cores 2`` give identical
tables on the CPU), concurrency (a second ``snakemake`` on a directory in use is refused by Snakemake's lock and
corrupts nothing) and R3 divergence (a NaN injected into f mid-solve stops the run with an error naming the job
and the iteration; no table is written and the previous table is kept byte for byte).  Table 8 on the smoke
profile is the workload (it prepares the CIFAR-10 stand-in, trains three models, clean, PGD and JIO, and evaluates
them: the rules of Table 5 on one dataset, about half a minute); the two-core run is the session's smoke pipeline
(tests/conftest.py)."""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TARGET = "results/table8.csv"
WALL_CLOCK_COLUMNS = {"train_seconds_mean"}  # measured time: legitimately differs between any two runs


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "DVC_NO_ANALYTICS": "1",
           "OMP_NUM_THREADS": "1", **extra}
    if "DEQBENCH_FAULT" not in extra:
        env.pop("DEQBENCH_FAULT", None)
    return env


def _command(workdir: Path, cores: int, *extra: str) -> list[str]:
    return [str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "--directory", str(workdir), "--cores",
            str(cores), TARGET, *extra, "--config", "profile=smoke"]


def _workdir(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    return root


def _table_without_wall_clock(path: Path) -> list[dict[str, str]]:
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    return [{k: v for k, v in row.items() if k not in WALL_CLOCK_COLUMNS} for row in rows]


@pytest.fixture(scope="module")
def one_core(tmp_path_factory) -> dict[str, object]:
    """Table 8 with ``--cores 1``; while it runs, the same command is started twice more in its directory (plainly,
    and with ``--rerun-incomplete``).  Returns the directory and the two refused invocations."""
    work = _workdir(tmp_path_factory.mktemp("reliability") / "one_core")
    first = subprocess.Popen(_command(work, 1), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env=_env())
    try:
        locks = work / ".snakemake" / "locks"
        deadline = time.monotonic() + 120
        while not (locks.is_dir() and any(locks.iterdir())) and time.monotonic() < deadline:
            time.sleep(0.2)
        plain = subprocess.run(_command(work, 1), capture_output=True, text=True, env=_env(), timeout=120)
        insisting = subprocess.run(_command(work, 1, "--rerun-incomplete"), capture_output=True, text=True,
                                   env=_env(), timeout=120)
        still_running = first.poll() is None
        log, _ = first.communicate(timeout=900)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, log[-3000:]
    return {"work": work, "plain": plain, "insisting": insisting, "still_running": still_running}


def test_one_and_two_cores_give_identical_tables(one_core, smoke) -> None:
    """R5: the session's smoke run used --cores 2; the same table with --cores 1 is identical but for wall clock."""
    work = one_core["work"]
    assert _table_without_wall_clock(work / TARGET) == _table_without_wall_clock(smoke / TARGET)


def test_a_second_invocation_on_a_directory_in_use_is_refused(one_core) -> None:
    """The same command again while the first runs: refused, by Snakemake's lock or (while a job of the first run
    is writing) because its outputs are marked incomplete; insisting with --rerun-incomplete still meets the lock.
    The first run then finishes normally (its table is checked against the two-core run above)."""
    assert one_core["still_running"], "the first run ended before the second could start"
    plain, insisting = one_core["plain"], one_core["insisting"]
    output = plain.stdout + plain.stderr
    assert plain.returncode != 0, output[-2000:]
    assert "Directory cannot be locked" in output or "IncompleteFilesException" in output, output[-2000:]
    output = insisting.stdout + insisting.stderr
    assert insisting.returncode != 0 and "Directory cannot be locked" in output, output[-2000:]


def test_nan_mid_solve_stops_the_run_and_keeps_the_previous_table(one_core) -> None:
    """R3: every training job rerun with f poisoned from its 3rd evaluation in step 1; the first job to get there
    fails with the message on the console, Snakemake stops, and the finished Table 8 stays byte for byte."""
    work = one_core["work"]
    before = {p: (work / p).read_bytes() for p in ("results/table8.csv", "results/table8.md")}
    proc = subprocess.run(_command(work, 2, "--forcerun", "adversarial_train"), capture_output=True, text=True,
                          env=_env(DEQBENCH_FAULT="nan:1:3"), timeout=900)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output[-3000:]
    assert "non-finite values at iteration 3 of fixed-point solve 1 in training step 1" in output, output[-3000:]
    assert "Error in rule adversarial_train" in output
    assert {p: (work / p).read_bytes() for p in before} == before
