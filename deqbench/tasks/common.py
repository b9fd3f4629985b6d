"""Pieces every task CLI shares: seeding, resumable partial checkpoints, the common command-line options."""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deqbench.experiments.io import atomic_torch_save


class DivergenceError(RuntimeError):
    """A NaN/inf loss or equilibrium residual: the run stops instead of writing a table."""


def data_source_label(meta: dict[str, Any]) -> str:
    """How an output names its data: the dataset, and for an embedded stand-in what it stands in for."""
    if meta.get("stand_in_for"):
        return f"{meta['name']} (embedded stand-in for {meta['stand_in_for']})"
    return meta["name"]


def sync(device: torch.device) -> None:
    """Wait for queued device work (timing boundaries only, never inside a solver loop)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_partial(path: str | Path, key: str, config_hash: str, model: torch.nn.Module,
                 optimizer: torch.optim.Optimizer, device: torch.device) -> tuple[int, list[dict[str, Any]]]:
    """Restore model, optimiser and RNG state from a partial checkpoint of the same run and config.

    Returns ``(step, history)``; ``(0, [])`` when there is no usable partial checkpoint.
    """
    partial = Path(path)
    if not partial.exists():
        return 0, []
    state = torch.load(partial, map_location=device, weights_only=False)
    if state.get("config_hash") != config_hash or state.get("key") != key:
        print(f"ignoring stale partial checkpoint {partial} (different config)", file=sys.stderr)
        return 0, []
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"]["torch"])
    if device.type == "cuda" and state["rng"].get("cuda") is not None:
        torch.cuda.set_rng_state(state["rng"]["cuda"], device)
    print(f"resuming {key} from step {state['step']} ({partial})", file=sys.stderr)
    return state["step"], state["history"]


def save_partial(path: str | Path, key: str, config_hash: str, model: torch.nn.Module,
                 optimizer: torch.optim.Optimizer, step: int, history: list[dict[str, Any]], device: torch.device) -> None:
    """Write a resumable partial checkpoint atomically (model, optimiser, step, history, RNG states)."""
    rng = {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}
    atomic_torch_save(path, {"key": key, "config_hash": config_hash, "model": model.state_dict(),
                             "optimizer": optimizer.state_dict(), "step": step, "history": history, "rng": rng})


def task_parser(prog: str, doc: str | None) -> tuple[argparse.ArgumentParser, Any]:
    """The options every task CLI takes (``--params``, ``--profile``, ``--no-progress``) and its subcommand set."""
    parser = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--profile", default=None, help="profile name (default: params.yaml's `profile`)")
    parser.add_argument("--no-progress", action="store_true")
    return parser, parser.add_subparsers(dest="command", required=True)


def load_prepared(path: str | Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=False)
