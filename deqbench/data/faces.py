"""Unlabelled face images for the JIIO generative-modelling and inverse-problem experiments.

Gurumurthy et al. 2021 (JIIO), section 4.1-4.2 and appendix C.1, train a
generative model on CelebA at 64x64 and then solve inpainting / denoising
problems on it (see :mod:`deqbench.data.inverse`).

>>> from deqbench.data.faces import load_image_dataset
>>> train = load_image_dataset("lfw-faces", "train")   # embedded, offline
>>> train.images.shape, train.images.dtype, train.stand_in_for
(torch.Size([80, 1, 16, 16]), torch.uint8, 'celeba')
>>> x = train.to_model_range()                          # float32 in [-1, 1]

Every loader returns an :class:`ImageSet` whose ``images`` are uint8
``(N, C, H, W)``: CelebA's 162,770 training images at 3x64x64 take 2 GB as
uint8 instead of 8 GB as float32.  :meth:`ImageSet.to_model_range` converts a
batch to the model's ``[-1, 1]`` range.  Nothing is ever downloaded.

``celeba`` (real)
    ``<root>/celeba/img_align_celeba/*.jpg`` (the aligned-and-cropped 178x218
    JPEGs, 202,599 files) and the official partition file
    ``<root>/celeba/list_eval_partition.txt`` (lines ``"000001.jpg 0"``;
    0 = train (162,770), 1 = valid (19,867), 2 = test (19,962)).  This is also
    torchvision's ``datasets.CelebA`` layout.  Transform as in the reference
    code: centre crop 148x148 (torchvision's ``CenterCrop`` offsets
    ``round((size - 148) / 2)``, i.e. rows 35..182, columns 15..162), then
    resize to 64x64 with Pillow's ``BILINEAR`` filter, which antialiases when
    shrinking (what torchvision's ``Resize`` does on PIL images).  No random
    flip: augmentation belongs to training.

``lfw-faces`` (embedded stand-in for ``celeba``)
    ``skimage.data.lfw_subset()``, shipped in the scikit-image wheel
    (``skimage/data/lfw_subset.npy``): 200 grayscale 25x25 float images in
    ``[0, 1]``.  The first 100 are faces and the last 100 are background
    crops ("non-faces"); this was checked against skimage's docstring and by
    looking at the images (the mean of the first 100 is a face, that of the
    rest a smooth gradient).  Only the 100 faces are used.  They are resized
    to ``image_size`` (default 16) with ``torch.nn.functional.interpolate``
    (bilinear, ``align_corners=False``, ``antialias=True``; skipped at 25),
    quantised to uint8 with ``round(255 x)``, one channel.  Split: the first
    ``round(test_fraction * 100)`` (default 20) indices of
    ``numpy.random.default_rng(seed).permutation(100)`` are the test set and
    the rest the train set (80), each kept in the original index order.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from ._common import DatasetNotFoundError, resolve_root
from .pinned import verified_sources

__all__ = [
    "ImageSet",
    "ImageDatasetSpec",
    "IMAGE_DATASETS",
    "load_image_dataset",
    "load_lfw_faces",
    "load_celeba",
    "LFW_NUM_FACES",
    "CELEBA_PARTITIONS",
]

#: Faces in ``skimage.data.lfw_subset()`` (its first 100 images; the other 100 are non-faces).
LFW_NUM_FACES = 100
#: Split name -> the integer used in CelebA's ``list_eval_partition.txt``.
CELEBA_PARTITIONS: Mapping[str, int] = {"train": 0, "valid": 1, "test": 2}
_LFW_SPLITS = ("train", "test")
_CELEBA_PAGE = "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"
_PROGRESS_MIN_FILES = 1000


@dataclass(frozen=True, eq=False)
class ImageSet:
    """An unlabelled image split held in memory (JIIO section 4.1).

    ``images`` is uint8 ``(N, C, H, W)``.  ``source`` says exactly where the
    pixels came from and how they were processed; ``stand_in_for`` is the real
    dataset an embedded stand-in replaces (``"celeba"``), None for real data.
    ``eq=False``: compare the tensors explicitly.
    """

    images: torch.Tensor
    name: str
    source: str
    split: str | None = None
    stand_in_for: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.images, torch.Tensor):
            raise TypeError(f"images must be a torch.Tensor, got {type(self.images).__name__}")
        if self.images.dtype != torch.uint8:
            raise ValueError(f"images must be uint8, got {self.images.dtype}")
        if self.images.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W), got shape {tuple(self.images.shape)}")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def to_model_range(self, index_or_slice: Any = None) -> torch.Tensor:
        """float32 ``x / 127.5 - 1`` in ``[-1, 1]`` of all images or ``images[index_or_slice]``.

        The reference's ``ToTensor()`` + ``Normalize(0.5, 0.5)``; a new tensor.
        """
        x = self.images if index_or_slice is None else self.images[index_or_slice]
        return x.to(torch.float32).div_(127.5).sub_(1.0)


# --------------------------------------------------------------------------- lfw-faces


def _check_split(split: str, valid: tuple[str, ...], name: str) -> None:
    if split not in valid:
        raise ValueError(f"unknown split {split!r} for dataset {name!r}; valid splits: {', '.join(valid)}")


def _check_positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def load_lfw_faces(split: str, *, image_size: int = 16, test_fraction: float = 0.2, seed: int = 0) -> ImageSet:
    """The embedded CelebA stand-in: the 100 faces of ``skimage.data.lfw_subset()`` (see the module docstring)."""
    _check_split(split, _LFW_SPLITS, "lfw-faces")
    image_size = _check_positive_int(image_size, "image_size")
    n_test = round(test_fraction * LFW_NUM_FACES)
    if not 0 < n_test < LFW_NUM_FACES:
        raise ValueError(
            f"test_fraction={test_fraction!r} gives {n_test} test faces out of {LFW_NUM_FACES}; "
            f"both splits must be non-empty"
        )
    from skimage.data import lfw_subset

    digest = verified_sources("lfw-faces", ["lfw_subset.npy"])["lfw_subset.npy"]
    faces = np.asarray(lfw_subset()[:LFW_NUM_FACES], dtype=np.float32)  # (100, 25, 25) in [0, 1]
    order = np.random.default_rng(seed).permutation(LFW_NUM_FACES)
    idx = np.sort(order[:n_test] if split == "test" else order[n_test:])
    x = torch.from_numpy(faces[idx]).unsqueeze(1)
    size = faces.shape[-1]
    if image_size != size:
        x = torch.nn.functional.interpolate(
            x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True
        )
    images = x.clamp_(0.0, 1.0).mul_(255.0).round_().to(torch.uint8).contiguous()
    resize = (
        f"resized {size}x{size}->{image_size}x{image_size} with torch.nn.functional.interpolate "
        f"(bilinear, align_corners=False, antialias=True)"
        if image_size != size
        else f"kept at {size}x{size}"
    )
    source = (
        f"embedded CelebA stand-in: the {LFW_NUM_FACES} faces (images 0-99; images 100-199 are non-faces, "
        f"dropped) of skimage.data.lfw_subset(), grayscale 25x25 floats in [0,1] bundled with scikit-image "
        f"(lfw_subset.npy sha256 {digest} as pinned); "
        f"{resize}, quantised to uint8 as round(255*x), 1 channel; split = numpy default_rng({seed}).permutation"
        f"({LFW_NUM_FACES}), first {n_test} test / remaining {LFW_NUM_FACES - n_test} train, disjoint; "
        f"this is the {split} part ({len(idx)} images, original index order)"
    )
    return ImageSet(images=images, name="lfw-faces", source=source, split=split, stand_in_for="celeba")


# --------------------------------------------------------------------------- celeba


def _celeba_not_found(root: Path, missing: list[str], detail: str = "") -> DatasetNotFoundError:
    folder = root / "celeba"
    return DatasetNotFoundError(
        f"CelebA not found{detail}: expected the image directory {folder / 'img_align_celeba'} (the aligned "
        f"178x218 JPEGs 000001.jpg..202599.jpg) and the partition file {folder / 'list_eval_partition.txt'}; "
        f"missing: {', '.join(missing)}. "
        f"This machine is offline and nothing is downloaded at run time: on a machine with internet, download "
        f"Img/img_align_celeba.zip and Eval/list_eval_partition.txt from the official CelebA site (the Google "
        f"Drive link on {_CELEBA_PAGE}), unzip img_align_celeba.zip under {folder}/ so that {folder}/"
        f"img_align_celeba/000001.jpg exists, and put list_eval_partition.txt in {folder}/ "
        f"(pass root={root} or set $DEQBENCH_DATA). "
        f"Offline alternative: the embedded stand-in, load_image_dataset('lfw-faces', split).",
        missing=tuple(missing),
    )


def _read_partition(path: Path) -> dict[int, list[str]]:
    """Partition id -> file names, from ``list_eval_partition.txt``."""
    out: dict[int, list[str]] = {0: [], 1: [], 2: []}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise ValueError(f"{path}:{number}: expected '<file>.jpg <0|1|2>', got {line.rstrip()!r}")
            out[int(parts[1])].append(parts[0])
    return out


def load_celeba(
    split: str,
    root: str | os.PathLike,
    *,
    image_size: int = 64,
    crop: int = 148,
    progress: bool = True,
    limit: int | None = None,
) -> ImageSet:
    """Real CelebA: centre crop ``crop`` then bilinear (antialiased) resize to ``image_size``, RGB uint8.

    ``limit`` keeps only the first ``limit`` files of the split (sorted by
    file name).  A tqdm bar is shown when more than 1000 files are read and
    ``progress`` is true.  Raises :class:`DatasetNotFoundError` when files
    are missing.  See the module docstring for the layout.
    """
    from PIL import Image

    _check_split(split, tuple(CELEBA_PARTITIONS), "celeba")
    image_size = _check_positive_int(image_size, "image_size")
    crop = _check_positive_int(crop, "crop")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 0):
        raise ValueError(f"limit must be a non-negative integer or None, got {limit!r}")
    root = Path(root)
    image_dir = root / "celeba" / "img_align_celeba"
    partition = root / "celeba" / "list_eval_partition.txt"
    missing = []
    if not image_dir.is_dir() or next(image_dir.glob("*.jpg"), None) is None:
        missing.append(str(image_dir))
    if not partition.is_file():
        missing.append(str(partition))
    if missing:
        raise _celeba_not_found(root, missing)

    names = sorted(_read_partition(partition)[CELEBA_PARTITIONS[split]])
    total = len(names)
    if limit is not None:
        names = names[: int(limit)]
    absent = [str(image_dir / n) for n in names if not (image_dir / n).is_file()]
    if absent:
        shown = absent[:5] + ([f"... ({len(absent)} files in all)"] if len(absent) > 5 else [])
        raise _celeba_not_found(root, shown, f" ({len(absent)} of the {split} files listed in {partition} are "
                                             f"not in {image_dir}; incomplete unzip?)")

    from tqdm.auto import tqdm

    images = np.empty((len(names), 3, image_size, image_size), dtype=np.uint8)
    bar = tqdm(names, desc=f"CelebA {split}", unit="img",
               disable=not progress or len(names) <= _PROGRESS_MIN_FILES)
    for i, name in enumerate(bar):
        path = image_dir / name
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            if w < crop or h < crop:
                raise ValueError(f"{path}: image is {w}x{h}, smaller than the {crop}x{crop} centre crop")
            top, left = int(round((h - crop) / 2.0)), int(round((w - crop) / 2.0))  # torchvision CenterCrop
            im = im.crop((left, top, left + crop, top + crop)).resize((image_size, image_size), Image.BILINEAR)
            images[i] = np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)

    limited = f"; limited to the first {len(names)} of {total} files (sorted by name)" if len(names) < total else ""
    source = (
        f"CelebA {split} split (partition {CELEBA_PARTITIONS[split]} of {partition}), aligned JPEGs from "
        f"{image_dir}, read with Pillow as RGB; centre crop {crop}x{crop} (torchvision CenterCrop offsets), "
        f"resized to {image_size}x{image_size} with Pillow BILINEAR (antialiased), uint8{limited}"
    )
    return ImageSet(images=torch.from_numpy(images), name="celeba", source=source, split=split, stand_in_for=None)


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class ImageDatasetSpec:
    """A registry entry: how to load one unlabelled image dataset."""

    name: str
    loader: Callable[..., ImageSet]  # embedded: loader(split, **options); real: loader(split, root, **options)
    image_shape: tuple[int, int, int]  # with the default options
    description: str
    splits: tuple[str, ...]
    stand_in_for: str | None = None
    embedded: bool = False  # True: needs no files under root
    options: Mapping[str, Any] = field(default_factory=dict)  # accepted options and their defaults


IMAGE_DATASETS: dict[str, ImageDatasetSpec] = {
    spec.name: spec
    for spec in (
        ImageDatasetSpec(
            "lfw-faces", load_lfw_faces, (1, 16, 16),
            "embedded CelebA stand-in: the 100 grayscale 25x25 faces of skimage.data.lfw_subset(), "
            "antialiased-bilinear resized to 16x16, uint8; 80 train / 20 test",
            splits=_LFW_SPLITS, stand_in_for="celeba", embedded=True,
            options={"image_size": 16, "test_fraction": 0.2, "seed": 0},
        ),
        ImageDatasetSpec(
            "celeba", load_celeba, (3, 64, 64),
            "CelebA aligned JPEGs <root>/celeba/img_align_celeba/*.jpg split by <root>/celeba/"
            "list_eval_partition.txt; centre crop 148, bilinear resize to 64x64, RGB uint8; "
            "162770 train / 19867 valid / 19962 test",
            splits=tuple(CELEBA_PARTITIONS),
            options={"image_size": 64, "crop": 148, "progress": True, "limit": None},
        ),
    )
}


def load_image_dataset(name: str, split: str, root: str | os.PathLike | None = None, **options: Any) -> ImageSet:
    """Load split ``split`` of the unlabelled image dataset ``name`` into memory.

    ``root`` is where real datasets live (default ``$DEQBENCH_DATA``, else
    ``./data``); embedded ones ignore it.  ``options``: see
    ``IMAGE_DATASETS[name].options``.  Raises ValueError for an unknown name
    or split, TypeError for an unknown option and
    :class:`DatasetNotFoundError` when real files are missing.
    """
    if not isinstance(name, str) or name not in IMAGE_DATASETS:
        raise ValueError(f"unknown image dataset {name!r}; known image datasets: {', '.join(sorted(IMAGE_DATASETS))}")
    spec = IMAGE_DATASETS[name]
    _check_split(split, spec.splits, name)
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        raise TypeError(
            f"unknown option(s) {', '.join(unknown)} for image dataset {name!r}; "
            f"accepted: {', '.join(sorted(spec.options))}"
        )
    if spec.embedded:
        return spec.loader(split, **options)
    return spec.loader(split, resolve_root(root), **options)
