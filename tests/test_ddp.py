"""Data-parallel training (a profile's ``distributed`` key): two CPU processes (gloo) each on half of every batch
train exactly as one process on the whole batch, rank 0 alone writes, a crashed run resumes, and a divergence on
one rank stops every rank.  The ranks run as real processes under torchrun."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from deqbench.experiments import cli, distributed
from deqbench.experiments.config import ConfigError, ProfileInfo, resolve_profile
from deqbench.experiments.io import load_artifact
from deqbench.experiments.trainer import EpochBatches
from tests import ddp_helpers

REPO = Path(__file__).resolve().parents[1]
PARAMS = str(REPO / "params.yaml")


def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in (*distributed.LAUNCHER_ENV, "DEQBENCH_FAULT"):
        env.pop(name, None)
    return env


def _max_abs(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def _losses(summary: dict) -> list[float]:
    return [entry["loss"] for entry in summary["history"]]


# ----------------------------------------------------------------------------- settings and refusals (fast)


def test_the_key_defaults_to_one_process_and_is_validated():
    params = yaml.safe_load(Path(PARAMS).read_text())
    assert resolve_profile(params, "smoke")["distributed"] == {"processes": 1, "backend": "auto"}
    bare = copy.deepcopy(params)
    del bare["profiles"]["paper"]["distributed"]  # left out: the resolved profile spells the default out
    profile = resolve_profile(bare, "embedded")
    assert profile["distributed"] == {"processes": 1, "backend": "auto"}
    assert ProfileInfo.of(profile).distributed.processes == 1
    bad = copy.deepcopy(params)
    bad["profiles"]["smoke"]["distributed"] = {"processes": 0}
    with pytest.raises(ConfigError, match=r"profiles\.smoke\.distributed\.processes: 0 is less than the minimum"):
        resolve_profile(bad, "smoke")
    bad["profiles"]["smoke"]["distributed"] = {"backend": "mpi"}
    with pytest.raises(ConfigError, match=r"profiles\.smoke\.distributed\.backend"):
        resolve_profile(bad, "smoke")


def test_the_ranks_shares_make_up_the_one_process_batch():
    one = EpochBatches(50, 12, seed=3)
    shares = [EpochBatches(50, 12, seed=3, rank=r, world=3) for r in range(3)]
    for step in (0, 1, 3, 4, 9):  # 4 steps per epoch: epochs 0, 0, 0, 1, 2
        whole = one(step)
        parts = [s(step) for s in shares]
        assert all(len(p.indices) == 4 for p in parts)
        assert torch.equal(torch.cat([p.indices for p in parts]), whole.indices)
        assert torch.equal(torch.cat([p.uniform for p in parts]), whole.uniform)
    with pytest.raises(ConfigError, match="distributed.processes = 5"):
        EpochBatches(50, 12, seed=3, rank=0, world=5)


def _cli(*argv: str) -> int:
    return cli.main(["--params", PARAMS, "--profile", "smoke", "--no-progress", "--threads", "1", *argv])


def _adversarial_train(data: Path, out: Path, *sets: str) -> list[str]:
    return [*(x for s in sets for x in ("--set", s)), "jiio_adversarial", "train", "--data", str(data),
            "--dataset", "mnist", "--method", "clean", "--eps", "0", "--seed", "0", "--out", str(out),
            "--partial", str(out.with_suffix(".partial.pt"))]


def test_a_batch_that_does_not_split_evenly_is_refused_before_launching(tmp_path, capsys):
    code = _cli(*_adversarial_train(tmp_path / "missing.pt", tmp_path / "m.pt", "distributed.processes=3"))
    err = capsys.readouterr().err
    assert code == 1 and "jiio_adversarial.train.batch_size: 32 cannot be split evenly" in err
    assert "torchrun" not in err and list(tmp_path.iterdir()) == []


def test_training_without_distributed_support_refuses_naming_the_key(tmp_path, capsys):
    code = _cli("--set", "distributed.processes=2", "jiio_meta", "train", "--method", "maml", "--checkpoint",
                str(tmp_path / "m.pt"), "--partial", str(tmp_path / "m.partial.pt"), "--out", str(tmp_path / "m.json"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err[-1].startswith("error: profiles.smoke.distributed.processes: 2 processes asked for")
    assert "jiio_adversarial train" in err[-1] and list(tmp_path.iterdir()) == []


def test_a_launch_with_another_number_of_ranks_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    code = _cli(*_adversarial_train(tmp_path / "missing.pt", tmp_path / "m.pt"))
    assert code == 1 and "profiles.smoke.distributed.processes is 1, but this job was started as 2 ranks" in \
        capsys.readouterr().err


# ----------------------------------------------------------------------------- two real ranks


def test_two_ranks_train_as_one_process_on_the_whole_batch(tmp_path):
    """The shared trainer on a tiny model: 2 ranks x batch 8 against 1 process x batch 16 for 5 Adam steps; only
    rank 0 writes; a crash after the step-2 partial checkpoint resumes bit-identically (with random draws in every
    step, so each rank's RNG state is restored); a NaN on rank 1 stops both ranks."""
    ranks = tmp_path / "ranks"
    ranks.mkdir()
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(Path(ddp_helpers.__file__)), str(ranks)],
                         capture_output=True, text=True, env=_env(), timeout=300, cwd=REPO)
    assert run.returncode == 0, run.stderr[-3000:]
    one = ddp_helpers.run(tmp_path / "one.pt", tmp_path / "one.partial.pt")
    two = load_artifact(ranks / "plain_rank0.pt")
    loss_error = max(abs(a - b) for a, b in zip(_losses(one), _losses(two["summary"]), strict=True))
    param_error = _max_abs(load_artifact(tmp_path / "one.pt")["model"], two["model"])
    print(f"tiny model, 5 steps: max |loss difference| {loss_error:.2e}, max |parameter difference| {param_error:.2e}")
    assert loss_error < 1e-6 and param_error < 1e-6
    assert two["summary"]["processes"] == 2 and "processes" not in one
    assert sorted(p.name for p in ranks.glob("*.pt")) == ["nan.partial.pt", "noisy_rank0.pt", "plain_rank0.pt",
                                                        "resumed_rank0.pt"]
    noisy, resumed = load_artifact(ranks / "noisy_rank0.pt"), load_artifact(ranks / "resumed_rank0.pt")
    assert all(torch.equal(noisy["model"][k], resumed["model"][k]) for k in noisy["model"])
    assert noisy["summary"]["history"] == resumed["summary"]["history"]
    assert _max_abs(noisy["model"], two["model"]) > 1e-4  # the draws did change the training
    reports = [json.loads((ranks / f"report_rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["partial_left_after_crash"] and r["resumed_from_step"] == 2 for r in reports)
    assert reports[0]["first_draws"][0] != reports[1]["first_draws"][0]  # each rank draws its own numbers
    assert "on another rank at step 2" in reports[0]["diverged"] and "on rank 1 at step 2" in reports[1]["diverged"]


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp") / "digits.pt"
    assert _cli("jiio_adversarial", "prepare", "--dataset", "mnist", "--out", str(out)) == 0
    return out


STEPS = 3  # the MDEQ's lowest-residual iterate choice turns float noise into larger differences a few steps later


@pytest.mark.slow
def test_the_command_line_trains_jiio_adversarial_on_two_processes(digits, tmp_path):
    """``distributed.processes=2`` through the command line: it launches torchrun, rank 0 alone writes the
    checkpoint (the partial one is gone), and 2 processes x 16 digits match 1 process x 32 (clean training without
    the Jacobian regulariser, whose random probes are drawn per rank) for 3 steps.  Without gradient clipping too:
    clipping rescales the all-reduced gradient, so its norm's rounding (order of the sum over ranks) reaches every
    parameter, and Adam's normalisation turns that into 3e-5 parameter differences after 3 steps."""
    sets = ("jiio_adversarial.train.jac_reg=0", "jiio_adversarial.train.grad_clip=null",
            f"jiio_adversarial.train.max_steps={STEPS}",
            "jiio_adversarial.train.log_every=1", "jiio_adversarial.train.checkpoint_every=2")
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    assert _cli(*_adversarial_train(digits, tmp_path / "one" / "m.pt", *sets)) == 0
    cmd = [sys.executable, "-m", "deqbench", "--params", PARAMS, "--profile", "smoke", "--no-progress", "--threads",
           "2", *_adversarial_train(digits, tmp_path / "two" / "m.pt", *sets, "distributed.processes=2")]
    run = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300, cwd=REPO)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "2 processes under torchrun (profiles.smoke.distributed.processes)" in run.stderr
    assert "1 threads, rank 0 of 2" in run.stderr and "1 threads, rank 1 of 2" in run.stderr
    assert [p.name for p in (tmp_path / "two").iterdir()] == ["m.pt"]
    one, two = load_artifact(tmp_path / "one" / "m.pt"), load_artifact(tmp_path / "two" / "m.pt")
    loss_error = max(abs(a - b) for a, b in zip(_losses(one["summary"]), _losses(two["summary"]), strict=True))
    param_error = _max_abs(one["model"], two["model"])
    print(f"jiio_adversarial clean, {STEPS} steps: max |loss difference| {loss_error:.2e}, "
          f"max |parameter difference| {param_error:.2e}")
    assert len(two["summary"]["history"]) == STEPS and two["summary"]["processes"] == 2
    assert loss_error < 1e-5 and param_error < 1e-5


@pytest.mark.slow
def test_a_failing_rank_fails_the_job_with_its_message(tmp_path):
    """A rank's error (here: a missing data file, which only the ranks read) is printed by the rank, and the job
    exits 1 with one last line saying that distributed training failed."""
    cmd = [sys.executable, "-m", "deqbench", "--params", PARAMS, "--profile", "smoke", "--no-progress",
           *_adversarial_train(tmp_path / "missing.pt", tmp_path / "m.pt", "distributed.processes=2")]
    run = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300, cwd=REPO)
    assert run.returncode == 1
    assert "error: artefact not found" in run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith("error: jiio_adversarial train: distributed training failed")
    assert list(tmp_path.iterdir()) == []
