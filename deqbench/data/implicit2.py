"""Images and video for the (Implicit)^2 experiments (Huang, Bai, Kolter 2021; spec sections C.3, C.4, C.7).

Coordinates
    A pixel ``(i, j)`` of an ``R x R`` image has coordinate ``(lin[i], lin[j])`` with
    ``lin = linspace(-1, 1, R)``: **(row, col)** order.  Pixel sets are flattened row-major, so
    ``train_targets.reshape(R // 2, R // 2, 3)`` is ``image[::2, ::2]``.  A video pixel ``(t, h, w)`` has
    coordinate ``(lin_T[t], lin_H[h], lin_W[w])``, flattened in ``(t, h, w)`` order.  Targets are RGB in
    ``[0, 1]``; models are trained on ``2 y - 1`` (:func:`to_model_range`).

Split (C.3)
    train = pixels ``[::2, ::2]``, test = pixels ``[1::2, 1::2]``: disjoint, 25 % of the pixels each.

Sources
    ``paper``: ``<root>/implicit2/data_div2k.npz`` (natural) and ``<root>/implicit2/data_2d_text.npz`` (text), the
    Fourier-features files of Tancik et al. 2020, read from their ``test_data`` array (uint8 ``N x H x H x 3``,
    16 x 512 x 512 x 3); video ``<root>/implicit2/cat_video.npy``, a uint8 ``(T, H, W, 3)`` array of frames
    (SIREN's ``cat_video.mp4`` decoded once elsewhere, e.g. ``np.save(path, imageio.mimread(mp4))``: no ffmpeg
    is needed here).  ``embedded`` (C.7): scikit-image's bundled images, see :data:`NATURAL_SOURCES`,
    :data:`TEXT_CROPS` and :func:`synthetic_pan_video`.  Nothing is ever downloaded.

Resizing is ``skimage.transform.resize(x, (R, R), order=3, anti_aliasing=True)`` on float64 in ``[0, 1]``,
then clipped to ``[0, 1]`` and cast to float32; it is skipped when the size already matches.
Hashes: ``sha256`` is the SHA-256 of the C-order bytes of the float32 (little-endian) pre-processed array,
``source_sha256`` that of the uint8 source array as read (for embedded text crops: the whole source page).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ._common import DatasetNotFoundError, resolve_root
from .pinned import verified_sources

__all__ = [
    "CoordinateImage", "CoordinateVideo", "NATURAL_SOURCES", "TEXT_CROPS", "PAPER_IMAGE_FILES", "PAPER_IMAGE_KEY",
    "PAPER_VIDEO_FILE", "DATA_SUBDIR", "array_sha256", "coordinate_grid", "make_coordinate_image",
    "load_implicit2_images", "load_implicit2_video", "synthetic_pan_video", "to_model_range",
]

SetName = Literal["natural", "text"]
Source = Literal["embedded", "paper"]

DATA_SUBDIR = "implicit2"
#: Paper image files (spec C.4) and the array they are read from.
PAPER_IMAGE_FILES: dict[str, str] = {"natural": "data_div2k.npz", "text": "data_2d_text.npz"}
PAPER_IMAGE_KEY = "test_data"
#: Paper video: uint8 frames (T, H, W, 3) saved with numpy.save.
PAPER_VIDEO_FILE = "cat_video.npy"
#: Embedded natural stand-ins: ``skimage.data.<name>()``, centre-cropped to a square, resized to R.
NATURAL_SOURCES: tuple[str, ...] = ("camera", "astronaut", "coffee", "chelsea", "rocket")
#: Embedded text stand-ins: (skimage image, first column) of square crops of side = the image height.
TEXT_CROPS: tuple[tuple[str, int], ...] = (("text", 0), ("text", 138), ("text", 276), ("page", 0), ("page", 193))


def array_sha256(array: np.ndarray | torch.Tensor) -> str:
    """SHA-256 (hex) of an array's C-order bytes; float arrays are hashed as little-endian float32 (spec C.7)."""
    a = array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
    if a.dtype.kind == "f":
        a = a.astype("<f4")
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def to_model_range(targets: torch.Tensor) -> torch.Tensor:
    """Targets in ``[0, 1]`` -> the training range ``2 y - 1`` in ``[-1, 1]`` (spec C.3); a new tensor."""
    return targets * 2.0 - 1.0


