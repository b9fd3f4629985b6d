"""Data-parallel training over several processes (a profile's ``distributed`` key).

With ``distributed.processes: N > 1`` the command line re-runs a training job under ``torchrun --standalone
--nproc_per_node N`` (:func:`launch`); each process (a *rank*) is told so by torchrun's ``RANK`` / ``WORLD_SIZE`` /
``LOCAL_RANK`` and joins one process group (:func:`init`: gloo on the CPU, nccl on GPUs, one GPU per rank).  The
shared trainer (:mod:`deqbench.experiments.trainer`) then

* feeds each rank its contiguous share of every global batch (``EpochBatches(rank=, world=)``),
* averages the parameter gradients over the ranks after every backward (:func:`average_gradients`), so with equal
  shares one optimiser step equals the one-process step on the whole batch with the mean loss,
* agrees on the divergence check (:func:`all_true`) and on the logged scalars (:func:`mean`), and
* writes checkpoints from rank 0 only, the other ranks waiting for it (:func:`barrier`).

Every function here is a no-op (or the identity) outside a process group of two or more ranks, so a one-process
run executes exactly the code it did before this module existed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from typing import Any, Iterable, Iterator

import torch
from torch import Tensor, nn

from deqbench.experiments.settings import ConfigError

LAUNCHER_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


class DistributedRunError(RuntimeError):
    """A rank of a distributed job failed; its own message was printed above by that rank."""


# ----------------------------------------------------------------------------- launching


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher that sets RANK, WORLD_SIZE, LOCAL_RANK)."""
    return all(name in os.environ for name in LAUNCHER_ENV)


def launched_world_size() -> int:
    """The number of ranks the launcher started (1 outside a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1")) if launched() else 1


def torchrun_command(argv: list[str], processes: int) -> list[str]:
    """The command that runs ``python -m deqbench ARGV`` as ``processes`` ranks on this machine."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
            "--module", "deqbench", *argv]


def launch(argv: list[str], processes: int, threads_per_process: int | None = None) -> int:
    """Run ``deqbench ARGV`` under torchrun with ``processes`` ranks and return torchrun's exit status.

    SIGINT / SIGTERM received meanwhile (Ctrl-C, a cancelled Snakemake or Slurm job) are passed on to torchrun,
    which stops every rank.
    """
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(threads_per_process or 1))  # torchrun would set 1 and warn
    child = subprocess.Popen(torchrun_command(argv, processes), env=env)
    forwarded: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            forwarded[signum] = signal.signal(signum, lambda s, _frame: child.send_signal(s))
    try:
        return child.wait()
    finally:
        for signum, handler in forwarded.items():
            signal.signal(signum, handler)


# ----------------------------------------------------------------------------- the process group


def init(backend: str, device: torch.device) -> torch.device:
    """Join the launcher's process group and return this rank's device (``cuda:LOCAL_RANK`` on GPUs).

    ``backend``: ``auto`` (nccl on CUDA, gloo on the CPU), ``gloo`` or ``nccl`` (CUDA only).
    """
    import torch.distributed as dist

    if not dist.is_available():
        raise ConfigError("distributed.processes > 1, but this torch build has no torch.distributed")
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and device.type != "cuda":
        raise ConfigError("distributed.backend: nccl needs CUDA devices; use auto or gloo on the CPU")
    if device.type == "cuda":
        local, visible = int(os.environ["LOCAL_RANK"]), torch.cuda.device_count()
        if local >= visible:
            raise ConfigError(f"distributed.processes: each rank trains on a GPU of its own, but rank {local} "
                              f"finds only {visible} GPU(s) on this machine; ask for at most {visible} processes")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend)
    return device


def shutdown() -> None:
    """Leave the process group (if this process joined one)."""
    if active_group():
        import torch.distributed as dist

        dist.destroy_process_group()


def active_group() -> bool:
    """Whether this process belongs to an initialised process group (of any size)."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Number of ranks training together (1 without a process group)."""
    if not active_group():
        return 1
    import torch.distributed as dist

    return dist.get_world_size()


