"""Fault injection for the reliability tests (issue 13, R1 kill and resume).

``DEQBENCH_FAULT=step:K`` kills the process with SIGKILL right after optimiser step K of a training run;
``DEQBENCH_FAULT=write:K`` kills it in the middle of its K-th atomic file write (half of the bytes in the temporary
file, before the rename), as a crash or an out-of-memory kill would; ``DEQBENCH_FAULT=nan:K:I`` makes f return NaN
from its I-th evaluation on in every fixed-point solve of optimiser step K (R3 divergence; see
:mod:`deqbench.core.watch`).  Unset in normal use: one environment lookup per call, nothing else.
"""

from __future__ import annotations

import os
import signal
from typing import IO

ENV = "DEQBENCH_FAULT"
_writes = 0


def _parsed() -> tuple[str, tuple[int, ...]] | None:
    spec = os.environ.get(ENV)
    if not spec:
        return None
    name, *numbers = spec.split(":")
    arity = {"step": 1, "write": 1, "nan": 2}
    if name not in arity or len(numbers) != arity[name] or not all(n.isdigit() and int(n) > 0 for n in numbers):
        raise ValueError(f"{ENV}={spec!r}: expected step:K, write:K or nan:K:I (positive integers)")
    return name, tuple(int(n) for n in numbers)


def _wanted(kind: str) -> int | None:
    parsed = _parsed()
    return parsed[1][0] if parsed is not None and parsed[0] == kind else None


def nan_from(step: int) -> int | None:
    """For optimiser step ``step`` (1-based): the f evaluation from which solves return NaN, or None."""
    parsed = _parsed()
    if parsed is None or parsed[0] != "nan" or parsed[1][0] != step:
        return None
    return parsed[1][1]


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
