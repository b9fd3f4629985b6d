"""The ImageNet (ILSVRC-2012) loader, on a generated 1000-class ImageFolder tree of tiny JPEGs."""

from __future__ import annotations

import inspect
import re

import numpy as np
import pytest
import torch
from PIL import Image

from deqbench.data import DATASETS, DatasetNotFoundError, load_dataset, stand_in_for
from deqbench.data.real import load_imagenet

# 1000 distinct wnids whose sorted order differs from the order they are generated (and written) in
GENERATED = [f"n{(i * 39916801 + 1440764) % 10**8:08d}" for i in range(1000)]
WNIDS = sorted(GENERATED)
assert len(set(WNIDS)) == 1000 and WNIDS != GENERATED


def _save(path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="JPEG", quality=90)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """``<root>/imagenet/{train,val}/<wnid>/``: train one 7x10 image per class; val a 7x10 "a.JPEG" in every
    class, a 10x7 "b.JPEG" in every 50th, and in class 0 also a 9x12 greyscale "c.jpg" and a non-image file.
    Returns (root, val entries in the order the loader must use, as (label, file name))."""
    root = tmp_path_factory.mktemp("imagenet-root")
    rng = np.random.default_rng(0)
    train, val = root / "imagenet" / "train", root / "imagenet" / "val"
    entries = []
    for wnid in reversed(GENERATED):
        label = WNIDS.index(wnid)
        _save(train / wnid / "x.JPEG", rng.integers(0, 256, size=(7, 10, 3), dtype=np.uint8))
        names = ["a.JPEG"] + (["b.JPEG"] if label % 50 == 0 else [])
        for name in reversed(names):
            shape = (7, 10, 3) if name == "a.JPEG" else (10, 7, 3)  # landscape and portrait
            _save(val / wnid / name, rng.integers(0, 256, size=shape, dtype=np.uint8))
        entries.extend((label, name) for name in names)
    _save(val / WNIDS[0] / "c.jpg", rng.integers(0, 256, size=(9, 12), dtype=np.uint8))
    (val / WNIDS[0] / "notes.txt").write_text("not an image")
    (val / "LOC_val_solution.csv").write_text("a file beside the class folders is not a class\n")
    entries.append((0, "c.jpg"))
    return root, sorted(entries)


@pytest.fixture(scope="module")
def full8(tree):
    """The whole test split at 8 px: enlarges the 7x10 and 10x7 images, shrinks the 9x12 one."""
    return load_dataset("imagenet", "test", root=tree[0], image_size=8)


def test_reads_sorted_imagefolder_tree(tree, full8):
    root, entries = tree
    data = full8
    assert data.images.shape == (len(entries), 3, 8, 8) == (1021, 3, 8, 8) and data.images.dtype == torch.float32
    assert data.labels.dtype == torch.int64 and data.labels.tolist() == [label for label, _ in entries]
    assert data.images.min() >= 0 and data.images.max() <= 1 and data.images.std() > 0.1
    assert data.num_classes == 1000 and data.name == "imagenet" and data.split == "test"
    assert data.stand_in_for is None and data.class_names == tuple(WNIDS)
    folder = root / "imagenet" / "val"
    assert f"1021 images of {folder}/<wnid>/" in data.source and "all files of every class" in data.source
    assert "centre-cropped to 8x8" in data.source and "1000 sorted wnids" in data.source

    # train reads train/; test_per_class does not apply to it
    train = load_imagenet("train", root, image_size=6, train_per_class=5, test_per_class=1)
    assert train.images.shape == (1000, 3, 6, 6) and train.labels.tolist() == list(range(1000))
    assert str(root / "imagenet" / "train") in train.source and train.split == "train"
    assert "(train_per_class=5)" in train.source


def test_per_class_limits(tree, full8):
    root, entries = tree
    one = load_dataset("imagenet", "test", root=root, image_size=8, test_per_class=1)
    first = [i for i, (label, _) in enumerate(entries) if i == 0 or entries[i - 1][0] != label]
    assert one.labels.tolist() == list(range(1000)) and torch.equal(one.images, full8.images[first])
    assert "the first 1 files of each class in sorted order (test_per_class=1)" in one.source
    assert "1000 images of" in one.source
    # class 0 loses its third file (sorted last: c.jpg); train_per_class does not apply to the test split
    two = load_dataset("imagenet", "test", root=root, image_size=8, test_per_class=2, train_per_class=1)
    keep = [i for i, (_, name) in enumerate(entries) if name != "c.jpg"]
    assert two.labels.tolist() == [entries[i][0] for i in keep] and torch.equal(two.images, full8.images[keep])
    for bad in (0, -1, True, 1.5, "2"):
        with pytest.raises(ValueError, match="test_per_class must be a positive integer or None"):
            load_imagenet("test", root, image_size=8, test_per_class=bad)
        with pytest.raises(ValueError, match="train_per_class must be a positive integer or None"):
            load_imagenet("test", root, image_size=8, train_per_class=bad)
    with pytest.raises(ValueError, match="image_size"):
        load_imagenet("test", root, image_size=0)