def rank() -> int:
    """This process's rank (0 without a process group)."""
    if not active_group():
        return 0
    import torch.distributed as dist

    return dist.get_rank()


def is_main() -> bool:
    """Whether this process writes outputs (rank 0, or the only process)."""
    return rank() == 0


def barrier() -> None:
    """Wait until every rank arrives here (no-op in one process)."""
    if world_size() > 1:
        import torch.distributed as dist

        dist.barrier()


# ----------------------------------------------------------------------------- collectives the trainer uses


def broadcast_state(module: nn.Module) -> None:
    """Give every rank rank 0's parameters and buffers (as DistributedDataParallel does when it wraps a model)."""
    if world_size() == 1:
        return
    import torch.distributed as dist

    with torch.no_grad():
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, src=0)


def average_gradients(parameters: Iterable[nn.Parameter]) -> None:
    """Replace every parameter's gradient by its mean over the ranks, in one all-reduce per device and dtype.

    A parameter without a gradient on some ranks counts as zero there (its share of the batch did not reach it);
    one without a gradient on every rank keeps none, as in one process.  With equal shares of the batch and a loss
    that is a mean over examples, the result is the gradient of the mean loss over the whole batch.
    """
    world = world_size()
    if world == 1:
        return
    import torch.distributed as dist

    groups: dict[tuple[torch.device, torch.dtype], list[nn.Parameter]] = {}
    for p in parameters:
        if p.requires_grad:
            groups.setdefault((p.device, p.dtype), []).append(p)
    for (device, dtype), params in groups.items():
        present = torch.tensor([float(p.grad is not None) for p in params], device=device, dtype=dtype)
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params]
                         + [present])
        dist.all_reduce(flat)
        # A host read only when this rank lacks a gradient: whether another rank has one decides.
        reached = ((flat[-len(params):] > 0).tolist() if any(p.grad is None for p in params)
                   else [True] * len(params))
        offset = 0
        for p, has_grad in zip(params, reached):
            n = p.numel()
            if has_grad:
                p.grad = (flat[offset: offset + n] / world).view_as(p)
            offset += n


def all_true(flag: Tensor) -> Tensor:
    """``flag`` (a boolean scalar) and-ed over the ranks."""
    if world_size() == 1:
        return flag
    import torch.distributed as dist

    value = flag.to(torch.int32).reshape(1)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return value[0] > 0


def mean(values: Tensor) -> Tensor:
    """``values`` averaged over the ranks (element-wise)."""
    world = world_size()
    if world == 1:
        return values
    import torch.distributed as dist

    total = values.detach().clone()
    dist.all_reduce(total)
    return total / world


def gather(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` in one process."""
    if world_size() == 1:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


# ----------------------------------------------------------------------------- what the profile asked for

_REQUEST: dict[str, Any] = {"processes": 1, "key": "distributed.processes", "supported": ()}


@contextlib.contextmanager
def requested(processes: int, key: str, supported: tuple[str, ...]) -> Iterator[None]:
    """While a job runs: the profile's ``distributed.processes`` (named ``key``) and the stages that support it,
    so the trainer can refuse to train in one process when more were asked for (:func:`refuse_unsharded`)."""
    saved = dict(_REQUEST)
    _REQUEST.update(processes=processes, key=key, supported=supported)
    try:
        yield
    finally:
        _REQUEST.clear()
        _REQUEST.update(saved)


def refuse_unsharded(what: str) -> None:
    """Raise a ConfigError naming the key when the profile asks for several processes but ``what`` (a training
    run) is about to train in one, i.e. its stage does not shard batches over processes."""
    if _REQUEST["processes"] > 1 and world_size() == 1:
        supported = ", ".join(_REQUEST["supported"]) or "none"
        raise ConfigError(f"{_REQUEST['key']}: {_REQUEST['processes']} processes asked for, but {what} trains in "
                          f"one process (stages with distributed training: {supported}); set it to 1")
