"""Readers for the real MNIST, CIFAR-10, CIFAR-100, ImageNette and ImageNet files (nothing is ever downloaded).

MNIST
    The raw IDX files in torchvision's layout, ``<root>/MNIST/raw/``:
    ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte`` (60000 examples)
    and ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte`` (10000), each
    either plain or gzip-compressed with a ``.gz`` suffix (plain wins when both
    exist).  torchvision 0.29's ``datasets.MNIST`` only accepts the plain
    files, so a small IDX reader is used instead: a big-endian header (magic
    2051 = uint8 3-d images, 2049 = uint8 1-d labels, then one uint32 per
    dimension) followed by the row-major uint8 payload.

CIFAR-10
    The "python version" pickle batches, ``<root>/cifar-10-batches-py/``:
    ``data_batch_1`` .. ``data_batch_5`` (train, 50000) and ``test_batch``
    (10000).  Each is a dict with ``b"data"``, a ``(N, 3072)`` uint8 array of
    R, G, B planes of a row-major 32x32 image, and ``b"labels"``, N ints.
    Unpickling is restricted to the numpy array constructors, so a tampered
    batch file cannot run code.

CIFAR-100
    The "python version", ``<root>/cifar-100-python/``: ``train`` (50000) and
    ``test`` (10000), dicts like CIFAR-10's batches but with ``b"fine_labels"``
    (0..99, the labels used here) and ``b"coarse_labels"`` (0..19, ignored);
    class names from ``meta`` (``b"fine_label_names"``) when that file exists.
    Same restricted unpickling.

ImageNette
    The full-size ``imagenette2`` folder, ``<root>/imagenette2/train/<wnid>/``
    (9469 images) and ``<root>/imagenette2/val/<wnid>/`` (3925; our ``test``
    split), one folder per class wnid (:data:`IMAGENETTE_CLASSES`).  Read in
    torchvision ``ImageFolder`` order (classes = sorted wnids, files sorted,
    ``.jpeg``/``.jpg``/``.png`` in any case) with Pillow, converted to RGB,
    resized so the shorter side is ``image_size`` (default 256, the paper's
    input size) and centre-cropped to ``image_size`` squared, exactly like
    ``Resize(image_size)`` + ``CenterCrop(image_size)`` on PIL images.

ImageNet
    ILSVRC-2012 classification in the standard ``ImageFolder`` layout,
    ``<root>/imagenet/train/<wnid>/*.JPEG`` (1281167 images) and
    ``<root>/imagenet/val/<wnid>/*.JPEG`` (50000, after sorting the flat val
    tarball into wnid folders; our ``test`` split), with exactly 1000 class
    folders named like ``n01440764`` (``n`` + 8 digits).  Classes are the sorted
    wnids (torchvision ``ImageFolder`` order, label = index); files, decoding,
    ``Resize`` + ``CenterCrop`` to ``image_size`` (default 224) as for
    ImageNette.  ``train_per_class``/``test_per_class`` keep only the first N
    files of each class (in that sorted order), because the whole train split
    does not fit in memory (see :func:`load_imagenet`).

Images are returned as float32 ``value / 255`` in ``[0, 1]`` without any
normalisation, labels as int64.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from ._common import DatasetFormatError, DatasetNotFoundError, LabeledImages

__all__ = [
    "load_mnist",
    "load_cifar10",
    "load_cifar100",
    "load_imagenette",
    "load_imagenet",
    "read_idx",
    "resize_center_crop",
    "MNIST_CLASSES",
    "CIFAR10_CLASSES",
    "IMAGENETTE_CLASSES",
    "IMAGENETTE_URL",
    "IMAGE_EXTENSIONS",
    "IMAGENET_NUM_CLASSES",
    "IMAGENET_URL",
]

MNIST_CLASSES = tuple(str(i) for i in range(10))
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)

_MNIST_PREFIX = {"train": "train", "test": "t10k"}
_MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")
_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
_CIFAR_FILES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
_CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"

IMAGENETTE_URL = "https://s3.amazonaws.com/fast-ai-imageclas/imagenette2.tgz"
#: wnid -> readable name of the ten ImageNette classes, in label (sorted wnid) order.
IMAGENETTE_CLASSES: dict[str, str] = {
    "n01440764": "tench",
    "n02102040": "English springer",
    "n02979186": "cassette player",
    "n03000684": "chain saw",
    "n03028079": "church",
    "n03394916": "French horn",
    "n03417042": "garbage truck",
    "n03425413": "gas pump",
    "n03445777": "golf ball",
    "n03888605": "parachute",
}
_IMAGENETTE_DIRS = {"train": "train", "test": "val"}
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")

IMAGENET_URL = "https://image-net.org/challenges/LSVRC/2012/"
IMAGENET_NUM_CLASSES = 1000
_IMAGENET_DIRS = {"train": "train", "test": "val"}
_WNID = re.compile(r"n[0-9]{8}")

#: The MD5 checksums published for the distributed files (the MNIST mirrors' .gz files, the CIFAR python batches;
#: the values torchvision's download lists check): file name -> (examples in the full file, MD5).  A file holding
#: that many examples is taken to be the published file and must match; a smaller one (the tests' tiny files, a
#: user's subset) is read as it is, and the note in the dataset's ``source`` says no published checksum applied.
PUBLISHED_MD5: dict[str, tuple[int, str]] = {
    "train-images-idx3-ubyte.gz": (60000, "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    "train-labels-idx1-ubyte.gz": (60000, "d53e105ee54ea40749a09fcbcd1e9432"),
    "t10k-images-idx3-ubyte.gz": (10000, "9fb629c4189551a2d022fa330f9573f3"),
    "t10k-labels-idx1-ubyte.gz": (10000, "ec29112dd5afa0611ce80d1b7f02629c"),
    "cifar-10-batches-py/data_batch_1": (10000, "c99cafc152244af753f735de768cd75f"),
    "cifar-10-batches-py/data_batch_2": (10000, "d4bba439e000b95fd0a9bffe97cbabec"),
    "cifar-10-batches-py/data_batch_3": (10000, "54ebc095f3ab1f0389bbae665268c751"),
    "cifar-10-batches-py/data_batch_4": (10000, "634d18415352ddfa80567beed471001a"),
    "cifar-10-batches-py/data_batch_5": (10000, "482c414d41f54cd18b22e5b47cb7c3cb"),
    "cifar-10-batches-py/test_batch": (10000, "40351d587109b95175f43aff81a1287e"),
    "cifar-100-python/train": (50000, "16019d7e3df5f24257cddd939b257f8d"),
    "cifar-100-python/test": (10000, "f0ef6b0ae62326f3e7ffdfab6717acfc"),
}


def _published_key(path: Path) -> str:
    return path.name if path.name.endswith(".gz") else f"{path.parent.name}/{path.name}"


def verify_published(path: Path, examples: int) -> str:
    """Check a dataset file against its published MD5 (:data:`PUBLISHED_MD5`) when it holds the published number of
    examples; raise :class:`DatasetFormatError` naming the file and both hashes on a mismatch.  Returns a short note
    for the dataset's ``source``: verified, or why no published checksum applied."""
    key = _published_key(path)
    if key not in PUBLISHED_MD5:
        return f"{path.name}: no published checksum for this form of the file"
    full, expected = PUBLISHED_MD5[key]
    if examples != full:
        return f"{path.name}: {examples} examples, not the published file of {full}; no published checksum applies"
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != expected:
        raise DatasetFormatError(f"{path}: MD5 {digest.hexdigest()} differs from the published {expected} of "
                                 f"{key}; the file is damaged or not the published one (delete it and copy it again)")
    return f"{path.name}: published MD5 {expected} verified"


