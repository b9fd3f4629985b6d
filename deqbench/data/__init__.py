"""Image-classification datasets for the JIIO adversarial-robustness and MOptEqs experiments.

>>> from deqbench.data import load_dataset
>>> train = load_dataset("digits28", "train")          # embedded, offline
>>> train.images.shape, train.labels.dtype, train.stand_in_for
(torch.Size([1437, 1, 28, 28]), torch.int64, 'mnist')

Every loader returns a :class:`LabeledImages` with ``images`` ``(N, C, H, W)``
float32 in ``[0, 1]`` (no normalisation) and ``labels`` ``(N,)`` int64.
Nothing is ever downloaded.

=======================  ========  ===============  ========  ================================================
name                     real?     shape            classes   where the data comes from
=======================  ========  ===============  ========  ================================================
``mnist``                real      (1, 28, 28)      10        ``<root>/MNIST/raw/*-ubyte[.gz]`` (IDX)
``cifar10``              real      (3, 32, 32)      10        ``<root>/cifar-10-batches-py/`` (pickles)
``cifar100``             real      (3, 32, 32)      100       ``<root>/cifar-100-python/{train,test}`` (pickles)
``imagenette``           real      (3, 256, 256)    10        ``<root>/imagenette2/{train,val}/<wnid>/*.JPEG``
``imagenet``             real      (3, 224, 224)    1000      ``<root>/imagenet/{train,val}/<wnid>/*.JPEG``
``digits28``             stand-in  (1, 28, 28)      10        scikit-learn ``load_digits()`` (for mnist)
``sample-patches32``     stand-in  (3, 32, 32)      10        photos in sklearn/skimage (for cifar10)
``sample-patches32-40``  stand-in  (3, 32, 32)      40        the same photos, 4 bands each (for cifar100)
``sample-patches64``     stand-in  (3, 64, 64)      10        the same photos, larger (for imagenette)
=======================  ========  ===============  ========  ================================================

``imagenette`` is 256 px by default (the paper's input size; option
``image_size``), and its ``test`` split reads ``val/``.  ``imagenet``
(ILSVRC-2012, ImageFolder layout with val/ sorted into wnid folders) is 224 px
by default, its ``test`` split reads ``val/``, and ``train_per_class`` /
``test_per_class`` keep the first N files per class: the full train split is
about 770 GB as float32, so it has no embedded stand-in and needs those limits.

``root`` defaults to ``$DEQBENCH_DATA``, else ``./data``.  Missing real files
raise :class:`DatasetNotFoundError` naming each expected path and how to get
it.  See :mod:`deqbench.data.real` and :mod:`deqbench.data.embedded` for the
exact file formats, preprocessing and split rules.

Options common to every dataset: ``limit`` (keep the first ``limit`` examples
after a shuffle with ``numpy.random.default_rng(limit_seed)``, default
``limit_seed=0``).  Per-dataset options are listed in ``DATASETS[name].options``
(e.g. ``train_per_class``/``test_per_class`` for ``sample-patches32``, ``image_size`` for ``imagenette``;
``image_size``, ``train_per_class``, ``test_per_class`` for ``imagenet``).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np

if TYPE_CHECKING:
    import torch

from ._common import DEFAULT_ROOT_ENV, DatasetFormatError, DatasetNotFoundError, LabeledImages, resolve_root
from .embedded import (
    PATCH_SOURCES,
    load_digits28,
    load_sample_patches32,
    load_sample_patches32_40,
    load_sample_patches64,
)
from .real import load_cifar10, load_cifar100, load_imagenet, load_imagenette, load_mnist

__all__ = [
    "LabeledImages",
    "DatasetNotFoundError",
    "DatasetFormatError",
    "DatasetSpec",
    "DATASETS",
    "SPLITS",
    "PATCH_SOURCES",
    "DEFAULT_ROOT_ENV",
    "load_dataset",
    "rms_norm",
    "scaled_eps",
    "stand_in_for",
]

SPLITS: tuple[str, ...] = ("train", "test")
_COMMON_OPTIONS: Mapping[str, Any] = {"limit": None, "limit_seed": 0}


@dataclass(frozen=True)
class DatasetSpec:
    """A registry entry: how to load one dataset and what it looks like."""

    name: str
    loader: Callable[..., LabeledImages]  # loader(split, root: Path, **options)
    image_shape: tuple[int, int, int]
    num_classes: int
    description: str
    stand_in_for: str | None = None  # for embedded stand-ins: the real dataset they replace
    embedded: bool = False  # True: needs no files under root
    options: Mapping[str, Any] = field(default_factory=dict)  # dataset-specific options and defaults
    splits: tuple[str, ...] = SPLITS
    label: str = ""  # how tables name it (e.g. "CIFAR-10"); defaults to ``name``
    # Real datasets: the root-mean-square L2 norm of a training image in [0, 1] at its native size, from the
    # standard per-channel mean m and std s: sqrt(H * W * sum_c (m_c^2 + s_c^2)).  Perturbation radii given for the
    # real data are rescaled by (stand-in RMS norm / this) on stand-ins (see ``scaled_eps``).
    rms_norm: float | None = None

    def display_name(self) -> str:
        return self.label or self.name


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            "mnist", load_mnist, (1, 28, 28), 10,
            "MNIST from the raw IDX files <root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]; "
            "60000 train / 10000 test", label="MNIST",
            rms_norm=(28 * 28 * (0.1307**2 + 0.3081**2)) ** 0.5,  # mean 0.1307, std 0.3081: 9.37
        ),
        DatasetSpec(
            "cifar10", load_cifar10, (3, 32, 32), 10,
            "CIFAR-10 from the python pickle batches <root>/cifar-10-batches-py/{data_batch_1..5,test_batch}; "
            "50000 train / 10000 test", label="CIFAR-10",
            rms_norm=(32 * 32 * sum(m * m + v * v for m, v in ((0.4914, 0.2470), (0.4822, 0.2435), (0.4465, 0.2616))))
            ** 0.5,  # per-channel means and stds: 29.7
        ),
        DatasetSpec(
            "cifar100", load_cifar100, (3, 32, 32), 100,
            "CIFAR-100 (fine labels) from the python pickles <root>/cifar-100-python/{train,test} (+ meta for the "
            "class names); 50000 train / 10000 test", label="CIFAR-100",
            rms_norm=(32 * 32 * sum(m * m + v * v for m, v in ((0.5071, 0.2673), (0.4865, 0.2564), (0.4409, 0.2762))))
            ** 0.5,  # per-channel means and stds: 30.4
        ),
        DatasetSpec(
            "imagenette", load_imagenette, (3, 256, 256), 10,
            "ImageNette, the full-size imagenette2 folder <root>/imagenette2/{train,val}/<wnid>/*.JPEG in ImageFolder "
            "order; shorter side resized to image_size then centre-cropped to image_size (default 256); "
            "9469 train / 3925 test (= val)", label="ImageNette", options={"image_size": 256},
            rms_norm=(256 * 256 * sum(m * m + v * v for m, v in ((0.485, 0.229), (0.456, 0.224), (0.406, 0.225))))
            ** 0.5,  # ImageNet per-channel means and stds, at 256 px: 223.4
        ),
        DatasetSpec(
            "imagenet", load_imagenet, (3, 224, 224), 1000,
            "ImageNet (ILSVRC-2012) in ImageFolder layout <root>/imagenet/{train,val}/<wnid>/*.JPEG (val sorted into "
            "wnid folders), exactly 1000 wnid classes in sorted order; shorter side resized to image_size then "
            "centre-cropped to image_size (default 224); train_per_class/test_per_class keep the first N files per "
            "class (the full train split is ~770 GB as float32); 1281167 train / 50000 test (= val)",
            label="ImageNet", options={"image_size": 224, "train_per_class": None, "test_per_class": None},
            rms_norm=(224 * 224 * sum(m * m + v * v for m, v in ((0.485, 0.229), (0.456, 0.224), (0.406, 0.225))))
            ** 0.5,  # ImageNet per-channel means and stds, at 224 px: 195.5
        ),
        DatasetSpec(
            "digits28", load_digits28, (1, 28, 28), 10,
            "embedded MNIST stand-in: scikit-learn's 1797 8x8 digits, bilinear-resized to 28x28; "
            "stratified 80/20 split (1437 train / 360 test)",
            stand_in_for="mnist", embedded=True, options={"seed": 0, "test_fraction": 0.2},
        ),
        DatasetSpec(
            "sample-patches32", load_sample_patches32, (3, 32, 32), 10,
            "embedded CIFAR-10 stand-in: 32x32 patches of 10 bundled photographs, class = source photo; "
            "train from the left 70% of each photo, test from the right 30% (4000 train / 1000 test)",
            stand_in_for="cifar10", embedded=True,
            options={"train_per_class": 400, "test_per_class": 100, "seed": 0, "train_fraction": 0.7,
                     "short_side": 128, "min_std": 0.02},
        ),
        DatasetSpec(
            "sample-patches32-40", load_sample_patches32_40, (3, 32, 32), 40,
            "embedded CIFAR-100 stand-in: 32x32 patches of the same 10 photographs (shorter side 256 px), each cut "
            "into 4 horizontal bands, class = (photo, band); train from the left 70% of each band, test from the "
            "right 30% (8000 train / 2000 test)",
            stand_in_for="cifar100", embedded=True,
            options={"train_per_class": 200, "test_per_class": 50, "seed": 0, "train_fraction": 0.7,
                     "short_side": 256, "min_std": 0.02},
        ),
        DatasetSpec(
            "sample-patches64", load_sample_patches64, (3, 64, 64), 10,
            "embedded ImageNette stand-in: 64x64 patches of the same 10 photographs (shorter side 256 px), class = "
            "source photo; train from the left 70% of each photo, test from the right 30% (3000 train / 750 test)",
            stand_in_for="imagenette", embedded=True,
            options={"train_per_class": 300, "test_per_class": 75, "seed": 0, "train_fraction": 0.7,
                     "short_side": 256, "min_std": 0.02},
        ),
    )
}


def rms_norm(images: "torch.Tensor") -> float:
    """Root-mean-square L2 norm of a batch of images ``(N, C, H, W)``: ``sqrt(mean_n ||x_n||^2)``."""
    return float(images.flatten(1).pow(2).sum(1).mean().sqrt())


def scaled_eps(eps: float, stand_in_for: str | None, images_rms_norm: float) -> float:
    """A perturbation radius given for a real dataset, carried over to the images actually used.

    On an embedded stand-in (``stand_in_for`` names the real dataset) the radius is multiplied by the ratio of
    the stand-in's RMS image norm (at the size it is trained at) to the real dataset's, so an attack takes the same
    share of an image's norm: JIIO's eps = 1 on MNIST (RMS norm 9.37) becomes 0.36 on 8 px digits (RMS norm 3.38).
    Real data keeps ``eps``.
    """
    if stand_in_for is None:
        return eps
    reference = DATASETS[stand_in_for].rms_norm
    if reference is None:
        raise ValueError(f"dataset {stand_in_for!r} declares no rms_norm to scale eps by")
    return eps * images_rms_norm / reference


def stand_in_for(real_name: str) -> str:
    """The embedded dataset that replaces ``real_name`` offline (``"mnist"`` -> ``"digits28"``)."""
    for spec in DATASETS.values():
        if spec.stand_in_for == real_name:
            return spec.name
    raise ValueError(f"no embedded stand-in for {real_name!r}")


def _get_spec(name: str) -> DatasetSpec:
    if not isinstance(name, str) or name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(sorted(DATASETS))}")
    return DATASETS[name]


def load_dataset(name: str, split: str, root: str | os.PathLike | None = None, **options: Any) -> LabeledImages:
    """Load split ``split`` (``"train"`` or ``"test"``) of dataset ``name`` into memory.

    ``root`` is where the real datasets' files live (default ``$DEQBENCH_DATA``,
    else ``./data``); the embedded stand-ins ignore it.  ``options``: ``limit``
    and ``limit_seed`` for every dataset, plus ``DATASETS[name].options``.
    Raises ValueError for an unknown name or split, TypeError for an unknown
    option and :class:`DatasetNotFoundError` when real files are missing.
    """
    spec = _get_spec(name)
    if split not in spec.splits:
        raise ValueError(f"unknown split {split!r} for dataset {name!r}; valid splits: {', '.join(spec.splits)}")
    allowed = {**_COMMON_OPTIONS, **spec.options}
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(
            f"unknown option(s) {', '.join(unknown)} for dataset {name!r}; accepted: {', '.join(sorted(allowed))}"
        )
    limit = options.pop("limit", None)
    limit_seed = options.pop("limit_seed", 0)
    data = spec.loader(split, resolve_root(root), **options)
    if limit is not None:
        data = _apply_limit(data, limit, limit_seed)
    return data


def _apply_limit(data: LabeledImages, limit: int, seed: int) -> LabeledImages:
    if isinstance(limit, bool) or int(limit) != limit or limit < 0:
        raise ValueError(f"limit must be a non-negative integer or None, got {limit!r}")
    limit = int(limit)
    if limit >= len(data):
        return data
    import torch

    keep = torch.from_numpy(np.random.default_rng(seed).permutation(len(data))[:limit])
    return dataclasses.replace(
        data,
        images=data.images[keep].contiguous(),
        labels=data.labels[keep].contiguous(),
        source=f"{data.source}; limited to the first {limit} of {len(data)} after a shuffle with "
        f"numpy default_rng({seed})",
    )
