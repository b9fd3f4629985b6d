"""Known-good SHA-256 of every file the embedded stand-ins are built from (issue 13, pinned data).

The stand-ins read real images that ship inside the scikit-learn and scikit-image wheels.  A package upgrade that
silently changed one of them would change every table built on it; instead, each loader calls
:func:`verified_sources`, which hashes the files it is about to read and raises :class:`SourceChangedError` naming
the dataset, the file and both hashes when one differs from the hash recorded here.  The hashes belong to the
versions in ``requirements.lock`` (scikit-learn 1.9.1, scikit-image 0.26.0); after a deliberate upgrade, rerun the
stand-ins' tables and update the entry (``python -m deqbench.data.pinned`` prints the current hashes).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import sys
from pathlib import Path
from typing import Sequence

__all__ = ["PINNED_SOURCES", "SourceChangedError", "source_path", "verified_sources"]


class SourceChangedError(ValueError):
    """A bundled stand-in source file differs from its known-good hash."""


#: source key -> (package, path inside the package, SHA-256 of the file's bytes).
PINNED_SOURCES: dict[str, tuple[str, str, str]] = {
    "digits.csv.gz": ("sklearn", "datasets/data/digits.csv.gz",
                      "09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22"),
    "china.jpg": ("sklearn", "datasets/images/china.jpg",
                  "8378025ad2519d649d02e32bd98990db4ab572357d9f09841c2fbfbb4fefad29"),
    "flower.jpg": ("sklearn", "datasets/images/flower.jpg",
                   "a77f6ec41e353afdf8bdff2ea981b2955535d8d83294f8cfa49cf4e423dd5638"),
    "astronaut.png": ("skimage", "data/astronaut.png",
                      "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5"),
    "coffee.png": ("skimage", "data/coffee.png", "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7"),
    "chelsea.png": ("skimage", "data/chelsea.png", "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb"),
    "rocket.jpg": ("skimage", "data/rocket.jpg", "c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c"),
    "hubble_deep_field.jpg": ("skimage", "data/hubble_deep_field.jpg",
                              "3a19c5dd8a927a9334bb1229a6d63711b1c0c767fb27e2286e7c84a3e2c2f5f4"),
    "retina.jpg": ("skimage", "data/retina.jpg", "38a07f36f27f095e818aea7b96d34202c05176d30253c66733f2e00379e9e0e6"),
    "ihc.png": ("skimage", "data/ihc.png", "f8dd1aa387ddd1f49d8ad13b50921b237df8e9b262606d258770687b0ef93cef"),
    "motorcycle_left.png": ("skimage", "data/motorcycle_left.png",
                            "db18e9c4157617403c3537a6ba355dfeafe9a7eabb6b9b94cb33f6525dd49179"),
    "lfw_subset.npy": ("skimage", "data/lfw_subset.npy",
                       "9560ec2f5edfac01973f63a8a99d00053fecd11e21877e18038fbe500f8e872c"),
    "camera.png": ("skimage", "data/camera.png", "b0793d2adda0fa6ae899c03989482bff9a42d3d5690fc7e3648f2795d730c23a"),
    "text.png": ("skimage", "data/text.png", "bd84aa3a6e3c9887850d45d606c96b2e59433fbef50338570b63c319e668e6d1"),
    "page.png": ("skimage", "data/page.png", "341a6f0a61557662b02734a9b6e56ec33a915b2c41886b97509dedf2a43b47a3"),
}


def source_path(key: str) -> Path:
    """Where the installed package keeps source ``key`` (found without importing the package)."""
    package, relative, _ = PINNED_SOURCES[key]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"the embedded stand-ins need the {package!r} package installed (for {key})")
    return Path(list(spec.submodule_search_locations)[0]) / relative


@functools.lru_cache(maxsize=64)
def _file_sha256(path: Path, mtime_ns: int, size: int) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def verified_sources(dataset: str, keys: Sequence[str], pins: dict[str, tuple[str, str, str]] | None = None
                     ) -> dict[str, str]:
    """SHA-256 of each source file of ``dataset``, checked against its known-good hash; raises
    :class:`SourceChangedError` (naming the dataset, file and both hashes) on a mismatch."""
    pins = PINNED_SOURCES if pins is None else pins
    digests = {}
    for key in keys:
        path = source_path(key) if pins is PINNED_SOURCES else Path(pins[key][1])
        if not path.is_file():
            raise FileNotFoundError(f"{dataset}: bundled source {key} is missing at {path}; reinstall "
                                    f"{pins[key][0]} from a standard wheel, which bundles it")
        stat = path.stat()
        actual = _file_sha256(path, stat.st_mtime_ns, stat.st_size)
        expected = pins[key][2]
        if actual != expected:
            raise SourceChangedError(
                f"{dataset}: bundled source {key} ({path}) has SHA-256 {actual}, but the known-good hash is "
                f"{expected}; the installed {pins[key][0]} differs from requirements.lock, so the stand-in and its "
                f"tables would change. Install from requirements.lock, or update deqbench/data/pinned.py after "
                f"checking the new file")
        digests[key] = actual
    return digests


if __name__ == "__main__":  # print the installed files' hashes (for a deliberate update of PINNED_SOURCES)
    for name in PINNED_SOURCES:
        p = source_path(name)
        print(f"{name}: {hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else 'missing'}  {p}")
    sys.exit(0)
