"""Container type, error type and small helpers shared by the dataset loaders."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["LabeledImages", "DatasetNotFoundError", "DatasetFormatError", "resolve_root", "DEFAULT_ROOT_ENV"]

#: Environment variable giving the default data root when ``root`` is not passed.
DEFAULT_ROOT_ENV = "DEQBENCH_DATA"


class DatasetNotFoundError(FileNotFoundError):
    """A real dataset's files are not on disk.

    The message names every expected file, says how to obtain it on a machine
    with internet access, and names the embedded offline stand-in.  The
    expected paths are also available as ``err.missing`` (a tuple of str).
    """

    def __init__(self, message: str, missing: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.missing = tuple(missing)


class DatasetFormatError(ValueError):
    """A real dataset's file is on disk but is not in the expected format (truncated, wrong header, wrong layout);
    the message starts with the file's path."""


@dataclass(frozen=True, eq=False)
class LabeledImages:
    """An image-classification split held in memory.

    ``images`` is ``(N, C, H, W)`` float32 in ``[0, 1]`` (no normalisation),
    ``labels`` is ``(N,)`` int64 in ``[0, num_classes)``.  ``stand_in_for`` is
    the real dataset an embedded stand-in replaces (``"mnist"``/``"cifar10"``)
    and None for real data.  ``eq=False``: compare the tensors explicitly.
    """

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    name: str
    source: str
    stand_in_for: str | None = None
    split: str | None = None
    class_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.images.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W), got shape {tuple(self.images.shape)}")
        if self.images.dtype != torch.float32:
            raise ValueError(f"images must be float32, got {self.images.dtype}")
        if self.labels.ndim != 1 or self.labels.dtype != torch.int64:
            raise ValueError(f"labels must be (N,) int64, got {tuple(self.labels.shape)} {self.labels.dtype}")
        if self.labels.shape[0] != self.images.shape[0]:
            raise ValueError(f"{self.images.shape[0]} images but {self.labels.shape[0]} labels")
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {self.num_classes} classes")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def tensor_dataset(self) -> torch.utils.data.TensorDataset:
        """A ``TensorDataset`` of ``(image, label)`` pairs (shares memory)."""
        return torch.utils.data.TensorDataset(self.images, self.labels)


def resolve_root(root: str | os.PathLike | None) -> Path:
    """``root`` if given, else ``$DEQBENCH_DATA``, else ``./data`` (relative to the working directory)."""
    if root is None:
        root = os.environ.get(DEFAULT_ROOT_ENV) or "data"
    return Path(root).expanduser().absolute()
