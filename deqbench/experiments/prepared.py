"""Prepared classification data: both splits of a dataset at one image size, in one file every job of a task reads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch.nn.functional as F

from deqbench.data import DATASETS, load_dataset, rms_norm
from deqbench.experiments.settings import PositiveInt

ClassifierSource = Literal[tuple(DATASETS)]  # type: ignore[valid-type]


@dataclass(frozen=True)
class DataParams:
    """A task's params.yaml entry for one classification dataset."""

    source: ClassifierSource  # a dataset of deqbench.data (real, or an embedded stand-in)
    image_size: PositiveInt


@dataclass(frozen=True)
class PrepareJob:
    """What a prepare job reads: the task's key for the dataset, its entry and where real files live."""

    dataset: str
    data: DataParams
    data_root: str


def prepare_classification(key: str, source: str, image_size: int, data_root: str) -> dict[str, Any]:
    """Both splits of dataset ``source`` resized (antialiased bilinear) to ``image_size``, with where they came from.

    ``key`` is the task's name for the dataset (e.g. ``cifar10``, which ``source`` may replace by a stand-in).
    ``meta.rms_norm`` is the RMS image norm at the training size (what eps scaling compares).
    """
    splits: dict[str, Any] = {}
    for split in ("train", "test"):
        data = load_dataset(source, split, root=data_root)
        images = data.images
        if images.shape[-2:] != (image_size, image_size):
            images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False,
                                   antialias=True).clamp_(0, 1)
        splits[split] = {"images": images.contiguous(), "labels": data.labels.clone()}
        meta = {"name": data.name, "source": data.source, "stand_in_for": data.stand_in_for,
                "num_classes": data.num_classes}
    meta["rms_norm"] = rms_norm(splits["train"]["images"])
    return {"dataset": key, "image_size": image_size, "meta": meta, **splits}


def run_prepare_job(job: PrepareJob) -> dict[str, Any]:
    """:func:`prepare_classification` for a task's prepare job."""
    return prepare_classification(job.dataset, job.data.source, job.data.image_size, job.data_root)
