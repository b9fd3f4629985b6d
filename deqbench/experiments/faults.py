"""Fault injection for the reliability tests (issue 13, R1 kill and resume).

``DEQBENCH_FAULT=step:K`` kills the process with SIGKILL right after optimiser step K of a training run;
``DEQBENCH_FAULT=write:K`` kills it in the middle of its K-th atomic file write (half of the bytes in the temporary
file, before the rename), as a crash or an out-of-memory kill would.  Unset in normal use: one environment lookup
per call, nothing else.
"""

from __future__ import annotations

import os
import signal
from typing import IO

ENV = "DEQBENCH_FAULT"
_writes = 0


def _wanted(kind: str) -> int | None:
    spec = os.environ.get(ENV)
    if not spec:
        return None
    name, _, index = spec.partition(":")
    if name not in ("step", "write") or not index.isdigit():
        raise ValueError(f"{ENV}={spec!r}: expected step:K or write:K")
    return int(index) if name == kind else None


def after_step(step: int) -> None:
    """Called after optimiser step ``step`` (1-based count of steps done)."""
    if _wanted("step") == step:
        os.kill(os.getpid(), signal.SIGKILL)


def during_write(fh: IO[bytes]) -> None:
    """Called by the atomic writer once the temporary file holds every byte, before it is renamed."""
    global _writes
    wanted = _wanted("write")
    if wanted is None:
        return
    _writes += 1
    if _writes == wanted:
        fh.flush()
        fh.truncate(max(fh.tell() // 2, 1))
        fh.flush()
        os.fsync(fh.fileno())
        os.kill(os.getpid(), signal.SIGKILL)
