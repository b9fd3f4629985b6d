"""Shared fixtures: deterministic seeds, a guard that fails on host synchronisation, and the smoke pipeline run."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
import torch

# The speed-ratio options (--benchmark-compare-ratios, --benchmark-save-ratios) must exist whichever folder pytest
# starts from, so the plugin is registered here, at the root of the test tree.
pytest_plugins = ["tests.benchmarks.ratio_plugin"]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def single_thread():
    """Tiny tensors: one torch thread avoids OpenMP overhead (large on a loaded 2-core machine); restored after."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


class HostSyncError(AssertionError):
    pass


@contextlib.contextmanager
def forbid_host_sync() -> Iterator[None]:
    """Make every tensor->host read raise, so a test proves a loop never syncs.

    Covers ``.item()``, ``.tolist()``, ``.cpu()``, ``.numpy()`` and Python
    truth tests (``if tensor:``, ``bool(tensor)``, ``float(tensor)``).
    """
    names = ["item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__"]
    saved = {name: getattr(torch.Tensor, name) for name in names}

    def make(name: str):
        def blocked(self, *args, **kwargs):
            raise HostSyncError(f"host sync via Tensor.{name} inside a sync-free region")

        return blocked

    try:
        for name in names:
            setattr(torch.Tensor, name, make(name))
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch.Tensor, name, fn)


@pytest.fixture
def no_host_sync():
    return forbid_host_sync


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", default=False, help="also run end-to-end tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow end-to-end test: pass --run-slow (CI does)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def smoke(tmp_path_factory) -> Path:
    """The whole pipeline (every table, figure and the claims ledger) on the smoke profile, run once per session:
    tests/test_pipeline.py checks it, tests/test_slurm_cluster.py compares a Slurm run with it."""
    work = tmp_path_factory.mktemp("smoke")
    shutil.copy(REPO / "params.yaml", work / "params.yaml")
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "DVC_NO_ANALYTICS": "1"}
    env.setdefault("OMP_NUM_THREADS", "1")
    cmd = [str(bin_dir / "snakemake"), "-s", str(REPO / "Snakefile"), "--directory", str(work), "--cores", "2",
           "--config", "profile=smoke"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return work