_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


# --------------------------------------------------------------------------- MNIST


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (plain, or gzip when the name ends in ``.gz``)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DatasetFormatError(f"{path}: not an IDX file (bad magic {raw[:4].hex()})")
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetFormatError(f"{path}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DatasetFormatError(
            f"{path}: IDX header says shape {shape} ({expected} payload bytes) but the file has "
            f"{len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def _mnist_files(root: Path, split: str) -> tuple[Path, list[Path], list[str]]:
    raw = root / "MNIST" / "raw"
    prefix = _MNIST_PREFIX[split]
    found, missing = [], []
    for stem in (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"):
        plain, gz = raw / stem, raw / f"{stem}.gz"
        if plain.is_file():
            found.append(plain)
        elif gz.is_file():
            found.append(gz)
        else:
            missing.append(str(plain))
    return raw, found, missing


def load_mnist(split: str, root: Path) -> LabeledImages:
    raw, found, missing = _mnist_files(root, split)
    if missing:
        listing = "; ".join(f"{p} (or {p}.gz)" for p in missing)
        raise DatasetNotFoundError(
            f"MNIST {split} split not found: expected {listing}. "
            f"This machine is offline and nothing is downloaded at run time: on a machine with internet, run "
            f"python -c \"import torchvision; torchvision.datasets.MNIST('mnist-root', train=True, download=True); "
            f"torchvision.datasets.MNIST('mnist-root', train=False, download=True)\" "
            f"(or fetch the four .gz files from {_MNIST_MIRRORS[0]}) and copy the files of mnist-root/MNIST/raw/ "
            f"into {raw}/ (pass root={root} or set $DEQBENCH_DATA). "
            f"Offline alternative: the embedded stand-in, load_dataset('digits28', split).",
            missing=tuple(missing),
        )
    image_path, label_path = found
    images = read_idx(image_path)
    labels = read_idx(label_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DatasetFormatError(f"{image_path}: expected a 3-d uint8 IDX array (magic 2051), got {images.dtype} {images.shape}")
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise DatasetFormatError(f"{label_path}: expected a 1-d uint8 IDX array (magic 2049), got {labels.dtype} {labels.shape}")
    if images.shape[0] != labels.shape[0]:
        raise DatasetFormatError(f"{image_path} has {images.shape[0]} images but {label_path} has {labels.shape[0]} labels")
    if labels.size and labels.max() > 9:
        raise DatasetFormatError(f"{label_path}: label {labels.max()} outside 0..9")
    checks = "; ".join(verify_published(p, images.shape[0]) for p in (image_path, label_path))
    x = torch.from_numpy(images.astype(np.float32)).div_(255.0).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    return LabeledImages(
        images=x,
        labels=y,
        num_classes=10,
        name="mnist",
        source=f"MNIST {split} split, raw IDX files {image_path} and {label_path}; pixels uint8/255; {checks}",
        stand_in_for=None,
        split=split,
        class_names=MNIST_CLASSES,
    )


# --------------------------------------------------------------------------- CIFAR-10


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals a pickled numpy array needs."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED or (module.startswith("numpy.dtypes") and name.endswith("DType")):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle global {module}.{name} from a CIFAR batch file")


def _read_cifar_pickle(path: Path) -> dict:
    """Unpickle a CIFAR file with :class:`_NumpyOnlyUnpickler`; keys are left as stored (bytes or str)."""
    with open(path, "rb") as f:
        obj = _NumpyOnlyUnpickler(f, encoding="bytes").load()
    if not isinstance(obj, dict):
        raise DatasetFormatError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return obj


def _get(mapping: dict, key: str):
    """``mapping[b"key"]``, else ``mapping["key"]``, else None: the real files have bytes keys (Python 2 str)."""
    return mapping[key.encode()] if key.encode() in mapping else mapping.get(key)


def _read_cifar_batch(path: Path, *, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """``(data (N, 3072) uint8, labels (N,) int64)`` of one CIFAR batch; labels from ``label_key``."""
    batch = _read_cifar_pickle(path)
    data, labels = _get(batch, "data"), _get(batch, label_key)
    if data is None or labels is None:
        raise DatasetFormatError(f"{path}: missing b'data' or b'{label_key}' (keys: {sorted(map(repr, batch))})")
    data = np.asarray(data)
    labels = np.asarray(labels, dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DatasetFormatError(f"{path}: b'data' must be uint8 (N, 3072), got {data.dtype} {data.shape}")
    if labels.shape != (data.shape[0],):
        raise DatasetFormatError(f"{path}: {data.shape[0]} images but {label_key} of shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > num_classes - 1):
        raise DatasetFormatError(f"{path}: {label_key} outside 0..{num_classes - 1}")
    return data, labels


def load_cifar10(split: str, root: Path) -> LabeledImages:
    folder = root / "cifar-10-batches-py"
    paths = [folder / name for name in _CIFAR_FILES[split]]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DatasetNotFoundError(
            f"CIFAR-10 {split} split not found: expected {', '.join(missing)}. "
            f"This machine is offline and nothing is downloaded at run time: on a machine with internet, download "
            f"{_CIFAR_URL} (or run python -c \"import torchvision; torchvision.datasets.CIFAR10('cifar-root', "
            f"download=True)\"), extract it so that the folder cifar-10-batches-py/ with data_batch_1..5 and "
            f"test_batch results, and copy that folder to {folder}/ (pass root={root} or set $DEQBENCH_DATA). "
            f"Offline alternative: the embedded stand-in, load_dataset('sample-patches32', split).",
            missing=tuple(missing),
        )
    parts = [_read_cifar_batch(p, label_key="labels", num_classes=10) for p in paths]
    checks = "; ".join(verify_published(p, len(y)) for p, (_, y) in zip(paths, parts))
    data = np.concatenate([d for d, _ in parts])
    labels = np.concatenate([y for _, y in parts])
    x = torch.from_numpy(data.reshape(-1, 3, 32, 32).astype(np.float32)).div_(255.0)
    return LabeledImages(
        images=x,
        labels=torch.from_numpy(labels),
        num_classes=10,
        name="cifar10",
        source=f"CIFAR-10 {split} split, python pickle batches {', '.join(map(str, paths))}; pixels uint8/255; {checks}",
        stand_in_for=None,
        split=split,
        class_names=CIFAR10_CLASSES,
    )


# --------------------------------------------------------------------------- CIFAR-100


def _cifar100_class_names(meta: Path) -> tuple[str, ...] | None:
    """The 100 fine class names from the ``meta`` pickle, or None when the file is absent."""
    if not meta.is_file():
        return None
    names = _get(_read_cifar_pickle(meta), "fine_label_names")
    if not isinstance(names, (list, tuple)) or len(names) != 100:
        raise DatasetFormatError(f"{meta}: expected 100 b'fine_label_names', got {type(names).__name__}")
    return tuple(n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names)


def load_cifar100(split: str, root: Path) -> LabeledImages:
    """CIFAR-100 with its 100 fine labels; class names from ``meta`` when present, else None."""
    folder = root / "cifar-100-python"
    path = folder / ("train" if split == "train" else "test")
    if not path.is_file():
        raise DatasetNotFoundError(
            f"CIFAR-100 {split} split not found: expected {path}. "
            f"This machine is offline and nothing is downloaded at run time: on a machine with internet, download "
            f"{_CIFAR100_URL} (or run python -c \"import torchvision; torchvision.datasets.CIFAR100('cifar-root', "
            f"download=True)\"), extract it so that the folder cifar-100-python/ with train, test and meta "
            f"results, and copy that folder to {folder}/ (pass root={root} or set $DEQBENCH_DATA). "
            f"Offline alternative: the embedded stand-in, load_dataset('sample-patches32-40', split).",
            missing=(str(path),),
        )
    data, labels = _read_cifar_batch(path, label_key="fine_labels", num_classes=100)
    checks = verify_published(path, len(labels))
    meta = folder / "meta"
    class_names = _cifar100_class_names(meta)
    x = torch.from_numpy(data.reshape(-1, 3, 32, 32).astype(np.float32)).div_(255.0)
    names_from = f"class names from {meta}" if class_names is not None else f"no class names ({meta} absent)"
    return LabeledImages(
        images=x,
        labels=torch.from_numpy(labels),
        num_classes=100,
        name="cifar100",
        source=f"CIFAR-100 {split} split, python pickle {path}, b'fine_labels' (100 classes), {names_from}; "
        f"pixels uint8/255; {checks}",
        stand_in_for=None,
        split=split,
        class_names=class_names,
    )


# --------------------------------------------------------------------------- ImageNette


def _image_files(folder: Path) -> list[Path]:
    """Image files under ``folder`` in ImageFolder order: sorted ``os.walk``, names sorted, extension matched
    case-insensitively."""
    found = []
    for dirpath, _, names in sorted(os.walk(folder, followlinks=True)):
        found.extend(Path(dirpath, n) for n in sorted(names) if n.lower().endswith(IMAGE_EXTENSIONS))
    return found


def resize_center_crop(path: Path, size: int) -> np.ndarray:
    """``(size, size, 3)`` uint8: ``Resize(size)`` then ``CenterCrop(size)`` as torchvision does on a PIL image.

    The shorter side becomes ``size`` and the longer ``int(size * long / short)`` (truncated), with PIL's
    bilinear filter (which antialiases when shrinking); the crop starts at ``int(round((side - size) / 2))``.
    """
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
    w, h = im.size
    new = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    if new != (w, h):
        im = im.resize(new, Image.BILINEAR)
    left, top = int(round((new[0] - size) / 2.0)), int(round((new[1] - size) / 2.0))
    return np.array(im.crop((left, top, left + size, top + size)), dtype=np.uint8)


def _positive_size(image_size) -> int:
    if isinstance(image_size, bool) or int(image_size) != image_size or image_size < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
    return int(image_size)


def _read_resized(files: list[Path], size: int) -> torch.Tensor:
    """``(len(files), 3, size, size)`` float32 in [0, 1]: :func:`resize_center_crop` of each file, decoded by a
    thread pool."""
    x = torch.empty((len(files), 3, size, size), dtype=torch.float32)

    def fill(i: int) -> None:
        x[i].copy_(torch.from_numpy(resize_center_crop(files[i], size)).permute(2, 0, 1)).div_(255.0)

    # PIL releases the GIL while decoding and resizing, so threads scale
    with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
        list(pool.map(fill, range(len(files))))
    return x


def load_imagenette(split: str, root: Path, *, image_size: int = 256) -> LabeledImages:
    """ImageNette (full-size ``imagenette2``) at ``image_size`` px, all in memory.

    Memory: float32 ``(N, 3, S, S)`` is 7.4 GB for the 9469 train images at S = 256 (3.1 GB for the 3925 val
    images); pass a smaller ``image_size`` (e.g. 128: a quarter of that) to shrink it.
    """
    size = _positive_size(image_size)
    folder = root / "imagenette2" / _IMAGENETTE_DIRS[split]
    expected = [folder / wnid for wnid in IMAGENETTE_CLASSES]
    missing = [str(p) for p in expected if not p.is_dir()]
    if missing:
        raise DatasetNotFoundError(
            f"ImageNette {split} split not found: expected the folder {folder} with one sub-folder of .JPEG images "
            f"per class; missing {', '.join(missing)}. "
            f"This machine is offline and nothing is downloaded at run time: on a machine with internet, download "
            f"{IMAGENETTE_URL} (the full-size imagenette2), extract it with tar xzf imagenette2.tgz so that "
            f"imagenette2/train/ and imagenette2/val/ result, and copy the imagenette2 folder to {folder.parent}/ "
            f"(pass root={root} or set $DEQBENCH_DATA); our 'test' split reads val/. "
            f"Offline alternative: the embedded stand-in, load_dataset('sample-patches64', split).",
            missing=tuple(missing),
        )
    extra = sorted(e.name for e in os.scandir(folder) if e.is_dir() and e.name not in IMAGENETTE_CLASSES)
    if extra:
        # a foreign class folder would shift the ImageFolder label of every later class
        raise DatasetFormatError(
            f"{folder}: unexpected class folders {extra}; ImageNette has exactly {list(IMAGENETTE_CLASSES)}"
        )
    files: list[Path] = []
    labels: list[int] = []
    for label, class_dir in enumerate(expected):  # IMAGENETTE_CLASSES is in sorted wnid order
        found = _image_files(class_dir)
        if not found:
            raise DatasetFormatError(f"{class_dir}: no {'/'.join(IMAGE_EXTENSIONS)} images")
        files.extend(found)
        labels.extend([label] * len(found))
    x = _read_resized(files, size)
    return LabeledImages(
        images=x,
        labels=torch.tensor(labels, dtype=torch.int64),
        num_classes=10,
        name="imagenette",
        source=f"ImageNette {split} split: {len(files)} images of {folder}/<wnid>/ in torchvision ImageFolder order "
        f"(classes = the sorted wnids, files sorted); each converted to RGB, resized with PIL bilinear "
        f"(antialiased) so the shorter side is {size} px and centre-cropped to {size}x{size}; pixels uint8/255",
        stand_in_for=None,
        split=split,
        class_names=tuple(IMAGENETTE_CLASSES.values()),
    )


# --------------------------------------------------------------------------- ImageNet (ILSVRC-2012)


def _per_class(value, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
    return int(value)


def _imagenet_classes(folder: Path) -> list[str]:
    """The sorted wnid sub-folders of ``folder``; ValueError unless they are exactly 1000 names ``n`` + 8 digits."""
    names = sorted(e.name for e in os.scandir(folder) if e.is_dir())
    bad = [n for n in names if not _WNID.fullmatch(n)]
    problems = []
    if len(names) != IMAGENET_NUM_CLASSES:
        problems.append(f"found {len(names)} class folders, expected exactly {IMAGENET_NUM_CLASSES}")
    if bad:
        shown = ", ".join(repr(n) for n in bad[:10]) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
        problems.append(f"{len(bad)} folder name(s) are not wnids like 'n01440764' ('n' + 8 digits): {shown}")
    if problems:
        # a missing or foreign class folder would shift the ImageFolder label of every later class
        raise DatasetFormatError(
            f"{folder}: not an ILSVRC-2012 ImageFolder split: {'; '.join(problems)}. Expected one folder per "
            f"class wnid holding that class's .JPEG images (val/ must be sorted into wnid folders first)"
        )
    return names


def load_imagenet(
    split: str,
    root: Path,
    *,
    image_size: int = 224,
    train_per_class: int | None = None,
    test_per_class: int | None = None,
) -> LabeledImages:
    """ImageNet (ILSVRC-2012) classification at ``image_size`` px, all in memory.

    ``split`` ``"train"`` reads ``<root>/imagenet/train/``, ``"test"`` reads ``<root>/imagenet/val/``, each with
    exactly 1000 wnid folders (labels = their sorted order, as torchvision ``ImageFolder``).  ``train_per_class``
    (used for ``"train"``) and ``test_per_class`` (used for ``"test"``) keep only the first N files of each class in
    sorted order; None keeps all.

    Memory: everything is decoded into one float32 ``(N, 3, S, S)`` tensor, 602112 bytes per image at S = 224.
    The full train split is 1281167 x 3 x 224 x 224 x 4 bytes, about 770 GB, and val 50000 images, about 30 GB.
    A paper-scale ImageNet run therefore needs ``train_per_class``/``test_per_class`` (e.g. 100 per class:
    100000 images, about 60 GB) or a streaming loader, which deqbench does not provide.
    """
    size = _positive_size(image_size)
    limits = {"train": _per_class(train_per_class, "train_per_class"),
              "test": _per_class(test_per_class, "test_per_class")}
    per_class = limits[split]
    base = root / "imagenet"
    folder = base / _IMAGENET_DIRS[split]
    if not folder.is_dir():
        raise DatasetNotFoundError(
            f"ImageNet (ILSVRC-2012) {split} split not found: expected the folder {folder} with 1000 sub-folders "
            f"<wnid>/ (e.g. {folder / 'n01440764'}) of .JPEG images. "
            f"This machine is offline and nothing is downloaded at run time: on a machine with internet, register "
            f"at {IMAGENET_URL} and download ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar; extract the train "
            f"tarball into train/ and each of its per-class tars into train/<wnid>/; extract the val tarball into "
            f"val/ and sort its 50000 flat images into val/<wnid>/ folders (e.g. with the widely used valprep.sh "
            f"script, or torchvision.datasets.ImageNet with ILSVRC2012_devkit_t12.tar.gz); then copy train/ and "
            f"val/ to {base}/ (pass root={root} or set $DEQBENCH_DATA); our 'test' split reads val/. "
            f"There is no embedded stand-in for ImageNet, so the ImageNet experiments (MOptEqs Table 4) are out "
            f"of scope offline.",
            missing=(str(folder),),
        )
    classes = _imagenet_classes(folder)
    files: list[Path] = []
    labels: list[int] = []
    for label, wnid in enumerate(classes):
        found = _image_files(folder / wnid)
        if not found:
            raise DatasetFormatError(f"{folder / wnid}: no {'/'.join(IMAGE_EXTENSIONS)} images")
        if per_class is not None:
            found = found[:per_class]
        files.extend(found)
        labels.extend([label] * len(found))
    x = _read_resized(files, size)
    option = "train_per_class" if split == "train" else "test_per_class"
    kept = (
        "all files of every class" if per_class is None
        else f"the first {per_class} files of each class in sorted order ({option}={per_class})"
    )
    return LabeledImages(
        images=x,
        labels=torch.tensor(labels, dtype=torch.int64),
        num_classes=IMAGENET_NUM_CLASSES,
        name="imagenet",
        source=f"ImageNet (ILSVRC-2012) {split} split: {len(files)} images of {folder}/<wnid>/, {kept}, in "
        f"torchvision ImageFolder order (classes = the {IMAGENET_NUM_CLASSES} sorted wnids, files sorted); each "
        f"converted to RGB, resized with PIL bilinear (antialiased) so the shorter side is {size} px and "
        f"centre-cropped to {size}x{size}; pixels uint8/255",
        stand_in_for=None,
        split=split,
        class_names=tuple(classes),
    )