def coordinate_grid(size: int) -> torch.Tensor:
    """``(size, size, 2)`` float32 grid: entry ``[i, j] = (lin[i], lin[j])``, ``lin = linspace(-1, 1, size)``."""
    lin = torch.linspace(-1.0, 1.0, size, dtype=torch.float64)
    return torch.stack(torch.meshgrid(lin, lin, indexing="ij"), dim=-1).to(torch.float32)


@dataclass(frozen=True, eq=False)
class CoordinateImage:
    """One image-generalisation task (spec C.3): train on pixels ``[::2, ::2]``, test on ``[1::2, 1::2]``.

    ``image`` is ``(R, R, 3)`` float32 in ``[0, 1]``; ``*_coords`` are ``(R*R/4, 2)`` (row, col) in ``[-1, 1]``
    and ``*_targets`` ``(R*R/4, 3)`` in ``[0, 1]``, row-major.  ``source`` says where the pixels came from and how
    they were processed; ``stand_in_for`` names the paper file an embedded stand-in replaces (None for paper
    data).  ``eq=False``: compare the tensors explicitly.
    """

    name: str
    set_name: str
    source: str
    stand_in_for: str | None
    sha256: str
    source_sha256: str
    image: torch.Tensor
    train_coords: torch.Tensor
    train_targets: torch.Tensor
    test_coords: torch.Tensor
    test_targets: torch.Tensor

    @property
    def resolution(self) -> int:
        return int(self.image.shape[0])

    @property
    def split_shape(self) -> tuple[int, int]:
        """``(R/2, R/2)``: reshape train/test targets ``(N, 3)`` to ``(*split_shape, 3)`` to get pictures."""
        return (self.resolution // 2, self.resolution // 2)


def _check_resolution(resolution: int) -> int:
    if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)) or resolution < 2:
        raise ValueError(f"resolution R must be an even integer >= 2, got R={resolution!r}")
    if resolution % 2:
        raise ValueError(f"resolution R must be even for the [::2, ::2] / [1::2, 1::2] split, got R={resolution}")
    return int(resolution)


