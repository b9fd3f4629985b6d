"""Pinned data (issue 13): the embedded stand-ins' source files match their known-good hashes, a changed file stops
the loader with a message naming the dataset, the file and both hashes, and prepared data records the hash."""

from __future__ import annotations

import hashlib

import pytest

from deqbench.data import pinned
from deqbench.data.embedded import load_digits28
from deqbench.data.omniglot import load_digits_meta
from deqbench.experiments import cli


def test_every_bundled_source_matches_its_known_good_hash():
    digests = pinned.verified_sources("all stand-ins", list(pinned.PINNED_SOURCES))
    for key, (_, _, expected) in pinned.PINNED_SOURCES.items():
        assert digests[key] == expected == hashlib.sha256(pinned.source_path(key).read_bytes()).hexdigest()


def test_a_changed_file_names_the_dataset_the_file_and_both_hashes(tmp_path):
    path = tmp_path / "digits.csv.gz"
    path.write_bytes(b"not the digits")
    pins = {"digits.csv.gz": ("sklearn", str(path), "0" * 64)}
    with pytest.raises(pinned.SourceChangedError) as err:
        pinned.verified_sources("digits28", ["digits.csv.gz"], pins)
    message = str(err.value)
    assert "digits28" in message and "digits.csv.gz" in message and str(path) in message
    assert hashlib.sha256(b"not the digits").hexdigest() in message and "0" * 64 in message


def test_a_package_upgrade_that_changes_a_source_stops_the_loader(monkeypatch):
    package, relative, _ = pinned.PINNED_SOURCES["digits.csv.gz"]
    monkeypatch.setitem(pinned.PINNED_SOURCES, "digits.csv.gz", (package, relative, "f" * 64))
    with pytest.raises(pinned.SourceChangedError, match=r"digits28: bundled source digits\.csv\.gz .*" + "f" * 64):
        load_digits28("train")
    with pytest.raises(pinned.SourceChangedError, match="digits-meta"):
        load_digits_meta(image_size=8)
    assert pinned.SourceChangedError in cli.USER_ERRORS  # the command line prints it as one line and exits 1


def test_prepared_stand_ins_record_their_source_hash():
    expected = pinned.PINNED_SOURCES["digits.csv.gz"][2]
    assert f"sha256 {expected}" in load_digits28("test").source
    assert f"sha256 {expected}" in load_digits_meta(image_size=8).source
