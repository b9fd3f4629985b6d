"""deqbench.data for the MOptEqs tables: CIFAR-100 and ImageNette readers on tiny files, their stand-ins. CPU."""

from __future__ import annotations

import hashlib
import pickle
import time

import numpy as np
import pytest
import torch
from PIL import Image

from deqbench.data import DATASETS, DatasetNotFoundError, load_dataset, rms_norm, scaled_eps, stand_in_for
from deqbench.data.real import IMAGENETTE_CLASSES

WNIDS = list(IMAGENETTE_CLASSES)


# --------------------------------------------------------------------------- CIFAR-100


def _cifar100_batch(rng: np.random.Generator, n: int, str_keys: bool = False) -> dict:
    batch = {
        "filenames": [f"img{i}.png".encode() for i in range(n)],
        "batch_label": b"training batch 1 of 1",
        "fine_labels": [int(v) for v in rng.integers(0, 100, size=n)],
        "coarse_labels": [int(v) for v in rng.integers(0, 20, size=n)],
        "data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
    }
    return batch if str_keys else {k.encode(): v for k, v in batch.items()}


def _write_pickle(path, obj, protocol: int = pickle.DEFAULT_PROTOCOL) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


FINE_NAMES = [f"class{i:02d}" for i in range(100)]


def _write_cifar100(root, rng: np.random.Generator, meta: bool = True, str_keys: bool = False) -> dict:
    folder = root / "cifar-100-python"
    written = {}
    for split, n in (("train", 5), ("test", 3)):
        written[split] = _cifar100_batch(rng, n, str_keys)
        _write_pickle(folder / split, written[split], protocol=2)
    if meta:
        names = {"fine_label_names": FINE_NAMES, "coarse_label_names": [f"super{i}" for i in range(20)]}
        if not str_keys:  # str_keys: what a Python 2 pickle gives with encoding="latin1"; else Python 3 bytes
            names = {k.encode(): [v.encode() for v in vs] for k, vs in names.items()}
        _write_pickle(folder / "meta", names)
    return {s: {(k.decode() if isinstance(k, bytes) else k): v for k, v in b.items()} for s, b in written.items()}


def test_cifar100_reads_pickles_exactly(tmp_path):
    written = _write_cifar100(tmp_path, np.random.default_rng(0))
    for split, batch in written.items():
        data = load_dataset("cifar100", split, root=tmp_path)
        n = len(batch["fine_labels"])
        assert data.images.shape == (n, 3, 32, 32) and data.images.dtype == torch.float32
        assert data.labels.dtype == torch.int64 and data.labels.tolist() == batch["fine_labels"]
        assert torch.equal(data.images, torch.from_numpy(batch["data"]).float().reshape(n, 3, 32, 32) / 255)
        first = batch["data"][0]  # R, G, B planes of a row-major 32x32 image
        assert data.images[0, 0, 0, 1] == first[1] / 255 and data.images[0, 0, 1, 0] == first[32] / 255
        assert data.images[0, 1, 0, 0] == first[1024] / 255 and data.images[0, 2, 31, 31] == first[3071] / 255
        assert data.num_classes == 100 and data.name == "cifar100" and data.stand_in_for is None
        assert data.class_names == tuple(FINE_NAMES) and data.split == split and "fine_labels" in data.source


def test_cifar100_accepts_str_keys_without_meta(tmp_path):
    written = _write_cifar100(tmp_path, np.random.default_rng(1), meta=False, str_keys=True)
    test = load_dataset("cifar100", "test", root=tmp_path)
    assert test.labels.tolist() == written["test"]["fine_labels"]
    assert torch.equal(test.images.reshape(3, -1), torch.from_numpy(written["test"]["data"]).float() / 255)
    assert test.class_names is None and "absent" in test.source


def test_cifar100_layout_matches_torchvision(tmp_path, monkeypatch):
    torchvision = pytest.importorskip("torchvision")
    # str keys: how the real Python 2 pickles read with torchvision's encoding="latin1"
    _write_cifar100(tmp_path, np.random.default_rng(2), str_keys=True)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args: True)  # md5 of the real files
    for split in ("train", "test"):
        reference = torchvision.datasets.CIFAR100(str(tmp_path), train=split == "train", download=False)
        ours = load_dataset("cifar100", split, root=tmp_path)
        assert torch.equal(ours.images.permute(0, 2, 3, 1), torch.from_numpy(reference.data).float() / 255)
        assert ours.labels.tolist() == list(reference.targets) and list(ours.class_names) == reference.classes


