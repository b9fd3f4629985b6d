"""deqbench.data: real-format readers on tiny synthetic files, embedded stand-ins, errors. CPU, offline."""

from __future__ import annotations

import gzip
import pickle
import socket
import struct
import time
import warnings

import numpy as np
import pytest
import torch

from deqbench.data import DATASETS, DatasetNotFoundError, LabeledImages, load_dataset, stand_in_for
from deqbench.data._common import DatasetFormatError


# --------------------------------------------------------------------------- helpers


def _idx_bytes(array: np.ndarray) -> bytes:
    magic = {3: 2051, 1: 2049}[array.ndim]
    return struct.pack(f">{1 + array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


def _write_mnist(root, split: str, images: np.ndarray, labels: np.ndarray, gz: bool) -> None:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    prefix = {"train": "train", "test": "t10k"}[split]
    for stem, arr in ((f"{prefix}-images-idx3-ubyte", images), (f"{prefix}-labels-idx1-ubyte", labels)):
        data = _idx_bytes(arr)
        if gz:
            with gzip.open(raw / f"{stem}.gz", "wb") as f:
                f.write(data)
        else:
            (raw / stem).write_bytes(data)


def _write_cifar(root, rng: np.random.Generator, per_batch: int = 3):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=per_batch)]
        batch = {b"batch_label": name.encode(), b"labels": labels, b"data": data,
                 b"filenames": [f"img{i}.png".encode() for i in range(per_batch)]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
        written[name] = (data, labels)
    return written


def _py2_cifar_pickle(data: np.ndarray, labels: list[int]) -> bytes:
    """A batch pickled the way Python 2 + numpy wrote the real CIFAR-10 files (str keys, numpy.core globals)."""

    def short_str(b: bytes) -> bytes:  # SHORT_BINSTRING: a Python 2 str
        return b"U" + bytes([len(b)]) + b

    def binint(v: int) -> bytes:
        return b"J" + struct.pack("<i", v)

    raw = data.astype(np.uint8).tobytes()
    array = (
        b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\n" + b"K\x00\x85" + short_str(b"b") + b"\x87R"
        + b"(K\x01" + binint(data.shape[0]) + binint(data.shape[1]) + b"\x86"
        + b"cnumpy\ndtype\n" + short_str(b"u1") + b"K\x00K\x01\x87R"
        + b"(K\x03" + short_str(b"|") + b"NNN" + binint(-1) + binint(-1) + b"K\x00tb"
        + b"\x89" + b"T" + struct.pack("<I", len(raw)) + raw + b"tb"
    )
    label_list = b"](" + b"".join(b"K" + bytes([v]) for v in labels) + b"e"
    return (
        b"\x80\x02}(" + short_str(b"batch_label") + short_str(b"testing batch 1 of 1")
        + short_str(b"data") + array + short_str(b"labels") + label_list + b"u."
    )


@pytest.fixture
def offline(monkeypatch):
    """Any attempt to open a network connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("deqbench.data tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    from deqbench.data.embedded import _resized_sources

    _resized_sources.cache_clear()  # really read the bundled files while the network is refused


# --------------------------------------------------------------------------- real MNIST


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_reads_raw_idx_exactly(tmp_path, gz):
    rng = np.random.default_rng(1)
    expected = {}
    for split, n in (("train", 5), ("test", 3)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        _write_mnist(tmp_path, split, images, labels, gz=gz)
        expected[split] = (images, labels)
    for split, (images, labels) in expected.items():
        data = load_dataset("mnist", split, root=tmp_path)
        assert isinstance(data, LabeledImages)
        assert data.images.shape == (len(labels), 1, 28, 28) and data.images.dtype == torch.float32
        assert data.labels.shape == (len(labels),) and data.labels.dtype == torch.int64
        torch.testing.assert_close(data.images, torch.from_numpy(images).float().unsqueeze(1) / 255, rtol=0, atol=0)
        assert data.labels.tolist() == labels.tolist()
        assert data.name == "mnist" and data.stand_in_for is None and data.num_classes == 10
        assert "MNIST" in data.source and ("ubyte.gz" in data.source) == gz


def test_mnist_layout_matches_torchvision(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, size=(6, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=6, dtype=np.uint8)
    _write_mnist(tmp_path, "test", images, labels, gz=False)
    _write_mnist(tmp_path, "train", images[:2], labels[:2], gz=False)  # torchvision wants all four files
    reference = torchvision.datasets.MNIST(str(tmp_path), train=False, download=False)
    ours = load_dataset("mnist", "test", root=tmp_path)
    assert torch.equal(ours.images[:, 0], reference.data.float() / 255)
    assert torch.equal(ours.labels, reference.targets)


def test_mnist_prefers_plain_file_and_accepts_mixed(tmp_path):
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, size=(4, 28, 28), dtype=np.uint8)
    labels = np.array([0, 9, 3, 3], dtype=np.uint8)
    _write_mnist(tmp_path, "train", images, labels, gz=True)
    (tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte").write_bytes(_idx_bytes(labels))  # plain labels too
    data = load_dataset("mnist", "train", root=str(tmp_path))
    assert data.labels.tolist() == [0, 9, 3, 3]
    assert torch.equal(data.images[:, 0], torch.from_numpy(images).float() / 255)


def test_mnist_default_root_from_env(tmp_path, monkeypatch):
    images = np.zeros((2, 28, 28), dtype=np.uint8)
    images[1] = 255
    _write_mnist(tmp_path, "test", images, np.array([4, 7], dtype=np.uint8), gz=False)
    monkeypatch.setenv("DEQBENCH_DATA", str(tmp_path))
    data = load_dataset("mnist", "test")
    assert data.images[0].max() == 0 and data.images[1].min() == 1.0 and data.labels.tolist() == [4, 7]


def test_mnist_corrupt_file_is_rejected(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "t10k-images-idx3-ubyte").write_bytes(struct.pack(">4I", 2051, 3, 28, 28) + b"\0" * 100)
    (raw / "t10k-labels-idx1-ubyte").write_bytes(_idx_bytes(np.zeros(3, dtype=np.uint8)))
    with pytest.raises(ValueError, match="payload"):
        load_dataset("mnist", "test", root=tmp_path)


@pytest.mark.parametrize("split,prefix", [("train", "train"), ("test", "t10k")])
def test_mnist_missing_files_error_names_paths(tmp_path, split, prefix):
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("mnist", split, root=tmp_path)
    message = str(info.value)
    raw = tmp_path / "MNIST" / "raw"
    assert str(raw / f"{prefix}-images-idx3-ubyte") in message
    assert str(raw / f"{prefix}-labels-idx1-ubyte") in message
    assert ".gz" in message and "offline" in message and "digits28" in message
    assert isinstance(info.value, FileNotFoundError)
    assert str(raw / f"{prefix}-images-idx3-ubyte") in info.value.missing


def test_mnist_missing_only_labels(tmp_path):
    images = np.zeros((2, 28, 28), dtype=np.uint8)
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "train-images-idx3-ubyte").write_bytes(_idx_bytes(images))
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("mnist", "train", root=tmp_path)
    assert info.value.missing == (str(raw / "train-labels-idx1-ubyte"),)


# --------------------------------------------------------------------------- real CIFAR-10


def test_cifar10_reads_pickle_batches_exactly(tmp_path):
    written = _write_cifar(tmp_path, np.random.default_rng(3), per_batch=3)
    train = load_dataset("cifar10", "train", root=tmp_path)
    test = load_dataset("cifar10", "test", root=tmp_path)
    assert train.images.shape == (15, 3, 32, 32) and test.images.shape == (3, 3, 32, 32)
    assert train.images.dtype == torch.float32 and train.labels.dtype == torch.int64
    data = np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)])
    labels = sum((written[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    assert torch.equal(train.images, torch.from_numpy(data).float().reshape(15, 3, 32, 32) / 255)
    assert train.labels.tolist() == labels
    # channel planes: the first 1024 values are the red 32x32 image, row-major
    first = written["data_batch_1"][0][0]
    assert train.images[0, 0, 0, 1] == first[1] / 255 and train.images[0, 0, 1, 0] == first[32] / 255
    assert train.images[0, 1, 0, 0] == first[1024] / 255 and train.images[0, 2, 31, 31] == first[3071] / 255
    assert torch.equal(test.images, torch.from_numpy(written["test_batch"][0]).float().reshape(3, 3, 32, 32) / 255)
    assert test.labels.tolist() == written["test_batch"][1]
    assert train.name == "cifar10" and train.stand_in_for is None and len(train.class_names) == 10


def test_cifar10_layout_matches_torchvision(tmp_path, monkeypatch):
    torchvision = pytest.importorskip("torchvision")
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(5)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(2, 3072), dtype=np.uint8)
        (folder / name).write_bytes(_py2_cifar_pickle(data, [int(v) for v in rng.integers(0, 10, size=2)]))
    # torchvision checks the real files' md5 sums; the tiny files cannot match them
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "_load_meta", lambda self: None)  # batches.meta: class names
    for split in ("train", "test"):
        reference = torchvision.datasets.CIFAR10(str(tmp_path), train=split == "train", download=False)
        ours = load_dataset("cifar10", split, root=tmp_path)
        assert torch.equal(ours.images.permute(0, 2, 3, 1), torch.from_numpy(reference.data).float() / 255)
        assert ours.labels.tolist() == list(reference.targets)


def test_cifar10_reads_python2_pickles(tmp_path):
    """The real batches were written by Python 2; check the reader on that exact pickle dialect."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    data = np.random.default_rng(6).integers(0, 256, size=(4, 3072), dtype=np.uint8)
    blob = _py2_cifar_pickle(data, [3, 1, 4, 1])
    assert np.array_equal(pickle.loads(blob, encoding="latin1")["data"], data)  # the blob itself is sound
    (folder / "test_batch").write_bytes(blob)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. numpy 2's "numpy.core is deprecated"
        test = load_dataset("cifar10", "test", root=tmp_path)
    assert test.labels.tolist() == [3, 1, 4, 1]
    assert torch.equal(test.images, torch.from_numpy(data).float().reshape(4, 3, 32, 32) / 255)


def test_cifar10_accepts_str_keys(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    data = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3072)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": data, "labels": [1, 2]}, f)
    test = load_dataset("cifar10", "test", root=tmp_path)
    assert test.labels.tolist() == [1, 2]
    assert torch.equal(test.images.reshape(2, -1), torch.from_numpy(data).float() / 255)


def test_cifar10_refuses_code_in_pickle(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": [0]}, f)
    with pytest.raises(pickle.UnpicklingError, match="builtins.print"):
        load_dataset("cifar10", "test", root=tmp_path)


def test_cifar10_missing_files_error_names_paths(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("cifar10", "train", root=tmp_path)
    message = str(info.value)
    for i in range(1, 6):
        assert str(tmp_path / "cifar-10-batches-py" / f"data_batch_{i}") in message
    assert "cifar-10-python.tar.gz" in message and "sample-patches32" in message
    with pytest.raises(DatasetNotFoundError, match="test_batch"):
        load_dataset("cifar10", "test", root=tmp_path)


# --------------------------------------------------------------------------- embedded stand-ins

STAND_INS = [("digits28", (1, 28, 28), "mnist"), ("sample-patches32", (3, 32, 32), "cifar10")]


@pytest.mark.parametrize("name,shape,real", STAND_INS)
def test_stand_in_contract(name, shape, real, offline):
    splits = {split: load_dataset(name, split) for split in ("train", "test")}
    for split, data in splits.items():
        assert data.images.shape[1:] == shape and data.images.dtype == torch.float32
        assert data.labels.dtype == torch.int64 and data.labels.shape == (data.images.shape[0],)
        assert data.images.min() >= 0 and data.images.max() <= 1 and data.images.max() > 0.5
        assert torch.isfinite(data.images).all()
        assert sorted(data.labels.unique().tolist()) == list(range(10)), split
        assert data.num_classes == 10 and data.name == name and data.split == split
        assert data.stand_in_for == real and data.source.strip()
    assert DATASETS[name].stand_in_for == real and stand_in_for(real) == name
    # disjoint: no test image equals any train image
    train = splits["train"].images.flatten(1)
    test = splits["test"].images.flatten(1)
    train_keys = {row.numpy().tobytes() for row in train}
    assert not any(row.numpy().tobytes() in train_keys for row in test)
    assert len(train_keys) == len(train)  # no duplicates inside train either


def test_digits28_sizes_and_source():
    train, test = load_dataset("digits28", "train"), load_dataset("digits28", "test")
    assert (len(train), len(test)) == (1437, 360)
    assert "load_digits" in train.source and "bilinear" in train.source and "train_test_split" in train.source
    # class balance within one example per class of the 80/20 proportions
    counts_test = test.labels.bincount(minlength=10)
    assert counts_test.min() >= 35 and counts_test.max() <= 37


def test_digits28_matches_sklearn():
    from sklearn.datasets import load_digits

    digits = load_digits()
    data = load_dataset("digits28", "test")
    # each stand-in image, downsampled back by area averaging, stays close to some original digit with its label
    small = torch.nn.functional.adaptive_avg_pool2d(data.images, 8).flatten(1)
    originals = torch.from_numpy(digits.images.reshape(-1, 64) / 16.0).float()
    nearest = torch.cdist(small[:20], originals).argmin(1)
    assert torch.equal(torch.from_numpy(digits.target)[nearest], data.labels[:20])


def test_sample_patches32_sizes_options_and_source():
    train = load_dataset("sample-patches32", "train")
    test = load_dataset("sample-patches32", "test")
    assert (len(train), len(test)) == (4000, 1000)
    assert train.labels.bincount().tolist() == [400] * 10 and test.labels.bincount().tolist() == [100] * 10
    for word in ("china.jpg", "flower.jpg", "astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg"):
        assert word in train.source
    small = load_dataset("sample-patches32", "test", test_per_class=7, train_per_class=3)
    assert small.labels.bincount().tolist() == [7] * 10
    # the test patches do not depend on how many train patches were asked for
    other = load_dataset("sample-patches32", "test", train_per_class=50)
    assert torch.equal(other.images, test.images) and torch.equal(other.labels, test.labels)
    reseeded = load_dataset("sample-patches32", "test", seed=1)
    assert not torch.equal(reseeded.images, test.images)


def test_sample_patches32_patches_come_from_disjoint_regions():
    from deqbench.data.embedded import PATCH_SOURCES, _resized_sources

    sources = _resized_sources(128)
    assert len(sources) == len(PATCH_SOURCES) == 10
    for split in ("train", "test"):
        data = load_dataset("sample-patches32", split, train_per_class=20, test_per_class=20)
        for image, label in zip(data.images[:60], data.labels[:60]):
            src = np.array(sources[int(label)])  # (3, H, W) uint8
            patch = np.rint(image.numpy() * 255).astype(np.uint8)
            cut = int(np.floor(0.7 * src.shape[2]))
            # candidate positions: the top-left pixel matches; then compare the whole window
            top_left = (src[:, : src.shape[1] - 31, : src.shape[2] - 31] == patch[:, :1, :1]).all(0)
            found = [(y, x) for y, x in zip(*np.nonzero(top_left))
                     if np.array_equal(src[:, y : y + 32, x : x + 32], patch)]
            assert found, "patch not found in its source image"
            for _, x0 in found:
                assert (x0 + 32 <= cut) if split == "train" else (x0 >= cut)


@pytest.mark.parametrize("name", ["digits28", "sample-patches32"])
def test_stand_ins_are_deterministic_and_fast(name):
    load_dataset(name, "test")  # warm imports
    start = time.perf_counter()
    first = load_dataset(name, "train")
    elapsed = time.perf_counter() - start
    second = load_dataset(name, "train")
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    assert first.source == second.source
    assert elapsed < 2.0
    first.images.zero_()  # callers may modify what they get; later loads are unaffected
    assert torch.equal(load_dataset(name, "train").images, second.images)


def test_limit_option():
    full = load_dataset("digits28", "train")
    part = load_dataset("digits28", "train", limit=100)
    again = load_dataset("digits28", "train", limit=100)
    assert len(part) == 100 and torch.equal(part.images, again.images) and torch.equal(part.labels, again.labels)
    assert "limited to the first 100" in part.source
    assert len(load_dataset("digits28", "train", limit=10**6)) == len(full)
    with pytest.raises(ValueError, match="limit"):
        load_dataset("digits28", "train", limit=-1)


# --------------------------------------------------------------------------- errors


def test_unknown_dataset_name():
    with pytest.raises(ValueError, match="'imagenet21k'") as info:
        load_dataset("imagenet21k", "train")
    for known in ("mnist", "cifar10", "digits28", "sample-patches32"):
        assert known in str(info.value)


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_unknown_split(name, tmp_path):
    with pytest.raises(ValueError, match="'validation'") as info:
        load_dataset(name, "validation", root=tmp_path)
    assert "train" in str(info.value) and "test" in str(info.value)


def test_unknown_option():
    with pytest.raises(TypeError, match="train_per_clas"):
        load_dataset("sample-patches32", "train", train_per_clas=3)


def test_sample_patch_sources_are_the_public_images(offline):
    """Reading the bundled files directly gives the same pixels as the packages' public loaders."""
    import skimage.data
    from sklearn.datasets import load_sample_image

    from deqbench.data.embedded import PATCH_SOURCES, _read_rgb

    public = {
        "china": lambda: load_sample_image("china.jpg"),
        "flower": lambda: load_sample_image("flower.jpg"),
        "motorcycle": lambda: skimage.data.stereo_motorcycle()[0],
    }
    for src in PATCH_SOURCES:
        expected = public[src.name]() if src.name in public else getattr(skimage.data, src.name)()
        assert src.path().is_file()
        assert np.array_equal(_read_rgb(src), expected), src.name


# --------------------------------------------------------------------------- published checksums (issue 13)


def test_published_checksums_apply_to_full_files_only(tmp_path, monkeypatch):
    """A file with the published example count must have the published MD5 (a mismatch names the file and both
    hashes); a smaller file (a subset, the tests' tiny files) is read and says that no published checksum applied."""
    import hashlib

    from deqbench.data import real

    rng = np.random.default_rng(5)
    _write_mnist(tmp_path, "test", rng.integers(0, 256, size=(3, 28, 28), dtype=np.uint8),
                 rng.integers(0, 10, size=3, dtype=np.uint8), gz=True)
    data = load_dataset("mnist", "test", root=tmp_path)
    assert "3 examples, not the published file of 10000; no published checksum applies" in data.source
    images = tmp_path / "MNIST/raw/t10k-images-idx3-ubyte.gz"
    labels = tmp_path / "MNIST/raw/t10k-labels-idx1-ubyte.gz"
    true_md5 = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in (images, labels)}
    # pretend these 3-example files are the published ones: the right hashes pass ...
    monkeypatch.setitem(real.PUBLISHED_MD5, images.name, (3, true_md5[images.name]))
    monkeypatch.setitem(real.PUBLISHED_MD5, labels.name, (3, true_md5[labels.name]))
    assert f"published MD5 {true_md5[images.name]} verified" in load_dataset("mnist", "test", root=tmp_path).source
    # ... and one changed byte of the compressed file is caught, with both hashes and the path
    monkeypatch.setitem(real.PUBLISHED_MD5, images.name, (3, "0" * 32))
    with pytest.raises(DatasetFormatError, match=f"{images}: MD5 {true_md5[images.name]} differs from the published 0{{32}}"):
        load_dataset("mnist", "test", root=tmp_path)


def test_published_checksums_of_cifar_batches(tmp_path, monkeypatch):
    from deqbench.data import real

    _write_cifar(tmp_path, np.random.default_rng(6), per_batch=2)
    assert "test_batch: 2 examples, not the published file of 10000" in load_dataset("cifar10", "test", root=tmp_path).source
    monkeypatch.setitem(real.PUBLISHED_MD5, "cifar-10-batches-py/test_batch", (2, "f" * 32))
    with pytest.raises(DatasetFormatError, match="test_batch: MD5 [0-9a-f]{32} differs from the published f{32}"):
        load_dataset("cifar10", "test", root=tmp_path)
    assert {name for name in real.PUBLISHED_MD5 if name.startswith("cifar-10-")} == {
        f"cifar-10-batches-py/{n}" for n in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4",
                                              "data_batch_5", "test_batch")}
