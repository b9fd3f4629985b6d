"""A non-editable install (`pip install .` of the built wheel) runs the CLI, loads the schema and the claims ledger."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_install_runs_the_cli_outside_the_checkout(tmp_path):
    dist = tmp_path / "dist"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(REPO)],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = dist.glob("deqbench-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                             capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-3000:]
    # Dependencies (torch, ...) come from this environment; deqbench itself only from the wheel.
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "outer_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(venv / "bin" / "deqbench"), *args], cwd=work, capture_output=True, text=True,
                              env=env, timeout=600)

    where = subprocess.run([str(python), "-c", "import deqbench; print(deqbench.__file__)"], cwd=work,
                           capture_output=True, text=True, env=env)
    assert where.stdout.strip().startswith(site), where.stdout + where.stderr
    assert "jiio_adversarial" in run("list").stdout
    schema = run("schema")
    assert schema.returncode == 0 and '"jiio_generative"' in schema.stdout
    prepared = run("--params", str(REPO / "params.yaml"), "--profile", "smoke", "jiio_adversarial", "prepare",
                   "--dataset", "mnist", "--out", "prepared.pt")
    assert prepared.returncode == 0 and (work / "prepared.pt").exists(), prepared.stderr[-3000:]
    ledger = run("claims", "--results", str(work / "results"), "--out", str(work / "results" / "claims.csv"))
    assert ledger.returncode == 0, ledger.stderr[-3000:]
    assert "MOPT-1" in (work / "results" / "claims.csv").read_text()