def test_cifar100_label_range(tmp_path):
    folder = tmp_path / "cifar-100-python"
    data = np.zeros((3, 3072), dtype=np.uint8)
    _write_pickle(folder / "test", {b"data": data, b"fine_labels": [0, 99, 50], b"coarse_labels": [0, 19, 3]})
    assert load_dataset("cifar100", "test", root=tmp_path).labels.tolist() == [0, 99, 50]
    _write_pickle(folder / "test", {b"data": data, b"fine_labels": [0, 100, 50], b"coarse_labels": [0, 19, 3]})
    with pytest.raises(ValueError, match=r"fine_labels outside 0\.\.99"):
        load_dataset("cifar100", "test", root=tmp_path)
    _write_pickle(folder / "test", {b"data": data, b"labels": [0, 1, 2]})  # a CIFAR-10 batch
    with pytest.raises(ValueError, match="fine_labels"):
        load_dataset("cifar100", "test", root=tmp_path)


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.mark.parametrize("target", ["test", "meta"])
def test_cifar100_refuses_code_in_pickle(tmp_path, target):
    folder = tmp_path / "cifar-100-python"
    _write_pickle(folder / "test", {b"data": np.zeros((1, 3072), np.uint8), b"fine_labels": [0]})
    _write_pickle(folder / target, {b"data": _Evil(), b"fine_labels": [0], b"fine_label_names": _Evil()})
    with pytest.raises(pickle.UnpicklingError, match="builtins.print"):
        load_dataset("cifar100", "test", root=tmp_path)


@pytest.mark.parametrize("split", ["train", "test"])
def test_cifar100_missing_file_error_names_path(tmp_path, split):
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("cifar100", split, root=tmp_path)
    path = str(tmp_path / "cifar-100-python" / split)
    message = str(info.value)
    assert path in message and info.value.missing == (path,)
    assert "cifar-100-python.tar.gz" in message and "sample-patches32-40" in message and "offline" in message


# --------------------------------------------------------------------------- ImageNette


def _save(path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = "PNG" if path.suffix.lower() == ".png" else "JPEG"
    Image.fromarray(array).save(path, format=fmt)


def _write_imagenette(root, rng: np.random.Generator, per_class: int = 2) -> dict[str, list]:
    """A tiny imagenette2 tree, class folders written in reverse order; returns (wnid, name) per split in the
    order the loader must use."""
    written: dict[str, list] = {}
    for folder in ("train", "val"):
        entries = []
        for wnid in reversed(WNIDS):
            for j in range(per_class):
                h, w = (int(v) for v in rng.integers(9, 30, size=2))
                name = ("b.JPEG", "a.jpg", "c.Png")[j % 3]
                shape = (h, w) if j == 1 else (h, w, 3)  # one greyscale image per class
                _save(root / "imagenette2" / folder / wnid / name, rng.integers(0, 256, size=shape, dtype=np.uint8))
                entries.append((wnid, name))
            (root / "imagenette2" / folder / wnid / "notes.txt").write_text("not an image")
        written[folder] = sorted(entries)
    return written


def test_imagenette_reads_imagefolder_tree(tmp_path):
    written = _write_imagenette(tmp_path, np.random.default_rng(3), per_class=3)
    for split, folder in (("train", "train"), ("test", "val")):
        data = load_dataset("imagenette", split, root=tmp_path, image_size=16)
        assert data.images.shape == (30, 3, 16, 16) and data.images.dtype == torch.float32
        assert data.labels.tolist() == [WNIDS.index(wnid) for wnid, _ in written[folder]]
        assert data.labels.tolist() == sorted(data.labels.tolist()) and data.labels.bincount().tolist() == [3] * 10
        assert data.images.min() >= 0 and data.images.max() <= 1
        assert data.num_classes == 10 and data.name == "imagenette" and data.stand_in_for is None
        assert data.class_names[0] == "tench" and data.class_names[9] == "parachute"
        assert str(tmp_path / "imagenette2" / folder) in data.source and "centre-cropped to 16x16" in data.source


def test_imagenette_resize_and_centre_crop_exact(tmp_path):
    rng = np.random.default_rng(4)
    for wnid in WNIDS[2:]:
        _save(tmp_path / "imagenette2" / "val" / wnid / "x.png", np.zeros((8, 8, 3), np.uint8))
    tall = rng.integers(0, 256, size=(13, 8, 3), dtype=np.uint8)  # 8 wide: no resize, crop rows 2..9
    _save(tmp_path / "imagenette2" / "val" / WNIDS[0] / "x.png", tall)
    grey = rng.integers(0, 256, size=(8, 11), dtype=np.uint8)  # 8 tall: crop columns 2..9 (round(1.5) = 2)
    _save(tmp_path / "imagenette2" / "val" / WNIDS[1] / "x.PNG", grey)
    data = load_dataset("imagenette", "test", root=tmp_path, image_size=8)
    assert torch.equal(data.images[0], torch.from_numpy(tall[2:10]).permute(2, 0, 1).float() / 255)
    assert torch.equal(data.images[1], torch.from_numpy(grey[:, 2:10]).float().expand(3, 8, 8) / 255)
    big = load_dataset("imagenette", "test", root=tmp_path, image_size=20)
    assert big.images.shape == (10, 3, 20, 20)
    with pytest.raises(ValueError, match="image_size"):
        load_dataset("imagenette", "test", root=tmp_path, image_size=0)


def test_imagenette_matches_torchvision_imagefolder(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    from torchvision import transforms

    _write_imagenette(tmp_path, np.random.default_rng(5), per_class=3)
    for size in (12, 256):
        tf = transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size), transforms.ToTensor()])
        reference = torchvision.datasets.ImageFolder(str(tmp_path / "imagenette2" / "val"), transform=tf)
        ours = load_dataset("imagenette", "test", root=tmp_path, image_size=size)
        assert reference.classes == WNIDS and len(reference) == len(ours)
        assert torch.equal(ours.images, torch.stack([x for x, _ in reference]))
        assert ours.labels.tolist() == list(reference.targets)
    assert DATASETS["imagenette"].options["image_size"] == 256


