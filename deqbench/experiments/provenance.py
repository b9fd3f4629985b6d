"""Provenance record attached to every result: code, config, environment, device and seeds."""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import importlib.metadata
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from deqbench.experiments.settings import settings_hash, to_plain

PACKAGES = ("deqbench", "torch", "torchvision", "numpy", "scipy", "scikit-learn", "scikit-image", "snakemake", "dvc", "torch-fidelity")


def git_revision(cwd: str | Path | None = None) -> dict[str, Any]:
    def run(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    rev = run("rev-parse", "HEAD")
    status = run("status", "--porcelain", "--untracked-files=no")
    return {"rev": rev, "dirty": bool(status) if status is not None else None}


def _code_revision() -> dict[str, Any]:
    """The git revision of the deqbench checkout (an editable install), else of the working directory."""
    rev = git_revision(Path(__file__).resolve().parents[2])
    return rev if rev["rev"] is not None else git_revision(Path.cwd())


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def lock_file_digest(path: Path | None = None) -> dict[str, Any]:
    """SHA-256 of the ``requirements.lock`` the environment was installed from (the checkout's, for an editable
    install), and whether every locked distribution is installed at its locked version (computed once per file)."""
    return dict(_lock_file_digest(path or Path(__file__).resolve().parents[2] / "requirements.lock"))


@functools.lru_cache(maxsize=4)
def _lock_file_digest(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {"path": str(path), "sha256": None, "matches_installed": None}
    text = path.read_text()
    mismatched = []
    for line in text.splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            version = version.split()[0]
            try:
                installed = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                installed = None
            if installed != version:
                mismatched.append(f"{name} {installed} (locked {version})")
    return {"path": path.name, "sha256": hashlib.sha256(text.encode()).hexdigest(),
            "matches_installed": not mismatched, "mismatched": mismatched[:20]}


def device_description(device: torch.device | str) -> dict[str, Any]:
    device = torch.device(device)
    info: dict[str, Any] = {"type": device.type, "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        info.update(
            name=torch.cuda.get_device_name(index),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
            tf32_cudnn=torch.backends.cudnn.allow_tf32,
        )
    return info


def provenance(settings: Any, device: torch.device | str, seeds: list[int] | None = None,
               profile: str | None = None, **extra: Any) -> dict[str, Any]:
    """Everything needed to say what produced a result: the job's typed settings and their hash, the profile,
    seeds, code revision, package versions, the lock file's hash, device and command line."""
    return {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git": _code_revision(),
        "profile": profile,
        "settings": to_plain(settings),
        "settings_hash": settings_hash(settings),
        "seeds": seeds,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": package_versions(),
        "lock": lock_file_digest(),
        "device": device_description(device),
        "command": sys.argv,
        **extra,
    }
