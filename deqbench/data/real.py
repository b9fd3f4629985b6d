"""Readers for the real MNIST and CIFAR-10 files (nothing is ever downloaded).

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

Images are returned as float32 ``value / 255`` in ``[0, 1]`` without any
normalisation, labels as int64.
"""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import torch

from ._common import DatasetNotFoundError, LabeledImages

__all__ = ["load_mnist", "load_cifar10", "read_idx", "MNIST_CLASSES", "CIFAR10_CLASSES"]

MNIST_CLASSES = tuple(str(i) for i in range(10))
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)

_MNIST_PREFIX = {"train": "train", "test": "t10k"}
_MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")
_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
_CIFAR_FILES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


# --------------------------------------------------------------------------- MNIST


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (plain, or gzip when the name ends in ``.gz``)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic {raw[:4].hex()})")
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(
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
        raise ValueError(f"{image_path}: expected a 3-d uint8 IDX array (magic 2051), got {images.dtype} {images.shape}")
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise ValueError(f"{label_path}: expected a 1-d uint8 IDX array (magic 2049), got {labels.dtype} {labels.shape}")
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{image_path} has {images.shape[0]} images but {label_path} has {labels.shape[0]} labels")
    if labels.size and labels.max() > 9:
        raise ValueError(f"{label_path}: label {labels.max()} outside 0..9")
    x = torch.from_numpy(images.astype(np.float32)).div_(255.0).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    return LabeledImages(
        images=x,
        labels=y,
        num_classes=10,
        name="mnist",
        source=f"MNIST {split} split, raw IDX files {image_path} and {label_path}; pixels uint8/255",
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


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with open(path, "rb") as f:
        batch = _NumpyOnlyUnpickler(f, encoding="bytes").load()
    if not isinstance(batch, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(batch).__name__}")
    get = lambda key: batch[key.encode()] if key.encode() in batch else batch.get(key)  # noqa: E731
    data, labels = get("data"), get("labels")
    if data is None or labels is None:
        raise ValueError(f"{path}: missing b'data' or b'labels' (keys: {sorted(map(repr, batch))})")
    data = np.asarray(data)
    labels = np.asarray(labels, dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: b'data' must be uint8 (N, 3072), got {data.dtype} {data.shape}")
    if labels.shape != (data.shape[0],):
        raise ValueError(f"{path}: {data.shape[0]} images but labels of shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{path}: labels outside 0..9")
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
    parts = [_read_cifar_batch(p) for p in paths]
    data = np.concatenate([d for d, _ in parts])
    labels = np.concatenate([y for _, y in parts])
    x = torch.from_numpy(data.reshape(-1, 3, 32, 32).astype(np.float32)).div_(255.0)
    return LabeledImages(
        images=x,
        labels=torch.from_numpy(labels),
        num_classes=10,
        name="cifar10",
        source=f"CIFAR-10 {split} split, python pickle batches {', '.join(map(str, paths))}; pixels uint8/255",
        stand_in_for=None,
        split=split,
        class_names=CIFAR10_CLASSES,
    )