def test_imagenette_default_size_is_256(tmp_path):
    rng = np.random.default_rng(6)
    for wnid in WNIDS:
        _save(tmp_path / "imagenette2" / "train" / wnid / "x.JPEG", rng.integers(0, 256, (20, 30, 3), np.uint8))
    data = load_dataset("imagenette", "train", root=tmp_path)
    assert data.images.shape == (10, 3, 256, 256) and data.image_shape == DATASETS["imagenette"].image_shape


@pytest.mark.parametrize("split,folder", [("train", "train"), ("test", "val")])
def test_imagenette_missing_folder_error_names_paths(tmp_path, split, folder):
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("imagenette", split, root=tmp_path)
    message = str(info.value)
    base = tmp_path / "imagenette2" / folder
    assert str(base) in message
    assert info.value.missing == tuple(str(base / wnid) for wnid in WNIDS)
    for wnid in WNIDS:
        assert str(base / wnid) in message
    assert "https://s3.amazonaws.com/fast-ai-imageclas/imagenette2.tgz" in message
    assert "sample-patches64" in message and "offline" in message


def test_imagenette_partial_or_foreign_tree_is_rejected(tmp_path):
    _write_imagenette(tmp_path, np.random.default_rng(7), per_class=1)
    val = tmp_path / "imagenette2" / "val"
    (val / "n99999999").mkdir()
    with pytest.raises(ValueError, match="n99999999"):
        load_dataset("imagenette", "test", root=tmp_path, image_size=8)
    (val / "n99999999").rmdir()
    for f in (val / WNIDS[4]).iterdir():
        f.unlink()
    with pytest.raises(ValueError, match="no .*images"):
        load_dataset("imagenette", "test", root=tmp_path, image_size=8)
    (val / WNIDS[4]).rmdir()
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("imagenette", "test", root=tmp_path, image_size=8)
    assert info.value.missing == (str(val / WNIDS[4]),)


# --------------------------------------------------------------------------- stand-ins

NEW_STAND_INS = [
    # name, real, (C, H, W), classes, default train / test per class
    ("sample-patches32-40", "cifar100", (3, 32, 32), 40, 200, 50),
    ("sample-patches64", "imagenette", (3, 64, 64), 10, 300, 75),
]