def make_coordinate_image(
    image: np.ndarray | torch.Tensor, *, name: str, set_name: str, source: str,
    stand_in_for: str | None = None, source_sha256: str = "",
) -> CoordinateImage:
    """Split an ``(R, R, 3)`` float image in ``[0, 1]`` (R even) into disjoint train/test pixel sets (spec C.3)."""
    x = image if isinstance(image, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(image))
    if x.ndim != 3 or x.shape[2] != 3 or x.shape[0] != x.shape[1]:
        raise ValueError(f"image {name!r} must be (R, R, 3), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"image {name!r} must be float in [0, 1], got dtype {x.dtype}")
    resolution = _check_resolution(int(x.shape[0]))
    x = x.detach().to(torch.float32, copy=True).contiguous()  # a private copy: the hash stays valid
    if not bool(torch.isfinite(x).all()) or float(x.min()) < 0.0 or float(x.max()) > 1.0:
        raise ValueError(f"image {name!r} must have finite values in [0, 1]")
    grid = coordinate_grid(resolution)
    train, test = (slice(0, None, 2), slice(0, None, 2)), (slice(1, None, 2), slice(1, None, 2))
    return CoordinateImage(
        name=name, set_name=set_name, source=source, stand_in_for=stand_in_for, sha256=array_sha256(x),
        source_sha256=source_sha256, image=x,
        train_coords=grid[train].reshape(-1, 2).contiguous(), train_targets=x[train].reshape(-1, 3).contiguous(),
        test_coords=grid[test].reshape(-1, 2).contiguous(), test_targets=x[test].reshape(-1, 3).contiguous(),
    )


def _resize(x: np.ndarray, size: int) -> tuple[np.ndarray, str]:
    """float64 ``(H, W[, C])`` in [0, 1] -> float32 ``(size, size[, C])``, and a description of what was done."""
    if x.shape[:2] == (size, size):
        return x.astype(np.float32), f"kept at {size}x{size}"
    from skimage.transform import resize

    out = np.clip(resize(x, (size, size) + x.shape[2:], order=3, anti_aliasing=True), 0.0, 1.0)
    return out.astype(np.float32), (f"resized {x.shape[0]}x{x.shape[1]}->{size}x{size} with skimage.transform."
                                    f"resize(order=3, anti_aliasing=True), clipped to [0,1]")


#: The file behind each ``skimage.data.<name>()`` the stand-ins read (hashes pinned in :mod:`deqbench.data.pinned`).
SKIMAGE_FILES = {"camera": "camera.png", "astronaut": "astronaut.png", "coffee": "coffee.png",
                 "chelsea": "chelsea.png", "rocket": "rocket.jpg", "text": "text.png", "page": "page.png"}


def _skimage_uint8(name: str) -> np.ndarray:
    import skimage.data

    verified_sources(f"implicit2 embedded image {name}", [SKIMAGE_FILES[name]])
    array = np.asarray(getattr(skimage.data, name)())
    if array.dtype != np.uint8:
        raise ValueError(f"skimage.data.{name}() is {array.dtype}, expected uint8")
    return array


def _rgb(x: np.ndarray) -> tuple[np.ndarray, str]:
    return (np.repeat(x[..., None], 3, axis=-1), "grey replicated to 3 channels; ") if x.ndim == 2 else (x, "")


def _embedded_images(set_name: str, resolution: int) -> list[CoordinateImage]:
    import skimage

    target = PAPER_IMAGE_FILES[set_name]
    out = []
    if set_name == "natural":
        jobs = [(name, name, None) for name in NATURAL_SOURCES]
    else:
        jobs = [(f"{name}-c{col}", name, col) for name, col in TEXT_CROPS]
    for image_name, source_name, col in jobs:
        raw = _skimage_uint8(source_name)
        h, w = raw.shape[:2]
        if col is None:  # natural: centre crop to min(H, W)
            side = min(h, w)
            top, left = (h - side) // 2, (w - side) // 2
        else:  # text: a square of side H starting at column col
            side, top, left = h, 0, col
            if left + side > w:
                raise ValueError(f"crop at column {col} of skimage.data.{source_name}() ({h}x{w}) leaves the image")
        crop = raw[top:top + side, left:left + side].astype(np.float64) / 255.0
        resized, how = _resize(crop, resolution)
        pixels, grey = _rgb(resized)
        source = (
            f"embedded stand-in for {target} ({set_name} set, spec C.7): skimage.data.{source_name}() (scikit-image "
            f"{skimage.__version__}, uint8 {'x'.join(map(str, raw.shape))}, sha256 {array_sha256(raw)}); "
            f"crop rows {top}..{top + side - 1}, cols {left}..{left + side - 1}; /255; {how}; {grey}float32"
        )
        out.append(make_coordinate_image(pixels, name=image_name, set_name=set_name, source=source,
                                         stand_in_for=target, source_sha256=array_sha256(raw)))
    return out


def _not_found(what: str, path: Path, alternative: str, how: str) -> DatasetNotFoundError:
    return DatasetNotFoundError(
        f"{what} not found: expected {path}. This machine is offline and nothing is downloaded at run time: "
        f"{how} (pass root={path.parent.parent} or set $DEQBENCH_DATA). Offline alternative: {alternative}.",
        missing=(str(path),),
    )


def _load_npz_array(path: Path, key: str) -> np.ndarray:
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as exc:  # not a zip / npy file, truncated, pickled data, ...
        raise ValueError(f"{path}: cannot read as an .npz file ({type(exc).__name__}: {exc})") from exc
    if not hasattr(data, "files"):
        raise ValueError(f"{path}: expected an .npz archive with key {key!r}, got a single .npy array")
    with data:
        if key not in data.files:
            raise ValueError(f"{path}: key {key!r} not found; the file has keys {sorted(data.files)}")
        try:
            return np.asarray(data[key])
        except Exception as exc:
            raise ValueError(f"{path}: cannot read key {key!r} ({type(exc).__name__}: {exc})") from exc


def _check_frames(array: np.ndarray, path: Path, key: str, square: bool) -> None:
    if array.dtype != np.uint8:
        raise ValueError(f"{path}: array {key!r} must be uint8, got {array.dtype}")
    if array.ndim != 4 or array.shape[-1] != 3 or array.shape[0] < 1 or (square and array.shape[1] != array.shape[2]):
        shape = "N x H x H x 3" if square else "T x H x W x 3"
        raise ValueError(f"{path}: array {key!r} must be {shape} (RGB), got shape {array.shape}")


def _paper_images(set_name: str, resolution: int | None, root: Path) -> list[CoordinateImage]:
    path = root / DATA_SUBDIR / PAPER_IMAGE_FILES[set_name]
    if not path.is_file():
        raise _not_found(
            f"(Implicit)^2 {set_name} image set", path,
            f"load_implicit2_images({set_name!r}, 'embedded', R) (scikit-image stand-ins)",
            "download it on a machine with internet from the Fourier-features project of Tancik et al. 2020 "
            "(github.com/tancik/fourier-feature-networks, the 2D image regression demo's data links) and copy it there",
        )
    array = _load_npz_array(path, PAPER_IMAGE_KEY)
    _check_frames(array, path, PAPER_IMAGE_KEY, square=True)
    size = int(array.shape[1]) if resolution is None else resolution
    if size % 2:
        raise ValueError(f"{path}: images in {PAPER_IMAGE_KEY!r} are {size} px (odd R={size}); pass an even resolution")
    out = []
    for i, raw in enumerate(array):
        pixels, how = _resize(raw.astype(np.float64) / 255.0, size)
        source = (f"paper {set_name} set: {path} [{PAPER_IMAGE_KEY!r}][{i}] of {array.shape[0]}, uint8 "
                  f"{raw.shape[0]}x{raw.shape[1]}x3; /255; {how}; float32")
        out.append(make_coordinate_image(pixels, name=f"{set_name}-{i:02d}", set_name=set_name, source=source,
                                         source_sha256=array_sha256(raw)))
    return out


def load_implicit2_images(
    set_name: SetName, source: Source = "embedded", resolution: int | None = None,
    root: str | os.PathLike | None = None,
) -> tuple[CoordinateImage, ...]:
    """The natural or text image set (spec C.4; embedded stand-ins C.7), split as in C.3.

    ``resolution`` R (even): None keeps the files' size for ``paper`` (512) and means 512 for ``embedded``.
    ``root`` (paper only) defaults to ``$DEQBENCH_DATA``, else ``./data``.  Raises
    :class:`DatasetNotFoundError` naming the expected path when a paper file is missing and ValueError for an
    odd R or a malformed file (naming the file and key).
    """
    if set_name not in PAPER_IMAGE_FILES:
        raise ValueError(f"unknown (Implicit)^2 image set {set_name!r}; valid: {', '.join(PAPER_IMAGE_FILES)}")
    if resolution is not None:
        resolution = _check_resolution(resolution)
    if source == "embedded":
        return tuple(_embedded_images(set_name, 512 if resolution is None else resolution))
    if source == "paper":
        return tuple(_paper_images(set_name, resolution, resolve_root(root)))
    raise ValueError(f"unknown source {source!r}; valid: 'embedded', 'paper'")


@dataclass(frozen=True, eq=False)
class CoordinateVideo:
    """A video-representation task (spec C.4): ``frames`` ``(T, H, W, 3)`` float32 in ``[0, 1]``.

    :meth:`coords` / :meth:`targets` give ``(t, h, w)`` coordinates in ``[-1, 1]^3`` and RGB targets for flat
    pixel indices in ``(t, h, w)`` row-major order (all ``T*H*W`` of them when ``index`` is None), computed on
    demand so a long video never materialises its coordinate table.  ``synthetic_motion`` is True for the
    embedded pan, which is not real video.  ``eq=False``: compare the tensors explicitly.
    """

    name: str
    source: str
    stand_in_for: str | None
    synthetic_motion: bool
    sha256: str
    source_sha256: str
    frames: torch.Tensor

    def __len__(self) -> int:
        return int(self.frames.shape[0] * self.frames.shape[1] * self.frames.shape[2])

    def coords(self, index: torch.Tensor | None = None) -> torch.Tensor:
        """``(N, 3)`` float32 ``(lin_T[t], lin_H[h], lin_W[w])`` of flat pixel indices (default: all pixels)."""
        t_len, h_len, w_len = (int(s) for s in self.frames.shape[:3])
        n = torch.arange(len(self)) if index is None else torch.as_tensor(index, dtype=torch.int64).reshape(-1)
        axes = [torch.linspace(-1.0, 1.0, size, dtype=torch.float64) for size in (t_len, h_len, w_len)]
        t, h, w = n // (h_len * w_len), (n // w_len) % h_len, n % w_len
        return torch.stack([axes[0][t], axes[1][h], axes[2][w]], dim=-1).to(torch.float32)

    def targets(self, index: torch.Tensor | None = None) -> torch.Tensor:
        """``(N, 3)`` RGB in ``[0, 1]`` of flat pixel indices (default: all pixels)."""
        flat = self.frames.reshape(-1, 3)
        return flat if index is None else flat[torch.as_tensor(index, dtype=torch.int64).reshape(-1)]


def synthetic_pan_video(frames: int = 16, size: int = 64, step: int = 2, downscale: int = 128) -> CoordinateVideo:
    """The embedded video stand-in (spec C.7): a diagonal pan over ``skimage.data.astronaut()``.

    The image is resized to ``downscale`` x ``downscale``; frame k is the ``size`` x ``size`` window at rows and
    columns ``offset + step * k``, with the path centred: ``offset = (downscale - size - step * (frames - 1)) // 2``.
    So frame k+1 is frame k moved by ``step`` px down and right: ``f[k+1][:-step, :-step] == f[k][step:, step:]``.
    """
    import skimage

    travel = step * (frames - 1)
    if min(frames, size, step) < 1 or size + travel > downscale:
        raise ValueError(f"{frames} frames of {size} px moving {step} px do not fit in {downscale} px")
    raw = _skimage_uint8("astronaut")
    small, how = _resize(raw.astype(np.float64) / 255.0, downscale)
    offset = (downscale - size - travel) // 2
    clip = np.stack([small[offset + step * k: offset + step * k + size, offset + step * k:
                           offset + step * k + size] for k in range(frames)])
    video = torch.from_numpy(np.ascontiguousarray(clip))
    source = (
        f"embedded stand-in for {PAPER_VIDEO_FILE} (SIREN cat video), SYNTHETIC MOTION (spec C.7): skimage.data."
        f"astronaut() (scikit-image {skimage.__version__}, uint8 512x512x3, sha256 {array_sha256(raw)}); /255; "
        f"{how}; {frames} frames of {size}x{size}, window at rows=cols={offset}+{step}*k (diagonal pan); float32"
    )
    return CoordinateVideo(name="astronaut-pan", source=source, stand_in_for=PAPER_VIDEO_FILE, synthetic_motion=True,
                           sha256=array_sha256(video), source_sha256=array_sha256(raw), frames=video)


def load_implicit2_video(
    source: Source = "embedded", root: str | os.PathLike | None = None, max_frames: int | None = None,
) -> CoordinateVideo:
    """The video of spec C.4 (paper: ``<root>/implicit2/cat_video.npy``) or the synthetic pan of C.7.

    ``max_frames`` keeps the first frames of the paper video.  Raises :class:`DatasetNotFoundError` naming the
    path when the file is missing and ValueError when it is not a uint8 ``(T, H, W, 3)`` array.
    """
    if source == "embedded":
        return synthetic_pan_video()
    if source != "paper":
        raise ValueError(f"unknown source {source!r}; valid: 'embedded', 'paper'")
    if max_frames is not None and (isinstance(max_frames, bool) or int(max_frames) != max_frames or max_frames < 1):
        raise ValueError(f"max_frames must be a positive integer or None, got {max_frames!r}")
    path = resolve_root(root) / DATA_SUBDIR / PAPER_VIDEO_FILE
    if not path.is_file():
        raise _not_found(
            "(Implicit)^2 video", path, "load_implicit2_video('embedded') (a synthetic pan, not real motion)",
            "on a machine with internet and ffmpeg, download cat_video.mp4 from the SIREN project "
            "(github.com/vsitzmann/siren), decode it to a uint8 (T, H, W, 3) array and numpy.save it under that name",
        )
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:
        raise ValueError(f"{path}: cannot read as a .npy array ({type(exc).__name__}: {exc})") from exc
    _check_frames(array, path, PAPER_VIDEO_FILE, square=False)
    raw = np.ascontiguousarray(array if max_frames is None else array[: int(max_frames)])
    video = torch.from_numpy(raw.astype(np.float32) / np.float32(255.0))
    limited = f", first {raw.shape[0]} of {array.shape[0]} frames" if raw.shape[0] < array.shape[0] else ""
    text = f"paper video: {path}, uint8 {'x'.join(map(str, raw.shape))}{limited}; /255; float32"
    return CoordinateVideo(name="cat_video", source=text, stand_in_for=None, synthetic_motion=False,
                           sha256=array_sha256(video), source_sha256=array_sha256(raw), frames=video)
