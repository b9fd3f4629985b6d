"""The shared trainer on a tiny model, for the data-parallel tests (tests/test_ddp.py).

:func:`run` trains a two-layer network on fixed data through :func:`deqbench.experiments.trainer.fit`, in one
process or as one rank of a process group.  Run as a script under torchrun (``python -m torch.distributed.run
--standalone --nproc_per_node 2 tests/ddp_helpers.py OUTDIR``) each rank joins a gloo group and runs the scenarios
of :func:`main`, writing what the test compares into OUTDIR.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deqbench.experiments import distributed
from deqbench.experiments.runtime import DivergenceError
from deqbench.experiments.trainer import EpochBatches, LoopSettings, StepOutput, fit

N, BATCH, STEPS, EVERY = 48, 16, 5, 2
FIRST_DRAWS: list[float] = []  # the first random draw of each noisy run in this process


def data() -> tuple[torch.Tensor, torch.Tensor]:
    """48 fixed examples of a 3-class problem in 6 dimensions."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(N, 6, generator=gen)
    return x, (x[:, :3].sum(1) > 0).long() + (x[:, 3] > 1).long()


def run(out: Path, partial: Path, noise: float = 0.0, crash_at: int | None = None,
        nan_on_rank: int | None = None) -> dict[str, Any]:
    """Train the tiny model for STEPS Adam steps on batches of BATCH (over all ranks); ``noise``: add that times a
    standard normal draw per example to the loss (randomness inside a step); ``crash_at``: raise after that many
    steps (a crash, leaving the partial checkpoint); ``nan_on_rank``: that rank's loss turns NaN at step 2."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    x, y = data()
    batches = EpochBatches(N, BATCH, seed=0, rank=distributed.rank(), world=distributed.world_size())

    def step_fn(step: int) -> StepOutput:
        if crash_at is not None and step == crash_at:
            raise KeyboardInterrupt("simulated crash")
        idx = batches(step).indices
        per_example = nn.functional.cross_entropy(model(x[idx]), y[idx], reduction="none")
        if noise:
            draws = torch.randn(len(idx))
            if step == 0:
                FIRST_DRAWS.append(float(draws[0]))
            per_example = per_example * (1 + noise * draws)
        loss = per_example.mean()
        if nan_on_rank == distributed.rank() and step == 2:
            loss = loss * float("nan")
        return StepOutput(loss, {"first_label": y[idx[0]].float()})

    loop = LoopSettings(STEPS, EVERY, 1, 0.05)
    return fit(key="tiny", model=model, optimizer=torch.optim.Adam(model.parameters(), lr=0.05), step_fn=step_fn,
               loop=loop, out_path=out, partial_path=partial, settings_hash="h", device=torch.device("cpu"),
               summary={}, checkpoint_meta={}, progress=False)


def main(outdir: Path) -> None:
    """The scenarios of tests/test_ddp.py, as one rank; rank 0 (and only it, by the trainer) writes the results."""
    distributed.init("gloo", torch.device("cpu"))
    rank = distributed.rank()
    # Every rank names its own output file: only rank 0's may exist afterwards.
    run(outdir / f"plain_rank{rank}.pt", outdir / "plain.partial.pt")
    run(outdir / f"noisy_rank{rank}.pt", outdir / "noisy.partial.pt", noise=0.5)
    try:
        run(outdir / f"resumed_rank{rank}.pt", outdir / "resumed.partial.pt", noise=0.5, crash_at=3)
    except KeyboardInterrupt:
        pass
    distributed.barrier()
    partial_left = (outdir / "resumed.partial.pt").exists()
    resumed = run(outdir / f"resumed_rank{rank}.pt", outdir / "resumed.partial.pt", noise=0.5)
    try:
        run(outdir / f"nan_rank{rank}.pt", outdir / "nan.partial.pt", nan_on_rank=1)
        diverged = "no"
    except DivergenceError as err:
        diverged = str(err)
    # Test bookkeeping, one file per rank: what this rank saw.
    (outdir / f"report_rank{rank}.json").write_text(json.dumps(
        {"partial_left_after_crash": partial_left, "resumed_from_step": resumed["resumed_from_step"],
         "diverged": diverged, "first_draws": FIRST_DRAWS}))
    distributed.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
