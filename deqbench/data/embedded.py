"""Offline stand-ins for MNIST, CIFAR-10, CIFAR-100 and ImageNette built from real data shipped in installed wheels.

``digits28`` (MNIST stand-in)
    scikit-learn's ``load_digits()``: 1797 real 8x8 handwritten digits (a copy
    of the test part of the UCI "optdigits" set, stored in
    ``sklearn/datasets/data/digits.csv.gz``), pixel values 0..16.  Scaled by
    1/16 to ``[0, 1]`` and resized 8x8 -> 28x28 with bilinear interpolation
    (``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``,
    no antialiasing, the digit fills the whole frame, no padding).  Split:
    ``sklearn.model_selection.train_test_split(test_size=0.2, stratify=labels,
    random_state=seed)`` with ``seed=0`` -> 1437 train / 360 test, disjoint.

``sample-patches32`` (CIFAR-10 stand-in)
    A 10-class task "which photograph does this 32x32 RGB patch come from",
    over ten real colour photographs bundled in the scikit-learn and
    scikit-image wheels (:data:`PATCH_SOURCES`; read straight from the wheel
    with Pillow, never through a downloader).  Each photograph is resized with
    antialiased bilinear interpolation so its shorter side is 128 px (aspect
    ratio kept) and quantised to 8 bits.  The columns are cut at
    ``floor(0.7 * width)``: train patches lie entirely left of the cut, test
    patches entirely right of it, so no pixel of a test patch appears in any
    train patch.  Patch positions are drawn uniformly without replacement from
    the positions inside the region whose patch has pixel standard deviation
    >= 0.02 (drops flat patches, e.g. uniform sky), with
    ``numpy.random.default_rng([seed, class, split])``.  Default 400 train and
    100 test patches per class (4000 / 1000); the examples are then put in a
    fixed pseudo-random order (``numpy.random.default_rng([seed, 10000 + split])``).

``sample-patches32-40`` (CIFAR-100 stand-in)
    The same recipe with 40 classes: each photograph, resized to shorter side
    256 px, has its rows split into 4 equal horizontal bands (:func:`band_rows`)
    and class = ``4 * photo + band`` (class names ``"<photo>-band<b>"``, band 0
    on top).  A patch lies entirely inside its band, so no pixel is shared
    between classes, and the train/test column cut applies within each band.
    Default 200 train and 50 test patches per class (8000 / 2000).  The ten
    photos are all the distinct colour photographs physically present in the
    wheels (the other files in ``skimage/data`` are greyscale, synthetic, or
    the stereo twin of ``motorcycle_left``), hence bands rather than photos.

``sample-patches64`` (ImageNette stand-in)
    The ``sample-patches32`` recipe with 64x64 patches from the photographs
    resized to shorter side 256 px, so a patch covers about the same share of
    a photo as a 32 px patch at 128 px while carrying 4x the pixels.  10
    classes, default 300 train and 75 test patches per class (3000 / 750).  The
    real ImageNette is used at 256 px: the models' stem downsampling is
    configured by the task, not here.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ._common import LabeledImages
from .pinned import PINNED_SOURCES, source_path, verified_sources

__all__ = [
    "load_digits28",
    "load_sample_patches32",
    "load_sample_patches32_40",
    "load_sample_patches64",
    "PATCH_SOURCES",
    "PATCH_TASKS",
    "PatchSource",
    "PatchTask",
    "band_rows",
]

_SPLIT_ID = {"train": 0, "test": 1}


# --------------------------------------------------------------------------- digits28


def load_digits28(split: str, root: Path | None = None, *, seed: int = 0, test_fraction: float = 0.2) -> LabeledImages:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    digest = verified_sources("digits28", ["digits.csv.gz"])["digits.csv.gz"]
    digits = load_digits()
    images = np.asarray(digits.images, dtype=np.float32)  # (1797, 8, 8), 0..16
    targets = np.asarray(digits.target, dtype=np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(len(targets)), test_size=test_fraction, stratify=targets, random_state=seed
    )
    idx = train_idx if split == "train" else test_idx
    x = torch.from_numpy(images[idx] / 16.0).unsqueeze(1)
    x = F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False).clamp_(0.0, 1.0).contiguous()
    import sklearn.datasets

    csv = Path(sklearn.datasets.__file__).parent / "data" / "digits.csv.gz"
    source = (
        f"embedded MNIST stand-in: scikit-learn load_digits() ({len(targets)} real 8x8 handwritten digits, "
        f"values 0..16, file {csv}, sha256 {digest} as pinned), scaled by 1/16 to [0,1] and resized 8x8->28x28 with bilinear interpolation "
        f"(torch interpolate, align_corners=False, no antialias, full frame); split = "
        f"sklearn train_test_split(test_size={test_fraction}, stratify=labels, random_state={seed}) -> "
        f"{len(train_idx)} train / {len(test_idx)} test, disjoint; this is the {split} part ({len(idx)} images)"
    )
    return LabeledImages(
        images=x,
        labels=torch.from_numpy(targets[idx]),
        num_classes=10,
        name="digits28",
        source=source,
        stand_in_for="mnist",
        split=split,
        class_names=tuple(str(i) for i in range(10)),
    )


# --------------------------------------------------------------------------- photo-patch datasets


@dataclass(frozen=True)
class PatchSource:
    """One photograph bundled in a wheel (one class of ``sample-patches32``)."""

    name: str  # class name
    package: str  # importable package holding the file
    filename: str  # file inside that package
    api: str  # the public function that returns the same pixels

    def path(self) -> Path:
        """The file inside the installed wheel (its pinned location, :func:`deqbench.data.pinned.source_path`)."""
        return source_path(self.filename)


#: The ten photographs, in class-index order.
PATCH_SOURCES: tuple[PatchSource, ...] = (
    PatchSource("china", "sklearn.datasets.images", "china.jpg", "sklearn.datasets.load_sample_image('china.jpg')"),
    PatchSource("flower", "sklearn.datasets.images", "flower.jpg", "sklearn.datasets.load_sample_image('flower.jpg')"),
    PatchSource("astronaut", "skimage.data", "astronaut.png", "skimage.data.astronaut()"),
    PatchSource("coffee", "skimage.data", "coffee.png", "skimage.data.coffee()"),
    PatchSource("chelsea", "skimage.data", "chelsea.png", "skimage.data.chelsea()"),
    PatchSource("rocket", "skimage.data", "rocket.jpg", "skimage.data.rocket()"),
    PatchSource("hubble_deep_field", "skimage.data", "hubble_deep_field.jpg", "skimage.data.hubble_deep_field()"),
    PatchSource("retina", "skimage.data", "retina.jpg", "skimage.data.retina()"),
    PatchSource("immunohistochemistry", "skimage.data", "ihc.png", "skimage.data.immunohistochemistry()"),
    PatchSource("motorcycle", "skimage.data", "motorcycle_left.png", "skimage.data.stereo_motorcycle()[0]"),
)


@dataclass(frozen=True)
class PatchTask:
    """How one photo-patch dataset is cut from :data:`PATCH_SOURCES`."""

    name: str  # registry name
    patch: int  # patch side in px
    bands: int  # horizontal bands per photo; class = bands * photo + band
    stand_in_for: str  # the real dataset it replaces
    real_label: str  # how its source string names that dataset

    @property
    def num_classes(self) -> int:
        return self.bands * len(PATCH_SOURCES)

    def class_names(self) -> tuple[str, ...]:
        if self.bands == 1:
            return tuple(s.name for s in PATCH_SOURCES)
        return tuple(f"{s.name}-band{b}" for s in PATCH_SOURCES for b in range(self.bands))


PATCH_TASKS: dict[str, PatchTask] = {
    task.name: task
    for task in (
        PatchTask("sample-patches32", 32, 1, "cifar10", "CIFAR-10"),
        PatchTask("sample-patches32-40", 32, 4, "cifar100", "CIFAR-100"),
        PatchTask("sample-patches64", 64, 1, "imagenette", "ImageNette"),
    )
}


def _read_rgb(src: PatchSource) -> np.ndarray:
    from PIL import Image

    path = src.path()
    if not path.is_file():
        raise FileNotFoundError(
            f"the photo-patch datasets need {src.filename} from the {src.package} package, expected at {path}; "
            f"reinstall {src.package.split('.')[0]} from a standard wheel, which bundles it"
        )
    verified_sources("sample-patches (photo-patch stand-ins)", [src.filename])
    with Image.open(path) as im:
        return np.array(im.convert("RGB"), dtype=np.uint8)  # a writable copy


@functools.lru_cache(maxsize=4)
def _resized_sources(short_side: int) -> tuple[np.ndarray, ...]:
    """The ten photographs as read-only uint8 ``(3, H, W)`` arrays with ``min(H, W) == short_side``."""
    out = []
    for src in PATCH_SOURCES:
        rgb = torch.from_numpy(_read_rgb(src)).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)
        h, w = rgb.shape[-2:]
        scale = short_side / min(h, w)
        size = (max(short_side, round(h * scale)), max(short_side, round(w * scale)))
        small = F.interpolate(rgb, size=size, mode="bilinear", align_corners=False, antialias=scale < 1.0)
        arr = small[0].clamp_(0.0, 1.0).mul_(255.0).round_().to(torch.uint8).numpy()
        arr.setflags(write=False)
        out.append(arr)
    return tuple(out)


@functools.lru_cache(maxsize=8)
def _source_stds(short_side: int, p: int) -> tuple[np.ndarray, ...]:
    """:func:`_patch_std` of each resized photo, shared by all bands and both splits."""
    return tuple(_patch_std(img, p) for img in _resized_sources(short_side))


def _patch_std(img: np.ndarray, p: int) -> np.ndarray:
    """Pixel std (over all channels) of every ``p x p`` window, via integral images: ``(H-p+1, W-p+1)``."""
    x = img.astype(np.float64) / 255.0

    def box(a: np.ndarray) -> np.ndarray:
        s = np.zeros((a.shape[1] + 1, a.shape[2] + 1))
        s[1:, 1:] = a.sum(0).cumsum(0).cumsum(1)
        return s[p:, p:] - s[:-p, p:] - s[p:, :-p] + s[:-p, :-p]

    n = img.shape[0] * p * p
    mean = box(x) / n
    var = box(x * x) / n - mean * mean
    return np.sqrt(np.maximum(var, 0.0))


def band_rows(height: int, bands: int, band: int) -> tuple[int, int]:
    """Rows ``[r0, r1)`` of horizontal band ``band`` of ``bands`` equal bands of an image ``height`` px tall."""
    return band * height // bands, (band + 1) * height // bands


def _draw_patches(
    img: np.ndarray, std: np.ndarray, split: str, n: int, *, task: PatchTask, cls: int, seed: int,
    train_fraction: float, min_std: float,
) -> np.ndarray:
    """``n`` patches ``(n, 3, p, p)`` of class ``cls`` from photo ``img``, whose window stds are ``std``."""
    _, h, w = img.shape
    p = task.patch
    r0, r1 = band_rows(h, task.bands, cls % task.bands)
    cut = int(np.floor(train_fraction * w))
    lo, hi = (0, cut) if split == "train" else (cut, w)  # the patch must lie in columns [lo, hi)
    name = task.class_names()[cls]
    if hi - lo < p or r1 - r0 < p:
        raise ValueError(
            f"{task.name}: the {split} region of '{name}' is {r1 - r0}x{hi - lo} px, smaller than {p}x{p}; "
            f"change train_fraction ({train_fraction}) or short_side"
        )
    ys, xs = np.nonzero(std[r0 : r1 - p + 1, lo : hi - p + 1] >= min_std)
    if n > len(ys):
        raise ValueError(
            f"{task.name}: asked for {n} {split} patches of '{name}' but its {split} region has only "
            f"{len(ys)} distinct positions with std >= {min_std}"
        )
    rng = np.random.default_rng([seed, cls, _SPLIT_ID[split]])
    pick = rng.choice(len(ys), size=n, replace=False)
    windows = np.lib.stride_tricks.sliding_window_view(img, (p, p), axis=(1, 2))  # (3, H', W', p, p)
    return np.ascontiguousarray(windows[:, ys[pick] + r0, xs[pick] + lo].transpose(1, 0, 2, 3))  # (n, 3, p, p)


def _load_patches(
    task: PatchTask, split: str, *, train_per_class: int, test_per_class: int, seed: int, train_fraction: float,
    short_side: int, min_std: float,
) -> LabeledImages:
    p = task.patch
    per_class = train_per_class if split == "train" else test_per_class
    if int(per_class) != per_class or per_class < 1:
        raise ValueError(f"{split}_per_class must be a positive integer, got {per_class}")
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    if int(short_side) != short_side or short_side < p * task.bands:
        raise ValueError(f"short_side must be an integer >= {p * task.bands}, got {short_side}")
    sources = _resized_sources(int(short_side))
    stds = _source_stds(int(short_side), p)
    chunks, labels = [], []
    for cls in range(task.num_classes):
        photo = cls // task.bands
        chunks.append(
            _draw_patches(sources[photo], stds[photo], split, int(per_class), task=task, cls=cls, seed=seed,
                          train_fraction=train_fraction, min_std=min_std)
        )
        labels.append(np.full(int(per_class), cls, dtype=np.int64))
    order = np.random.default_rng([seed, 10_000 + _SPLIT_ID[split]]).permutation(task.num_classes * int(per_class))
    x = torch.from_numpy(np.concatenate(chunks)[order]).float().div_(255.0)
    y = torch.from_numpy(np.concatenate(labels)[order])
    B = task.bands
    groups: dict[Path, list[str]] = {}
    for k, (s, a) in enumerate(zip(PATCH_SOURCES, sources)):
        classes = str(k) if B == 1 else f"{k * B}..{k * B + B - 1}"
        groups.setdefault(s.path().parent, []).append(
            f"{classes} {s.name}={s.filename} (sha256 {PINNED_SOURCES[s.filename][2][:16]}... as pinned, "
            f"{a.shape[1]}x{a.shape[2]} resized)"
        )
    listing = "; ".join(f"{', '.join(items)} [from {folder}]" for folder, items in groups.items())
    side = "left" if split == "train" else "right"
    if B == 1:
        question = "which photograph is this"
        layout = ""
    else:
        question = f"which photograph and which of its {B} horizontal bands is this"
        layout = (
            f"rows are split into {B} equal horizontal bands (band b = rows floor(b*H/{B}) to floor((b+1)*H/{B})), "
            f"class = {B} * photo + band and a patch lies entirely inside its band; "
        )
    source = (
        f"embedded {task.real_label} stand-in: {task.num_classes}-class '{question} {p}x{p} patch from' task over "
        f"real colour photographs bundled in the scikit-learn and scikit-image wheels, classes {listing}. Each photo "
        f"is resized (antialiased bilinear) to shorter side {short_side} px and quantised to 8 bits; {layout}"
        f"columns are cut at floor({train_fraction} * width): train patches lie entirely left of the cut, test "
        f"patches entirely right of it (disjoint pixels); positions uniform without replacement among windows with "
        f"pixel std >= {min_std}, numpy default_rng([seed={seed}, class, split]); {train_per_class} train / "
        f"{test_per_class} test per class. This is the {split} part ({side} region, {len(y)} patches)"
    )
    return LabeledImages(
        images=x,
        labels=y,
        num_classes=task.num_classes,
        name=task.name,
        source=source,
        stand_in_for=task.stand_in_for,
        split=split,
        class_names=task.class_names(),
    )


def load_sample_patches32(
    split: str,
    root: Path | None = None,
    *,
    train_per_class: int = 400,
    test_per_class: int = 100,
    seed: int = 0,
    train_fraction: float = 0.7,
    short_side: int = 128,
    min_std: float = 0.02,
) -> LabeledImages:
    """CIFAR-10 stand-in: 32x32 patches, class = source photo (see the module docstring)."""
    return _load_patches(
        PATCH_TASKS["sample-patches32"], split, train_per_class=train_per_class, test_per_class=test_per_class,
        seed=seed, train_fraction=train_fraction, short_side=short_side, min_std=min_std,
    )


def load_sample_patches32_40(
    split: str,
    root: Path | None = None,
    *,
    train_per_class: int = 200,
    test_per_class: int = 50,
    seed: int = 0,
    train_fraction: float = 0.7,
    short_side: int = 256,
    min_std: float = 0.02,
) -> LabeledImages:
    """CIFAR-100 stand-in: 32x32 patches, class = (source photo, horizontal band) (see the module docstring)."""
    return _load_patches(
        PATCH_TASKS["sample-patches32-40"], split, train_per_class=train_per_class, test_per_class=test_per_class,
        seed=seed, train_fraction=train_fraction, short_side=short_side, min_std=min_std,
    )


def load_sample_patches64(
    split: str,
    root: Path | None = None,
    *,
    train_per_class: int = 300,
    test_per_class: int = 75,
    seed: int = 0,
    train_fraction: float = 0.7,
    short_side: int = 256,
    min_std: float = 0.02,
) -> LabeledImages:
    """ImageNette stand-in: 64x64 patches, class = source photo (see the module docstring)."""
    return _load_patches(
        PATCH_TASKS["sample-patches64"], split, train_per_class=train_per_class, test_per_class=test_per_class,
        seed=seed, train_fraction=train_fraction, short_side=short_side, min_std=min_std,
    )
