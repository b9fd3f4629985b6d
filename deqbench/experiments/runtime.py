"""What every job shares at run time: device choice, thread limits, seeding, device synchronisation for timing."""

from __future__ import annotations

import os
import random
from typing import Any, Mapping

import numpy as np
import torch


class DivergenceError(RuntimeError):
    """A NaN/inf loss or equilibrium residual: the run stops instead of writing a result."""


def resolve_device(requested: str) -> torch.device:
    """'auto' -> cuda if available else cpu; 'cuda' without a GPU is an error."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("profile asks for device 'cuda' but no CUDA device is available; use device: auto or cpu")
    return torch.device(requested)


def limit_threads(threads: int | None) -> int:
    """Use at most ``threads`` CPU threads (the Snakemake rule's ``threads``), never more than the machine has.

    Sets torch's intra-op pool and, through threadpoolctl, the BLAS/OpenMP pools numpy and scipy use.  Returns
    the number of threads in use.
    """
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    n = max(1, min(threads, available)) if threads else torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(n)
    except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn
        pass
    return n


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def sync(device: torch.device) -> None:
    """Wait for queued device work (timing boundaries only, never inside a solver loop)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def data_source_label(meta: Mapping[str, Any]) -> str:
    """How an output names its data: the dataset, and for an embedded stand-in what it stands in for."""
    if meta.get("stand_in_for"):
        return f"{meta['name']} (embedded stand-in for {meta['stand_in_for']})"
    return str(meta["name"])


def device_name(device: Mapping[str, Any]) -> str:
    """A provenance device record as a table cell: the GPU name, or the CPU and its thread count."""
    return device.get("name") or f"cpu ({device.get('cpu')}, {device.get('threads')} threads)"
