"""Atomic file writes (a crash never leaves a half-written output behind) and safe artefact loading."""

from __future__ import annotations

import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any, Callable, IO

import torch

from deqbench.experiments import faults


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def _atomic(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Write via ``write(fh)`` to a temporary file in the same directory, fsync, then rename over ``path``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; results should be readable like any other file
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            faults.during_write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return target


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return _atomic(path, lambda fh: fh.write(text.encode()))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> Path:
    return _atomic(path, lambda fh: torch.save(obj, fh))


class UnsafeArtifactError(ValueError):
    """A file that ``torch.load(weights_only=True)`` refuses: it holds pickled objects, not plain data."""


class CorruptArtifactError(ValueError):
    """A checkpoint or prepared file that cannot be read back (truncated, overwritten, not a torch file)."""


def load_artifact(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """Load a checkpoint, prepared dataset or any other artefact written by :func:`atomic_torch_save`.

    Only tensors and JSON-like containers are accepted (``torch.load(weights_only=True)``): a file carrying
    pickled objects is refused with an error naming it, so a tampered or foreign file cannot run code.
    """
    target = Path(path)
    if not target.exists():
        raise FileNotFoundError(f"artefact not found: {target}")
    try:
        return torch.load(target, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UnsafeArtifactError(f"{target}: refused to load, it is not plain tensors and containers "
                                  f"(torch.load weights_only=True: {first})") from None
    except (RuntimeError, OSError, EOFError, ValueError) as err:  # truncated zip, bad magic, short read
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CorruptArtifactError(f"{target}: cannot be read, the file is corrupt or truncated ({first}); "
                                   f"delete it and rerun the job that writes it") from None


def save_figure(fig: Any, png: str | os.PathLike, title: str, width: int = 170, fontsize: int = 7) -> Path:
    """Title a matplotlib figure with (the start of) its caption, lay it out, write the PNG atomically, close it."""
    import textwrap

    import matplotlib.pyplot as plt

    png = Path(png)
    fig.suptitle(textwrap.fill(title, width), fontsize=fontsize)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    tmp = png.with_name(f".{png.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(png)
    return png