@pytest.mark.parametrize("name,real,shape,classes,n_train,n_test", NEW_STAND_INS)
def test_new_stand_in_contract(name, real, shape, classes, n_train, n_test):
    spec = DATASETS[name]
    assert spec.embedded and spec.stand_in_for == real and stand_in_for(real) == name
    assert spec.image_shape == shape and spec.num_classes == classes
    for split, per_class in (("train", n_train), ("test", n_test)):
        data = load_dataset(name, split)
        assert data.images.shape == (classes * per_class, *shape) and data.images.dtype == torch.float32
        assert data.labels.bincount().tolist() == [per_class] * classes
        assert data.images.min() >= 0 and data.images.max() <= 1 and data.images.max() > 0.5
        assert data.num_classes == classes and len(data.class_names) == classes and data.name == name
        assert data.stand_in_for == real and data.split == split
        assert data.source.startswith(f"embedded {DATASETS[real].display_name()} stand-in")
    # an attack radius given for the real data is carried over by the ratio of RMS image norms
    norm = rms_norm(data.images)
    assert scaled_eps(1.0, real, norm) == pytest.approx(norm / DATASETS[real].rms_norm) and 0 < norm < DATASETS[real].rms_norm


def _find(src: np.ndarray, patch: np.ndarray) -> list[tuple[int, int]]:
    """Top-left corners where ``patch`` (3, p, p) occurs in ``src`` (3, H, W)."""
    p = patch.shape[-1]
    top_left = (src[:, : src.shape[1] - p + 1, : src.shape[2] - p + 1] == patch[:, :1, :1]).all(0)
    return [(y, x) for y, x in zip(*np.nonzero(top_left)) if np.array_equal(src[:, y : y + p, x : x + p], patch)]


@pytest.mark.parametrize("name,bands,patch", [("sample-patches32-40", 4, 32), ("sample-patches64", 1, 64)])
def test_new_stand_ins_come_from_disjoint_regions(name, bands, patch):
    from deqbench.data.embedded import _resized_sources, band_rows

    sources = _resized_sources(DATASETS[name].options["short_side"])
    splits = {split: load_dataset(name, split, train_per_class=5, test_per_class=5) for split in ("train", "test")}
    for split, data in splits.items():
        for image, label in zip(data.images[:40], data.labels[:40]):
            src = np.array(sources[int(label) // bands])
            found = _find(src, np.rint(image.numpy() * 255).astype(np.uint8))
            assert found, "patch not found in its source photo"
            cut = int(np.floor(0.7 * src.shape[2]))
            r0, r1 = band_rows(src.shape[1], bands, int(label) % bands)
            for y, x in found:
                assert r0 <= y and y + patch <= r1
                assert (x + patch <= cut) if split == "train" else (x >= cut)
    train_keys = {row.numpy().tobytes() for row in splits["train"].images.flatten(1)}
    assert not any(row.numpy().tobytes() in train_keys for row in splits["test"].images.flatten(1))


@pytest.mark.parametrize("name,limit_s", [("sample-patches32-40", 2.0), ("sample-patches64", 3.0)])
def test_new_stand_ins_are_deterministic_and_fast(name, limit_s):
    load_dataset(name, "test")  # warm imports
    start = time.perf_counter()
    first = load_dataset(name, "train")
    elapsed = time.perf_counter() - start
    second = load_dataset(name, "train")
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    assert first.source == second.source and elapsed < limit_s
    assert not torch.equal(load_dataset(name, "test", seed=1).images, load_dataset(name, "test").images)
    # the test patches do not depend on how many train patches were asked for
    assert torch.equal(load_dataset(name, "test", train_per_class=7).images, load_dataset(name, "test").images)


def test_band_class_names():
    data = load_dataset("sample-patches32-40", "test", test_per_class=1)
    assert data.class_names[:5] == ("china-band0", "china-band1", "china-band2", "china-band3", "flower-band0")
    assert "4 horizontal bands" in data.source and "0..3 china=china.jpg" in data.source


def test_sample_patches32_unchanged():
    """The generalised patch code still yields the tensors behind the recorded sample-patches32 results."""
    expected = {"train": "6e1d59577b71921c", "test": "7b3d8417615d9e59"}
    for split, digest in expected.items():
        data = load_dataset("sample-patches32", split)
        blob = data.images.numpy().tobytes() + data.labels.numpy().tobytes()
        assert hashlib.sha256(blob).hexdigest()[:16] == digest, split
