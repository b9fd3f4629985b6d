"""deqbench.data.faces: the embedded lfw-faces stand-in, the CelebA reader on tiny files, errors. CPU, offline."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch

from deqbench.data import DatasetNotFoundError
from deqbench.data.faces import (
    CELEBA_PARTITIONS,
    IMAGE_DATASETS,
    LFW_NUM_FACES,
    ImageSet,
    load_celeba,
    load_image_dataset,
    load_lfw_faces,
)

CELEBA_W, CELEBA_H = 178, 218  # size of the aligned CelebA JPEGs
CENTRE = (200, 40, 70)
BORDER = (20, 210, 140)


@pytest.fixture
def offline(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("deqbench.data.faces tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _skimage_faces_uint8() -> np.ndarray:
    from skimage.data import lfw_subset

    return np.round(lfw_subset() * 255).astype(np.float32)  # (200, 25, 25)


# --------------------------------------------------------------------------- lfw-faces


def test_lfw_faces_contract(offline):
    train, test = load_image_dataset("lfw-faces", "train"), load_image_dataset("lfw-faces", "test")
    assert (len(train), len(test)) == (80, 20)
    for split, data in (("train", train), ("test", test)):
        assert isinstance(data, ImageSet)
        assert data.images.shape == (len(data), 1, 16, 16) and data.images.dtype == torch.uint8
        assert data.image_shape == (1, 16, 16)
        assert data.images.min() < 40 and data.images.max() > 215  # uses the 8-bit range
        assert data.name == "lfw-faces" and data.split == split and data.stand_in_for == "celeba"
        for word in ("skimage.data.lfw_subset", "100 faces", "antialias", "default_rng(0)", "16x16"):
            assert word in data.source
    spec = IMAGE_DATASETS["lfw-faces"]
    assert spec.embedded and spec.stand_in_for == "celeba" and spec.splits == ("train", "test")
    assert spec.image_shape == train.image_shape


def test_lfw_faces_split_is_disjoint_and_covers_exactly_the_faces():
    everything = _skimage_faces_uint8().reshape(200, -1)
    matched = []
    for split in ("train", "test"):
        data = load_lfw_faces(split, image_size=25)  # native size: no resize, only 8-bit quantisation
        flat = data.images.flatten(1).float().numpy()
        dist = np.abs(flat[:, None, :] - everything[None]).max(-1)  # (n, 200) max abs pixel difference
        nearest = dist.argmin(1)
        assert (dist[np.arange(len(flat)), nearest] <= 1).all()
        matched += nearest.tolist()
    # every one of the first 100 (the faces) exactly once, none of the 100 non-faces
    assert sorted(matched) == list(range(LFW_NUM_FACES))


def test_lfw_faces_is_deterministic_and_seeded():
    first, second = load_lfw_faces("test"), load_lfw_faces("test")
    assert torch.equal(first.images, second.images) and first.source == second.source
    other = load_lfw_faces("test", seed=1)
    assert not torch.equal(other.images, first.images)
    assert len(load_lfw_faces("test", test_fraction=0.5)) == 50
    with pytest.raises(ValueError, match="test_fraction"):
        load_lfw_faces("train", test_fraction=0.001)


@pytest.mark.parametrize("size", [10, 32])
def test_lfw_faces_image_size(size):
    data = load_image_dataset("lfw-faces", "train", image_size=size)
    assert data.images.shape == (80, 1, size, size) and data.images.dtype == torch.uint8
    assert f"{size}x{size}" in data.source
    # the same faces in the same order: resampled back to 25x25, each is nearest to its own native image
    native = load_lfw_faces("train", image_size=25).images.float().flatten(1)
    back = torch.nn.functional.interpolate(data.images.float(), size=(25, 25), mode="bilinear", antialias=True)
    assert torch.equal(torch.cdist(back.flatten(1), native).argmin(1), torch.arange(80))


def test_to_model_range():
    data = load_lfw_faces("train")
    x = data.to_model_range()
    assert x.dtype == torch.float32 and x.shape == data.images.shape
    assert x.min() >= -1 and x.max() <= 1
    torch.testing.assert_close(x, data.images.float() / 127.5 - 1)
    assert data.to_model_range(3).shape == (1, 16, 16)
    assert torch.equal(data.to_model_range(slice(2, 5)), x[2:5])
    assert torch.equal(data.to_model_range(torch.tensor([0, 7])), x[[0, 7]])
    extremes = ImageSet(torch.tensor([0, 255], dtype=torch.uint8).reshape(2, 1, 1, 1), "t", "test")
    assert extremes.to_model_range().flatten().tolist() == [-1.0, 1.0]
    x.zero_()  # a new tensor: the uint8 images are untouched
    assert data.images.max() > 0


def test_imageset_validation():
    with pytest.raises(ValueError, match="uint8"):
        ImageSet(torch.zeros(2, 1, 4, 4), "t", "test")
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        ImageSet(torch.zeros(2, 4, 4, dtype=torch.uint8), "t", "test")


# --------------------------------------------------------------------------- CelebA on tiny files


def _write_celeba(root, colours, partition, *, quality=95):
    """Aligned-size JPEGs whose centre 148x148 region has ``colours[i]`` and whose border is BORDER."""
    from PIL import Image

    folder = root / "celeba" / "img_align_celeba"
    folder.mkdir(parents=True)
    top, left = (CELEBA_H - 148) // 2, (CELEBA_W - 148) // 2  # 35, 15
    names = []
    for i, colour in enumerate(colours, start=1):
        pixels = np.empty((CELEBA_H, CELEBA_W, 3), dtype=np.uint8)
        pixels[:] = BORDER
        pixels[top:top + 148, left:left + 148] = colour
        name = f"{i:06d}.jpg"
        Image.fromarray(pixels).save(folder / name, quality=quality, subsampling=0)
        names.append(name)
    lines = [f"{name} {part}" for name, part in zip(names, partition)]
    (root / "celeba" / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    return names


def test_celeba_reads_partition_and_centre_crop(tmp_path):
    colours = [(200, 40, 70), (60, 60, 220), (240, 200, 20), (90, 30, 160), (10, 120, 60), (250, 250, 250)]
    partition = [0, 1, 2, 0, 2, 0]
    _write_celeba(tmp_path, colours, partition)
    for split, part in CELEBA_PARTITIONS.items():
        data = load_image_dataset("celeba", split, root=tmp_path)
        expected = [c for c, p in zip(colours, partition) if p == part]  # file-name order
        assert data.images.shape == (len(expected), 3, 64, 64) and data.images.dtype == torch.uint8
        assert data.name == "celeba" and data.split == split and data.stand_in_for is None
        assert "list_eval_partition.txt" in data.source and "148" in data.source
        # every output pixel, edges included, has the centre colour: the crop is exactly the centre 148x148
        target = torch.tensor(expected, dtype=torch.float32)[:, :, None, None]
        assert (data.images.float() - target).abs().max() <= 8
    assert len(load_celeba("train", tmp_path, progress=False)) == 3


def test_celeba_crop_offset_is_exact(tmp_path):
    """Shifting the centre square by 2 px puts border colour into the output: the check above is sharp."""
    from PIL import Image

    _write_celeba(tmp_path, [CENTRE], [0])
    path = tmp_path / "celeba" / "img_align_celeba" / "000001.jpg"
    pixels = np.array(Image.open(path))
    Image.fromarray(np.roll(pixels, 2, axis=1)).save(path, quality=95, subsampling=0)
    data = load_celeba("train", tmp_path)
    assert (data.images.float() - torch.tensor(CENTRE, dtype=torch.float32)[:, None, None]).abs().max() > 30


def test_celeba_matches_torchvision_transform(tmp_path):
    pytest.importorskip("torchvision")
    from PIL import Image
    from torchvision import transforms

    _write_celeba(tmp_path, [CENTRE, CENTRE], [2, 2])
    folder = tmp_path / "celeba" / "img_align_celeba"
    rng = np.random.default_rng(0)
    smooth = rng.integers(0, 256, size=(CELEBA_H // 8, CELEBA_W // 8 + 1, 3), dtype=np.uint8)
    Image.fromarray(smooth).resize((CELEBA_W, CELEBA_H), Image.BICUBIC).save(folder / "000002.jpg", quality=90)
    reference = transforms.Compose([transforms.CenterCrop(148), transforms.Resize(64), transforms.PILToTensor()])
    data = load_celeba("test", tmp_path)
    for i, name in enumerate(("000001.jpg", "000002.jpg")):
        with Image.open(folder / name) as im:
            assert torch.equal(data.images[i], reference(im.convert("RGB")))


def test_celeba_limit_and_options(tmp_path):
    colours = [(10 * i, 100, 200 - 10 * i) for i in range(1, 7)]
    _write_celeba(tmp_path, colours, [0] * 6)
    first = load_image_dataset("celeba", "train", root=tmp_path, limit=2, progress=False)
    assert len(first) == 2 and "first 2 of 6" in first.source
    target = torch.tensor(colours[:2], dtype=torch.float32)[:, :, None, None]
    assert (first.images.float() - target).abs().max() <= 8
    small = load_image_dataset("celeba", "train", root=tmp_path, image_size=32, crop=100, limit=1)
    assert small.images.shape == (1, 3, 32, 32)
    assert len(load_celeba("valid", tmp_path)) == 0
    with pytest.raises(ValueError, match="limit"):
        load_celeba("train", tmp_path, limit=-1)
    with pytest.raises(ValueError, match="crop"):
        load_celeba("train", tmp_path, crop=200)  # wider than the 178 px images


def test_celeba_default_root_from_env(tmp_path, monkeypatch):
    _write_celeba(tmp_path, [CENTRE], [1])
    monkeypatch.setenv("DEQBENCH_DATA", str(tmp_path))
    assert len(load_image_dataset("celeba", "valid")) == 1


def test_celeba_missing_files_error_names_paths(tmp_path):
    image_dir = tmp_path / "celeba" / "img_align_celeba"
    partition = tmp_path / "celeba" / "list_eval_partition.txt"
    with pytest.raises(DatasetNotFoundError) as info:
        load_image_dataset("celeba", "train", root=tmp_path)
    message = str(info.value)
    for word in (str(image_dir), str(partition), "img_align_celeba.zip", "mmlab.ie.cuhk.edu.hk", "lfw-faces"):
        assert word in message
    assert info.value.missing == (str(image_dir), str(partition))
    assert isinstance(info.value, FileNotFoundError)

    _write_celeba(tmp_path, [CENTRE, CENTRE], [0, 0])
    partition.unlink()
    with pytest.raises(DatasetNotFoundError) as info:
        load_celeba("train", tmp_path)
    assert info.value.missing == (str(partition),)


def test_celeba_listed_file_absent_or_bad_partition(tmp_path):
    _write_celeba(tmp_path, [CENTRE, CENTRE], [0, 2])
    partition = tmp_path / "celeba" / "list_eval_partition.txt"
    partition.write_text(partition.read_text() + "000003.jpg 0\n")
    with pytest.raises(DatasetNotFoundError, match="000003.jpg") as info:
        load_celeba("train", tmp_path)
    assert info.value.missing == (str(tmp_path / "celeba" / "img_align_celeba" / "000003.jpg"),)
    assert len(load_celeba("test", tmp_path)) == 1  # other splits are unaffected
    partition.write_text("000001.jpg 0\n000002.jpg 7\n")
    with pytest.raises(ValueError, match=":2:"):
        load_celeba("train", tmp_path)


# --------------------------------------------------------------------------- registry errors


def test_registry_entries():
    assert set(IMAGE_DATASETS) == {"lfw-faces", "celeba"}
    celeba = IMAGE_DATASETS["celeba"]
    assert not celeba.embedded and celeba.stand_in_for is None and celeba.splits == ("train", "valid", "test")
    assert celeba.options == {"image_size": 64, "crop": 148, "progress": True, "limit": None}
    for spec in IMAGE_DATASETS.values():
        assert spec.description.strip() and spec.name


def test_unknown_name():
    with pytest.raises(ValueError, match="'ffhq'") as info:
        load_image_dataset("ffhq", "train")
    assert "lfw-faces" in str(info.value) and "celeba" in str(info.value)


def test_unknown_split(tmp_path):
    with pytest.raises(ValueError, match="'valid'") as info:
        load_image_dataset("lfw-faces", "valid")
    assert "train, test" in str(info.value)
    with pytest.raises(ValueError, match="'validation'") as info:
        load_image_dataset("celeba", "validation", root=tmp_path)
    assert "train, valid, test" in str(info.value)


def test_unknown_option(tmp_path):
    with pytest.raises(TypeError, match="imag_size") as info:
        load_image_dataset("lfw-faces", "train", imag_size=8)
    assert "image_size" in str(info.value) and "test_fraction" in str(info.value)
    with pytest.raises(TypeError, match="flip") as info:
        load_image_dataset("celeba", "train", root=tmp_path, flip=True)
    assert "crop" in str(info.value) and "limit" in str(info.value)
