"""Artefact I/O: atomic writes, and loading that refuses anything but tensors and plain containers."""

from __future__ import annotations

import os

import pytest
import torch

from deqbench.experiments.io import UnsafeArtifactError, atomic_torch_save, atomic_write_json, load_artifact


class Payload:
    """Unpickling this runs code (``__reduce__``): what a tampered checkpoint could do."""

    def __reduce__(self):
        return (os.system, ("echo pwned",))


class Harmless:
    pass


def test_plain_artifacts_round_trip(tmp_path):
    state = {"model": {"w": torch.arange(3.0)}, "summary": {"steps": 4, "history": [{"loss": 1.5}], "name": "x"},
             "optimizer": {"param_groups": [{"betas": (0.9, 0.999)}]}, "rng": torch.get_rng_state()}
    path = atomic_torch_save(tmp_path / "a.pt", state)
    loaded = load_artifact(path)
    assert torch.equal(loaded["model"]["w"], state["model"]["w"]) and loaded["summary"] == state["summary"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left behind


def test_weights_only_loading_rejects_a_pickled_object(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "summary": Payload()}, path)
    with pytest.raises(UnsafeArtifactError, match=f"{path}: refused to load"):
        load_artifact(path)
    torch.save({"model": Harmless()}, path)  # any class outside torch's allowlist, even a harmless one
    with pytest.raises(UnsafeArtifactError):
        load_artifact(path)


def test_missing_artifact_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="artefact not found: .*nope.pt"):
        load_artifact(tmp_path / "nope.pt")


def test_a_failed_write_leaves_no_output(tmp_path):
    class Unserialisable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError):
        atomic_torch_save(tmp_path / "x.pt", {"x": Unserialisable()})
    assert list(tmp_path.iterdir()) == []
    atomic_write_json(tmp_path / "r.json", {"a": 1})
    assert (tmp_path / "r.json").read_text() == '{\n  "a": 1\n}\n'
