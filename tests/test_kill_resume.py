"""Reliability R1 (issue 13): a training job killed with SIGKILL (after a step, or in the middle of writing a
checkpoint) and then rerun resumes from its last partial checkpoint and ends bit-identical to an uninterrupted run,
for every task that trains through the shared trainer.  Each task is killed at 5 points drawn with a fixed seed
(fault injection: ``deqbench.experiments.faults``); the jobs run as real processes through the command line, with
the same arguments Snakemake passes (the partial checkpoint lives outside the job's declared outputs, so Snakemake's
rerun of the job finds it)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from deqbench.experiments.io import load_artifact

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
STEPS, EVERY = 6, 2  # partial checkpoints after steps 2 and 4 (writes 1 and 2), the final checkpoint is write 3


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "deqbench", "--params", str(REPO / "params.yaml"), "--profile", "smoke",
            "--no-progress", "--threads", "1", *args]


def _run(cmd: list[str], fault: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("DEQBENCH_FAULT", None)
    if fault:
        env["DEQBENCH_FAULT"] = fault
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=REPO)


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("kill") / "digits.pt"
    assert _run(_cli("jiio_adversarial", "prepare", "--dataset", "mnist", "--out", str(out))).returncode == 0
    return out


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("kill") / "faces.pt"
    assert _run(_cli("jiio_generative", "prepare", "--out", str(out))).returncode == 0
    return out


@pytest.fixture(scope="module")
def patches(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("kill") / "cifar10.pt"
    assert _run(_cli("moptqs", "prepare", "--dataset", "cifar10", "--out", str(out))).returncode == 0
    return out


def _train_command(task: str, data: dict[str, Path], out: Path, partial: Path) -> list[str]:
    if task == "jiio_adversarial":
        return _cli("--set", f"jiio_adversarial.train.max_steps={STEPS}", "--set",
                    f"jiio_adversarial.train.checkpoint_every={EVERY}", "--set",
                    "jiio_adversarial.train.warm_start_steps=null", "jiio_adversarial", "train", "--data",
                    str(data["digits"]), "--dataset", "mnist", "--method", "jio", "--eps", "1", "--seed", "0",
                    "--out", str(out), "--partial", str(partial))
    if task == "jiio_generative":
        return _cli("--set", f"jiio_generative.train.steps={STEPS}", "--set",
                    f"jiio_generative.train.checkpoint_every={EVERY}", "jiio_generative", "train", "--data",
                    str(data["faces"]), "--model", "jiio40", "--problem", "reconstruct", "--seed", "0",
                    "--out", str(out), "--partial", str(partial))
    if task == "moptqs":
        return _cli("--set", f"moptqs.train.max_steps={STEPS}", "--set", f"moptqs.train.checkpoint_every={EVERY}",
                    "moptqs", "train", "--data", str(data["patches"]), "--dataset", "cifar10", "--model", "moptqs",
                    "--seed", "0", "--out", str(out), "--partial", str(partial))
    return _cli("--set", f"jiio_meta.jiio_deq.meta_steps={STEPS}", "--set", f"jiio_meta.loop.checkpoint_every={EVERY}",
                "--set", "jiio_meta.eval.tasks=2", "jiio_meta", "train", "--method", "jiio_deq", "--checkpoint",
                str(out), "--partial", str(partial), "--out", str(out.with_suffix(".json")))


def _outcome(path: Path) -> tuple[dict[str, torch.Tensor], list]:
    state = load_artifact(path)
    return state["model"], state["summary"]["history"]


def _resume_step(point: str) -> int:
    """The step the rerun resumes from: the last partial checkpoint completed before the kill (a step kill comes
    before that step's checkpoint write; write K is the partial after step K * EVERY, or the final checkpoint)."""
    kind, k = point.split(":")
    done = int(k) - 1 if kind == "step" else (int(k) - 1) * EVERY
    return min((done // EVERY) * EVERY, STEPS - EVERY) if kind == "step" else min(done, STEPS - EVERY)


KILL_POINTS = sorted(random.Random(13).sample([f"step:{k}" for k in range(1, STEPS)] + ["write:1", "write:2",
                                                                                          "write:3"], 5))


def _kill_and_resume(task: str, data: dict[str, Path], tmp_path: Path, point: str,
                     model: dict[str, torch.Tensor], history: list) -> None:
    """Kill the job at ``point``, rerun it, and check that the rerun resumed from the right step and ended
    bit-identical to the uninterrupted run."""
    out, partial = tmp_path / f"{point.replace(':', '')}.pt", tmp_path / f"{point.replace(':', '')}.partial"
    killed = _run(_train_command(task, data, out, partial), fault=point)
    assert killed.returncode == -signal.SIGKILL, (point, killed.stderr[-2000:])
    assert not out.exists(), f"{point}: a killed job left its final output"
    resumed = _run(_train_command(task, data, out, partial))
    assert resumed.returncode == 0, (point, resumed.stderr[-2000:])
    start = _resume_step(point)
    if start:
        assert f"from step {start}" in resumed.stderr, (point, resumed.stderr[-2000:])
    else:
        assert "resuming" not in resumed.stderr, (point, resumed.stderr[-2000:])
    got_model, got_history = _outcome(out)
    assert got_model.keys() == model.keys()
    for name, tensor in model.items():
        assert torch.equal(got_model[name], tensor), f"{task} killed at {point}: {name} differs"
    assert got_history == history, f"{task} killed at {point}: the loss history differs"
    assert not partial.exists()


@pytest.mark.parametrize("task", ["jiio_adversarial", "jiio_generative", "moptqs", "jiio_meta"])
def test_killed_training_resumes_bit_identically(task, tmp_path, digits, faces, patches):
    data = {"digits": digits, "faces": faces, "patches": patches}
    reference = tmp_path / "reference.pt"
    proc = _run(_train_command(task, data, reference, tmp_path / "reference.partial"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    model, history = _outcome(reference)
    assert len(history) > 0
    # The kill points are independent jobs (own outputs and partials, one thread each): two run at a time.
    with ThreadPoolExecutor(max_workers=2) as pool:
        for done in [pool.submit(_kill_and_resume, task, data, tmp_path, point, model, history)
                     for point in KILL_POINTS]:
            done.result()