def test_pixels_match_torchvision(tree, full8):
    torchvision = pytest.importorskip("torchvision")
    from torchvision import transforms

    root, entries = tree
    folder = root / "imagenet" / "val"
    tf = transforms.Compose([transforms.Resize(8), transforms.CenterCrop(8), transforms.ToTensor()])
    reference = torchvision.datasets.ImageFolder(str(folder), transform=tf)
    assert reference.classes == WNIDS and full8.labels.tolist() == list(reference.targets)
    # 0..2: class 0's landscape, portrait and greyscale shrunk images; then later classes
    for i in (0, 1, 2, 3, 500, len(entries) - 1):
        assert torch.equal(full8.images[i], reference[i][0]), (i, entries[i])
    # and one file directly, without ImageFolder
    with Image.open(folder / WNIDS[0] / "c.jpg") as im:
        assert im.size == (12, 9) and im.mode == "L"
        expected = tf(im.convert("RGB"))
    assert torch.equal(full8.images[2], expected)


def test_registry_entry(tree):
    spec = DATASETS["imagenet"]
    assert spec.loader is load_imagenet and spec.image_shape == (3, 224, 224) and spec.num_classes == 1000
    assert spec.options == {"image_size": 224, "train_per_class": None, "test_per_class": None}
    assert not spec.embedded and spec.stand_in_for is None and spec.display_name() == "ImageNet"
    assert spec.rms_norm == pytest.approx(195.44, abs=0.01)
    params = inspect.signature(load_imagenet).parameters
    assert {k: params[k].default for k in spec.options} == dict(spec.options)
    with pytest.raises(ValueError, match="no embedded stand-in"):
        stand_in_for("imagenet")
    with pytest.raises(TypeError, match="per_clas"):
        load_dataset("imagenet", "test", root=tree[0], per_class=1)


@pytest.mark.parametrize("split,folder", [("train", "train"), ("test", "val")])
def test_missing_folder_error_names_path(tmp_path, split, folder):
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("imagenet", split, root=tmp_path)
    assert isinstance(info.value, FileNotFoundError)
    expected = str(tmp_path / "imagenet" / folder)
    message = str(info.value)
    assert info.value.missing == (expected,) and expected in message
    for needle in ("offline", "nothing is downloaded", "image-net.org", "ILSVRC2012_img_train.tar",
                   "ILSVRC2012_img_val.tar", "valprep", "wnid", "$DEQBENCH_DATA", f"root={tmp_path}",
                   "no embedded stand-in for ImageNet", "MOptEqs Table 4"):
        assert needle in message, needle


def test_other_split_present_is_not_enough(tree, tmp_path):
    (tmp_path / "imagenet" / "train" / WNIDS[0]).mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("imagenet", "test", root=tmp_path)
    assert info.value.missing == (str(tmp_path / "imagenet" / "val"),)


def test_wrong_class_folders_are_rejected(tmp_path):
    val = tmp_path / "imagenet" / "val"
    for wnid in WNIDS:
        (val / wnid).mkdir(parents=True)
    named = re.escape(str(val))

    (val / WNIDS[500]).rmdir()  # 999 classes
    with pytest.raises(ValueError, match=f"{named}.*found 999 class folders, expected exactly 1000") as info:
        load_dataset("imagenet", "test", root=tmp_path)
    assert "not wnids" not in str(info.value)

    (val / "foo").mkdir()  # 1000 folders, one not a wnid
    with pytest.raises(ValueError, match=f"{named}.*1 folder name.*'foo'") as info:
        load_dataset("imagenet", "test", root=tmp_path)
    assert "class folders, expected" not in str(info.value)

    (val / "n1234567").mkdir()  # 1001 folders, two bad names (7 digits)
    with pytest.raises(ValueError, match=f"{named}.*found 1001 class folders.*2 folder name.*'foo', 'n1234567'"):
        load_dataset("imagenet", "test", root=tmp_path)

    (val / "foo").rmdir()
    (val / "n1234567").rmdir()
    (val / WNIDS[500]).mkdir()  # right folders, but they hold no images
    with pytest.raises(ValueError, match=re.escape(str(val / WNIDS[0])) + ": no .*images"):
        load_dataset("imagenet", "test", root=tmp_path)
