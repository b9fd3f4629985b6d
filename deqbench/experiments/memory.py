"""Peak working memory of one call, for the JIIO paper's appendix C.6 comparisons (JIIO vs Adam, JIO vs PGD).

On CUDA: the peak allocation above the level before the call, in this process.  On the CPU: the peak resident set
above the level before the call, which belongs to the whole process, so each method is measured in a fresh child
process (:func:`probe_in_child`) that reads exactly the caller's settings.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import torch

from deqbench.experiments.registry import Job


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux >= 4.0: write 5 to /proc/self/clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _rss_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def peak_memory(fn: Callable[[], Any], device: torch.device) -> dict[str, Any]:
    """Run ``fn`` once and return its peak working memory above the pre-call level, and what was measured."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        hwm_reset = _reset_peak_rss()
        before = _rss_bytes("VmRSS") if hwm_reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak, kind = torch.cuda.max_memory_allocated(device) - before, "cuda peak allocated above pre-call"
    elif hwm_reset:
        peak, kind = _rss_bytes("VmHWM") - before, "cpu peak RSS above pre-call (child process, VmHWM reset)"
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
        kind = "cpu growth of the process's peak RSS (child process; no VmHWM reset on this OS, underestimates)"
    return {"peak_bytes": int(peak), "peak_gib": peak / 2**30, "measure": kind}


def probe_in_child(job: Job, task: str, stage: str, args: list[str]) -> dict[str, Any]:
    """Run ``deqbench TASK STAGE ARGS`` in a fresh process with this job's settings (refusing any others) and
    return the JSON object the stage prints last."""
    if job.resolved_path:
        settings = ["--resolved", job.resolved_path]
    else:
        settings = ["--params", job.args.params, *(["--profile", job.args.profile] if job.args.profile else [])]
        settings += [arg for item in job.args.set for arg in ("--set", item)]
    settings += ["--expect-hash", job.hash]
    threads = str(torch.get_num_threads())
    cmd = [sys.executable, "-m", "deqbench", *settings, "--threads", threads, "--no-progress", task, stage, *args]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": threads})
    if out.returncode != 0:
        raise RuntimeError(f"{task} {stage} {' '.join(args)} failed (exit {out.returncode}):\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])
