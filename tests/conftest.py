"""Shared fixtures: deterministic seeds and a guard that fails on host synchronisation."""

from __future__ import annotations

import contextlib
from typing import Iterator

import pytest
import torch


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
