"""deqbench.data.implicit2: the C.3 pixel split, embedded stand-ins, paper-format readers on tiny files. CPU."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch

from deqbench.data import DatasetNotFoundError
from deqbench.data.implicit2 import (
    NATURAL_SOURCES,
    PAPER_IMAGE_FILES,
    PAPER_IMAGE_KEY,
    PAPER_VIDEO_FILE,
    CoordinateImage,
    array_sha256,
    load_implicit2_images,
    load_implicit2_video,
    make_coordinate_image,
    synthetic_pan_video,
    to_model_range,
)

R = 32  # small resolution for the embedded sets: fast


@pytest.fixture
def offline(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("deqbench.data.implicit2 tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def embedded_sets() -> dict[str, tuple[CoordinateImage, ...]]:
    return {name: load_implicit2_images(name, "embedded", R) for name in ("natural", "text")}


def _pixel_keys(coords: torch.Tensor, size: int) -> set[tuple[int, int]]:
    """Coordinates back to integer pixel indices (row, col)."""
    idx = torch.round((coords.double() + 1) * (size - 1) / 2).long()
    return {tuple(p) for p in idx.tolist()}


# --------------------------------------------------------------------------- the split (spec C.3)


@pytest.mark.parametrize("size", [4, 10, 64])
def test_split_is_disjoint_quarters_in_range(size):
    image = torch.rand(size, size, 3, generator=torch.Generator().manual_seed(size))
    task = make_coordinate_image(image, name="r", set_name="natural", source="test")
    quarter = size * size // 4
    assert task.train_coords.shape == task.test_coords.shape == (quarter, 2)
    assert task.train_targets.shape == task.test_targets.shape == (quarter, 3)
    assert task.train_coords.dtype == torch.float32 and task.split_shape == (size // 2, size // 2)
    for coords in (task.train_coords, task.test_coords):
        assert coords.min() >= -1 and coords.max() <= 1
    train, test = _pixel_keys(task.train_coords, size), _pixel_keys(task.test_coords, size)
    assert len(train) == len(test) == quarter and not train & test
    assert all(i % 2 == 0 and j % 2 == 0 for i, j in train) and all(i % 2 == 1 and j % 2 == 1 for i, j in test)
    # targets are the image's pixels at those coordinates, in row-major order
    assert torch.equal(task.train_targets.reshape(*task.split_shape, 3), image[::2, ::2])
    assert torch.equal(task.test_targets.reshape(*task.split_shape, 3), image[1::2, 1::2])


def test_split_of_a_known_array():
    image = np.zeros((4, 4, 3))
    image[..., 0] = np.arange(16).reshape(4, 4) / 15.0  # channel 0 = pixel number / 15
    image[..., 1] = 1.0
    task = make_coordinate_image(image, name="known", set_name="text", source="test")
    numbers = lambda targets: [round(v * 15) for v in targets[:, 0].tolist()]
    assert numbers(task.train_targets) == [0, 2, 8, 10]
    assert numbers(task.test_targets) == [5, 7, 13, 15]
    third = 1.0 / 3.0
    torch.testing.assert_close(task.train_coords, torch.tensor([[-1, -1], [-1, third], [third, -1], [third, third]]))
    torch.testing.assert_close(task.test_coords, torch.tensor([[-third, -third], [-third, 1], [1, -third], [1, 1]]))
    assert (task.train_targets[:, 1] == 1).all() and (task.test_targets[:, 2] == 0).all()
    assert task.resolution == 4 and task.sha256 == array_sha256(image.astype(np.float32))
    torch.testing.assert_close(to_model_range(task.train_targets)[:, 1], torch.ones(4))


@pytest.mark.parametrize("bad", [7, 33])
def test_odd_resolution_raises_naming_r(bad):
    with pytest.raises(ValueError, match=f"R={bad}"):
        make_coordinate_image(np.zeros((bad, bad, 3)), name="odd", set_name="natural", source="test")
    with pytest.raises(ValueError, match=f"R={bad}"):
        load_implicit2_images("natural", "embedded", bad)


def test_bad_images_rejected():
    with pytest.raises(ValueError, match=r"\(R, R, 3\)"):
        make_coordinate_image(np.zeros((4, 6, 3)), name="x", set_name="natural", source="t")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        make_coordinate_image(np.full((4, 4, 3), 1.5), name="x", set_name="natural", source="t")
    with pytest.raises(ValueError, match="float"):
        make_coordinate_image(np.zeros((4, 4, 3), dtype=np.uint8), name="x", set_name="natural", source="t")
    with pytest.raises(ValueError, match="unknown"):
        load_implicit2_images("faces", "embedded", R)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown source"):
        load_implicit2_images("natural", "web", R)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- embedded stand-ins (spec C.7)


def test_embedded_sets_contract(offline, embedded_sets):
    natural, text = embedded_sets["natural"], embedded_sets["text"]
    assert [t.name for t in natural] == list(NATURAL_SOURCES)
    assert [t.name for t in text] == ["text-c0", "text-c138", "text-c276", "page-c0", "page-c193"]
    for set_name, tasks in embedded_sets.items():
        assert len(tasks) == 5
        for task in tasks:
            assert task.image.shape == (R, R, 3) and task.image.dtype == torch.float32
            assert task.image.min() >= 0 and task.image.max() <= 1 and task.image.std() > 0.02
            assert task.set_name == set_name and task.stand_in_for == PAPER_IMAGE_FILES[set_name]
            assert task.source.startswith(f"embedded stand-in for {PAPER_IMAGE_FILES[set_name]}")
            assert f"skimage.data.{task.name.split('-')[0]}()" in task.source
            assert task.sha256 == array_sha256(task.image) and len(task.source_sha256) == 64
    grey = {"camera"} | {t.name for t in text}
    for task in natural + text:
        channels = task.image.unbind(-1)
        assert all(torch.equal(channels[0], c) for c in channels[1:]) == (task.name in grey), task.name
        assert ("grey replicated to 3 channels" in task.source) == (task.name in grey)
    # the three text crops share a source page, the processed images all differ
    assert len({t.source_sha256 for t in text}) == 2
    assert len({t.sha256 for t in natural + text}) == 10


def test_embedded_sets_are_deterministic(embedded_sets):
    again = load_implicit2_images("natural", "embedded", R) + load_implicit2_images("text", "embedded", R)
    first = embedded_sets["natural"] + embedded_sets["text"]
    assert [t.sha256 for t in again] == [t.sha256 for t in first]
    assert [t.source_sha256 for t in again] == [t.source_sha256 for t in first]
    assert all(torch.equal(a.image, b.image) and a.source == b.source for a, b in zip(again, first))


def test_embedded_text_crop_matches_source():
    """At R = 172 (the height of ``text``) its crops are not resized: the crop is exact."""
    from skimage.data import text

    task = load_implicit2_images("text", "embedded", 172)[1]  # text, columns 138..309, kept at 172x172
    assert "kept at 172x172" in task.source
    expected = text()[:, 138:310].astype(np.float32) / np.float32(255.0)
    np.testing.assert_allclose(task.image[..., 2].numpy(), expected, atol=1e-7)


def test_embedded_camera_native_is_exact():
    from skimage.data import camera

    task = load_implicit2_images("natural", "embedded")[0]  # default R = 512: camera is not resized
    assert task.resolution == 512 and task.train_targets.shape == (256 * 256, 3)
    np.testing.assert_allclose(task.image[..., 0].numpy(), camera() / 255.0, atol=1e-7)


# --------------------------------------------------------------------------- paper files on tiny copies (spec C.4)


def _write_npz(root, set_name: str, n: int = 3, size: int = 8, **arrays) -> np.ndarray:
    folder = root / "implicit2"
    folder.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(n).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    content = arrays if arrays else {"train_data": data[:1], PAPER_IMAGE_KEY: data}
    np.savez(folder / PAPER_IMAGE_FILES[set_name], **content)
    return data


@pytest.mark.parametrize("set_name", ["natural", "text"])
def test_paper_images_read_real_format(offline, tmp_path, set_name):
    data = _write_npz(tmp_path, set_name, n=3, size=8)
    tasks = load_implicit2_images(set_name, "paper", root=tmp_path)
    path = tmp_path / "implicit2" / PAPER_IMAGE_FILES[set_name]
    assert len(tasks) == 3 and [t.name for t in tasks] == [f"{set_name}-{i:02d}" for i in range(3)]
    for i, task in enumerate(tasks):
        assert task.stand_in_for is None and str(path) in task.source and "kept at 8x8" in task.source
        torch.testing.assert_close(task.image, torch.from_numpy(data[i] / np.float32(255.0)))
        assert task.source_sha256 == array_sha256(data[i])
        assert torch.equal(task.test_targets.reshape(4, 4, 3), task.image[1::2, 1::2])
    small = load_implicit2_images(set_name, "paper", resolution=4, root=tmp_path)
    assert small[0].image.shape == (4, 4, 3) and "resized 8x8->4x4" in small[0].source


def test_paper_images_missing_name_the_path(offline, tmp_path):
    for set_name, filename in PAPER_IMAGE_FILES.items():
        with pytest.raises(DatasetNotFoundError) as info:
            load_implicit2_images(set_name, "paper", 128, root=tmp_path)
        expected = str(tmp_path / "implicit2" / filename)
        assert expected in str(info.value) and info.value.missing == (expected,)
        assert "'embedded'" in str(info.value)


def test_paper_images_validate_contents(tmp_path):
    path = tmp_path / "implicit2" / PAPER_IMAGE_FILES["natural"]
    _write_npz(tmp_path, "natural", train_data=np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match=PAPER_IMAGE_KEY) as info:
        load_implicit2_images("natural", "paper", root=tmp_path)
    assert str(path) in str(info.value) and "train_data" in str(info.value)
    _write_npz(tmp_path, "natural", test_data=np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        load_implicit2_images("natural", "paper", root=tmp_path)
    _write_npz(tmp_path, "natural", test_data=np.zeros((2, 8, 6, 3), np.uint8))
    with pytest.raises(ValueError, match="N x H x H x 3"):
        load_implicit2_images("natural", "paper", root=tmp_path)
    _write_npz(tmp_path, "natural", test_data=np.zeros((2, 7, 7, 3), np.uint8))  # odd native size
    with pytest.raises(ValueError, match="R=7") as info:
        load_implicit2_images("natural", "paper", root=tmp_path)
    assert str(path) in str(info.value)
    assert load_implicit2_images("natural", "paper", 4, root=tmp_path)[0].resolution == 4
    path.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="cannot read"):
        load_implicit2_images("natural", "paper", root=tmp_path)


# --------------------------------------------------------------------------- video


def test_synthetic_pan_video(offline):
    video = load_implicit2_video("embedded")
    frames = video.frames
    assert frames.shape == (16, 64, 64, 3) and frames.dtype == torch.float32
    assert frames.min() >= 0 and frames.max() <= 1
    assert video.synthetic_motion and "SYNTHETIC MOTION" in video.source and video.stand_in_for == PAPER_VIDEO_FILE
    for k in range(15):  # frame k+1 is frame k moved 2 px diagonally
        assert torch.equal(frames[k + 1, :-2, :-2], frames[k, 2:, 2:])
        assert not torch.equal(frames[k + 1], frames[k])
    coords, targets = video.coords(), video.targets()
    assert coords.shape == (16 * 64 * 64, 3) == targets.shape and len(video) == 16 * 64 * 64
    assert coords.min() == -1 and coords.max() == 1
    assert torch.equal(coords[0], torch.tensor([-1.0, -1.0, -1.0])) and torch.equal(coords[-1], torch.ones(3))
    index = torch.tensor([5, 64 * 64 + 3 * 64 + 7])  # (t, h, w) = (0, 0, 5) and (1, 3, 7)
    assert torch.equal(video.coords(index), coords[index])
    assert torch.equal(video.targets(index), torch.stack([frames[0, 0, 5], frames[1, 3, 7]]))
    torch.testing.assert_close(coords[index[1]], torch.tensor([-1 + 2 / 15, -1 + 6 / 63, -1 + 14 / 63]))
    assert video.sha256 == synthetic_pan_video().sha256 == array_sha256(frames)
    with pytest.raises(ValueError, match="do not fit"):
        synthetic_pan_video(frames=40)


def test_paper_video(offline, tmp_path):
    path = tmp_path / "implicit2" / PAPER_VIDEO_FILE
    with pytest.raises(DatasetNotFoundError) as info:
        load_implicit2_video("paper", root=tmp_path)
    assert str(path) in str(info.value) and info.value.missing == (str(path),)
    assert "load_implicit2_video('embedded')" in str(info.value)
    path.parent.mkdir(parents=True)
    clip = np.random.default_rng(0).integers(0, 256, size=(5, 6, 4, 3), dtype=np.uint8)
    np.save(path, clip)
    video = load_implicit2_video("paper", root=tmp_path)
    assert not video.synthetic_motion and video.stand_in_for is None and str(path) in video.source
    torch.testing.assert_close(video.frames, torch.from_numpy(clip / np.float32(255.0)))
    assert video.coords().shape == (5 * 6 * 4, 3) and video.source_sha256 == array_sha256(clip)
    assert load_implicit2_video("paper", root=tmp_path, max_frames=2).frames.shape == (2, 6, 4, 3)
    np.save(path, clip.astype(np.float32))
    with pytest.raises(ValueError, match="uint8"):
        load_implicit2_video("paper", root=tmp_path)
    np.save(path, clip[..., 0])
    with pytest.raises(ValueError, match=r"T x H x W x 3"):
        load_implicit2_video("paper", root=tmp_path)
