"""Few-shot classification data for the JIIO meta-learning experiment (issue 12; spec B.5 and B.10).

Real data: Omniglot (:func:`load_omniglot`)
    torchvision's folder layout ``<root>/omniglot-py/images_background/<alphabet>/<character>/*.png`` (964
    characters) and ``<root>/omniglot-py/images_evaluation/...`` (659), 1623 characters of 20 drawings each.
    Character order: ``images_background`` then ``images_evaluation``, alphabets and characters in sorted name
    order; drawings in sorted file-name order.  Pre-processing (B.5): ``PIL`` convert('L'), LANCZOS resize to
    28 x 28, float32 / 255, so values lie in [0, 1] with the white background near 1; no normalisation.
    Split (B.5, iMAML): ``numpy.random.default_rng(seed).permutation(1623)``; the first 1200 characters are
    meta-train, the remaining 423 meta-test (held out), irrespective of alphabet.  The permutation is stored on
    the result.  Evaluation must use ``meta_test``: the JIIO test script's bug (identity permutation, training
    characters; AMBIG-B4) is not reproduced.
    Rotations (B.5): ``rotations="per_task"`` (default, the iMAML/JIIO variant) keeps one class per character and
    the task sampler draws a rotation in {0, 90, 180, 270} degrees per class and task, applied to all of that
    class's images in the task; ``rotations="as_classes"`` (the MAML/Santoro variant) makes each (character,
    rotation) a fixed class, 4 x 1623 classes, split by character so all rotations of a held-out character stay
    held out.  Rotation is ``torch.rot90`` (counter-clockwise, as scipy ``rotate`` with a positive angle; exact for
    multiples of 90 degrees, where the reference's spline ``rotate`` only matches up to interpolation rounding).

Embedded stand-in: scikit-learn digits (:func:`load_digits_meta`, spec B.10)
    ``sklearn.datasets.load_digits()`` (1797 8 x 8 digits, values 0..16), classes = (digit, rotation) for the 4
    rotations: 40 fixed classes.  Meta-train digits 0-5 (24 classes), meta-test digits 6-9 (16 classes), as B.10
    says.  Images: x / 16, bilinear-resized 8 -> 28 px (as ``digits28``), then inverted (1 - x) so the background
    is 1 and the strokes dark like Omniglot's.  Labelled ``stand_in_for="omniglot"``; accuracy on it is not
    comparable to Table 6.  Caveat: rotated classes can look alike across digits ((6, 180) vs (9, 0)) and a
    0 at 180 degrees resembles a 0, so the meta-test classes are harder to tell apart than Omniglot's.

Tasks (:class:`TaskSampler`, B.5)
    An N-way K-shot task: N classes drawn without replacement from a pool, labels 0..N-1 in draw order; per class
    ``k_shot + k_query`` distinct images drawn without replacement (support first, then query).  Support and query
    are class-major: label of support image i is ``i // k_shot``.  Task ``i`` of a sampler with seed ``s`` is
    generated from ``numpy.random.default_rng([s, i])`` alone, so it is the same whatever else was sampled.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ._common import DatasetNotFoundError, resolve_root
from .pinned import verified_sources

__all__ = [
    "OMNIGLOT_DIR", "OMNIGLOT_SUBDIRS", "OMNIGLOT_CHARACTERS", "OMNIGLOT_META_TRAIN", "IMAGE_SIZE", "ROTATIONS",
    "STAND_IN_TRAIN_DIGITS", "STAND_IN_TEST_DIGITS", "RotationMode", "FewShotPool", "FewShotSplits", "FewShotTask",
    "TaskSampler", "load_omniglot", "load_digits_meta", "omniglot_characters", "stack_tasks",
]

OMNIGLOT_DIR = "omniglot-py"
OMNIGLOT_SUBDIRS: tuple[str, str] = ("images_background", "images_evaluation")
OMNIGLOT_CHARACTERS = 1623
OMNIGLOT_META_TRAIN = 1200
IMAGE_SIZE = 28
#: Rotation angles in degrees; rotation index k means ``torch.rot90(image, k)``.
ROTATIONS: tuple[int, ...] = (0, 90, 180, 270)
STAND_IN_TRAIN_DIGITS: tuple[int, ...] = (0, 1, 2, 3, 4, 5)
STAND_IN_TEST_DIGITS: tuple[int, ...] = (6, 7, 8, 9)

RotationMode = Literal["per_task", "as_classes"]


@dataclass(frozen=True, eq=False)
class FewShotPool:
    """The classes one side of a meta-split samples tasks from.

    ``images[c]`` is ``(n_c, H, W)`` float32 in [0, 1], the images of class ``c`` (named ``class_names[c]``).
    ``rotate_per_task``: the sampler draws a 90-degree rotation per class and task (Omniglot ``per_task``); false
    when rotations are already classes.  ``stand_in_for`` is ``"omniglot"`` for the embedded stand-in, else None.
    """

    name: str
    split: str
    class_names: tuple[str, ...]
    images: tuple[torch.Tensor, ...]
    rotate_per_task: bool
    source: str
    stand_in_for: str | None = None

    def __post_init__(self) -> None:
        if len(self.class_names) != len(self.images):
            raise ValueError(f"{len(self.class_names)} class names for {len(self.images)} classes")
        for name, x in zip(self.class_names, self.images):
            if x.ndim != 3 or x.dtype != torch.float32 or x.shape[0] < 1:
                raise ValueError(f"class {name!r}: images must be non-empty (n, H, W) float32, got "
                                 f"{tuple(x.shape)} {x.dtype}")

    @property
    def num_classes(self) -> int:
        return len(self.images)

    @property
    def image_shape(self) -> tuple[int, int]:
        return tuple(self.images[0].shape[1:])  # type: ignore[return-value]


@dataclass(frozen=True, eq=False)
class FewShotSplits:
    """Disjoint meta-train and meta-test pools, with the seed and character permutation that made the split.

    Omniglot: ``permutation`` is ``default_rng(seed).permutation(n_characters)``, its first ``n_meta_train``
    entries index the meta-train characters.  Stand-in: the train digits followed by the test digits.
    """

    meta_train: FewShotPool
    meta_test: FewShotPool
    seed: int
    permutation: tuple[int, ...]
    source: str
    stand_in_for: str | None = None


@dataclass(frozen=True, eq=False)
class FewShotTask:
    """One N-way K-shot task (spec B.5).

    ``support_images`` ``(N*K, 1, H, W)``, ``support_labels`` ``(N*K,)`` int64 in 0..N-1 (class-major), the same
    for ``query_*`` with ``k_query`` per class.  ``classes[j]`` is the pool class given label j,
    ``rotations[j]`` its rotation in degrees (0 unless the pool rotates per task), ``drawings[j]`` the indices
    into ``pool.images[classes[j]]`` of its support then query images.
    """

    support_images: torch.Tensor
    support_labels: torch.Tensor
    query_images: torch.Tensor
    query_labels: torch.Tensor
    classes: tuple[int, ...]
    rotations: tuple[int, ...]
    drawings: tuple[tuple[int, ...], ...] = ()

    @property
    def support(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.support_images, self.support_labels

    @property
    def query(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.query_images, self.query_labels


class TaskSampler:
    """Seeded N-way K-shot task generator over a :class:`FewShotPool` (spec B.5; "generate them deterministically
    from a seed" instead of the reference's pickle).  ``sampler.task(i)`` depends only on ``(seed, i)``."""

    def __init__(self, pool: FewShotPool, n_way: int = 5, k_shot: int = 1, k_query: int = 1, seed: int = 0) -> None:
        if n_way < 1 or k_shot < 1 or k_query < 0:
            raise ValueError(f"need n_way >= 1, k_shot >= 1, k_query >= 0; got {n_way}, {k_shot}, {k_query}")
        if n_way > pool.num_classes:
            raise ValueError(f"{n_way}-way tasks need {n_way} classes; pool {pool.name!r} ({pool.split}) has "
                             f"{pool.num_classes}")
        smallest = min(int(x.shape[0]) for x in pool.images)
        if k_shot + k_query > smallest:
            raise ValueError(f"{k_shot} support + {k_query} query images per class need as many distinct images; "
                             f"the smallest class of pool {pool.name!r} has {smallest}")
        self.pool, self.n_way, self.k_shot, self.k_query, self.seed = pool, n_way, k_shot, k_query, seed

    def task(self, index: int) -> FewShotTask:
        """Task number ``index`` (spec B.5): classes without replacement, labels in draw order, per-class rotation
        when the pool rotates per task, distinct drawings for support and query."""
        rng = np.random.default_rng([self.seed, index])
        classes = rng.choice(self.pool.num_classes, size=self.n_way, replace=False)
        ks = rng.integers(0, 4, size=self.n_way) if self.pool.rotate_per_task else np.zeros(self.n_way, np.int64)
        support, query, drawings = [], [], []
        for c, k in zip(classes, ks):
            images = self.pool.images[int(c)]
            pick = torch.from_numpy(rng.choice(images.shape[0], size=self.k_shot + self.k_query, replace=False))
            drawings.append(tuple(int(d) for d in pick))
            chosen = torch.rot90(images[pick], int(k), dims=(-2, -1)) if k else images[pick]
            support.append(chosen[: self.k_shot])
            query.append(chosen[self.k_shot:])
        labels = torch.arange(self.n_way, dtype=torch.int64)
        return FewShotTask(
            support_images=torch.cat(support).unsqueeze(1).contiguous(),
            support_labels=labels.repeat_interleave(self.k_shot),
            query_images=torch.cat(query).unsqueeze(1).contiguous(),
            query_labels=labels.repeat_interleave(self.k_query),
            classes=tuple(int(c) for c in classes),
            rotations=tuple(ROTATIONS[int(k)] for k in ks),
            drawings=tuple(drawings),
        )

    def tasks(self, start: int, count: int) -> list[FewShotTask]:
        """Tasks ``start .. start + count - 1``."""
        return [self.task(i) for i in range(start, start + count)]


def stack_tasks(tasks: Sequence[FewShotTask]) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """``((support_x, support_y), (query_x, query_y))`` with a leading task axis, the meta-batch layout of
    ``deqbench.meta``'s ``*_batch`` functions."""
    if not tasks:
        raise ValueError("stack_tasks needs at least one task")
    return ((torch.stack([t.support_images for t in tasks]), torch.stack([t.support_labels for t in tasks])),
            (torch.stack([t.query_images for t in tasks]), torch.stack([t.query_labels for t in tasks])))


# --------------------------------------------------------------------------- Omniglot (real)


def omniglot_characters(root: str | os.PathLike | None = None) -> list[tuple[str, list[Path]]]:
    """``[(name, [png paths])]`` of every character folder, in the documented order; ``name`` is
    ``"<subdir>/<alphabet>/<character>"``.  Raises :class:`DatasetNotFoundError` naming missing folders."""
    base = resolve_root(root) / OMNIGLOT_DIR
    missing = [base / sub for sub in OMNIGLOT_SUBDIRS if not (base / sub).is_dir()]
    if missing:
        raise DatasetNotFoundError(
            f"Omniglot not found: expected the folder(s) {', '.join(str(m) for m in missing)} "
            f"(torchvision layout {base}/<images_background|images_evaluation>/<alphabet>/<character>/*.png). "
            f"This machine is offline and nothing is downloaded at run time: on a machine with internet run "
            f"torchvision.datasets.Omniglot(root, background=True, download=True) and again with background=False, "
            f"and copy {base} here (pass root={base.parent} or set $DEQBENCH_DATA). Offline alternative: "
            f"deqbench.data.omniglot.load_digits_meta() (scikit-learn digits stand-in, spec B.10).",
            missing=tuple(str(m) for m in missing),
        )
    out = []
    for sub in OMNIGLOT_SUBDIRS:
        for alphabet in sorted(p for p in (base / sub).iterdir() if p.is_dir()):
            for character in sorted(p for p in alphabet.iterdir() if p.is_dir()):
                files = sorted(character.glob("*.png"))
                if not files:
                    raise ValueError(f"Omniglot character folder {character} has no .png files")
                out.append((f"{sub}/{alphabet.name}/{character.name}", files))
    return out


def _read_png(path: Path, size: int) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        grey = im.convert("L").resize((size, size), Image.Resampling.LANCZOS)
        return np.asarray(grey, dtype=np.float32) / 255.0


def load_omniglot(
    root: str | os.PathLike | None = None, *, seed: int = 0, n_meta_train: int = OMNIGLOT_META_TRAIN,
    rotations: RotationMode = "per_task", image_size: int = IMAGE_SIZE,
    expect_characters: int | None = OMNIGLOT_CHARACTERS,
) -> FewShotSplits:
    """Omniglot's meta-train / meta-test pools with the iMAML split (spec B.5; see the module docstring).

    ``expect_characters`` (1623 by default; None skips the check) guards against a partial copy silently changing
    the split.  Raises :class:`DatasetNotFoundError` (message and ``.missing`` name the expected folders) when the
    folders are absent, ValueError for a wrong character count or split size.
    """
    if rotations not in ("per_task", "as_classes"):
        raise ValueError(f"rotations must be 'per_task' or 'as_classes', got {rotations!r}")
    characters = omniglot_characters(root)
    n = len(characters)
    if expect_characters is not None and n != expect_characters:
        raise ValueError(f"found {n} Omniglot characters under {resolve_root(root) / OMNIGLOT_DIR}, expected "
                         f"{expect_characters} (pass expect_characters=None to accept a partial copy)")
    if not 0 < n_meta_train < n:
        raise ValueError(f"n_meta_train must be in 1..{n - 1} for {n} characters, got {n_meta_train}")
    permutation = np.random.default_rng(seed).permutation(n)
    images = [torch.from_numpy(np.stack([_read_png(f, image_size) for f in files])) for _, files in characters]
    base = resolve_root(root) / OMNIGLOT_DIR
    how = (f"Omniglot from {base} ({n} characters: {'/'.join(OMNIGLOT_SUBDIRS)}, alphabets and characters sorted); "
           f"PIL convert('L'), LANCZOS resize to {image_size}x{image_size}, /255; iMAML split: numpy "
           f"default_rng({seed}).permutation({n}), first {n_meta_train} characters meta-train, remaining "
           f"{n - n_meta_train} meta-test; rotations {rotations} (torch.rot90)")

    def pool(split: str, idx: np.ndarray) -> FewShotPool:
        names, imgs = [], []
        for i in idx:
            name, x = characters[int(i)][0], images[int(i)]
            if rotations == "per_task":
                names.append(name)
                imgs.append(x)
            else:
                for k, angle in enumerate(ROTATIONS):
                    names.append(f"{name}@{angle}")
                    imgs.append(torch.rot90(x, k, dims=(-2, -1)).contiguous())
        return FewShotPool(name="omniglot", split=split, class_names=tuple(names), images=tuple(imgs),
                           rotate_per_task=rotations == "per_task", source=f"{how}; this is {split}")

    return FewShotSplits(
        meta_train=pool("meta-train", permutation[:n_meta_train]),
        meta_test=pool("meta-test", permutation[n_meta_train:]),
        seed=seed, permutation=tuple(int(i) for i in permutation), source=how,
    )


# --------------------------------------------------------------------------- embedded stand-in (B.10)


def load_digits_meta(
    *, train_digits: Sequence[int] = STAND_IN_TRAIN_DIGITS, test_digits: Sequence[int] = STAND_IN_TEST_DIGITS,
    image_size: int = IMAGE_SIZE,
) -> FewShotSplits:
    """The offline Omniglot stand-in of spec B.10: scikit-learn digits as (digit, rotation) classes, 40 in all,
    meta-train digits 0-5 and meta-test digits 6-9 (disjoint).  See the module docstring for the pre-processing."""
    from sklearn.datasets import load_digits

    train, test = tuple(int(d) for d in train_digits), tuple(int(d) for d in test_digits)
    if set(train) & set(test) or not set(train) | set(test) <= set(range(10)) or not train or not test:
        raise ValueError(f"train and test digits must be disjoint non-empty subsets of 0..9, got {train}, {test}")
    digest = verified_sources("digits-meta", ["digits.csv.gz"])["digits.csv.gz"]
    digits = load_digits()
    raw = torch.from_numpy(np.asarray(digits.images, dtype=np.float32) / 16.0).unsqueeze(1)
    x = F.interpolate(raw, size=(image_size, image_size), mode="bilinear", align_corners=False)
    x = (1.0 - x.clamp(0.0, 1.0)).squeeze(1).contiguous()
    targets = np.asarray(digits.target, dtype=np.int64)
    how = (f"embedded Omniglot stand-in (spec B.10): scikit-learn load_digits() ({len(targets)} 8x8 digits, "
           f"digits.csv.gz sha256 {digest} as pinned), /16, "
           f"bilinear 8->{image_size} px, inverted (background 1); classes (digit, rotation in {list(ROTATIONS)}), "
           f"meta-train digits {list(train)}, meta-test digits {list(test)}; accuracy not comparable to Table 6")

    def pool(split: str, chosen: tuple[int, ...]) -> FewShotPool:
        names, imgs = [], []
        for d in chosen:
            for k, angle in enumerate(ROTATIONS):
                names.append(f"digit{d}@{angle}")
                imgs.append(torch.rot90(x[torch.from_numpy(targets == d)], k, dims=(-2, -1)).contiguous())
        return FewShotPool(name="digits-meta", split=split, class_names=tuple(names), images=tuple(imgs),
                           rotate_per_task=False, source=f"{how}; this is {split}", stand_in_for="omniglot")

    return FewShotSplits(meta_train=pool("meta-train", train), meta_test=pool("meta-test", test), seed=0,
                         permutation=train + test, source=how, stand_in_for="omniglot")
