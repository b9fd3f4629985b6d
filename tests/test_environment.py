"""The pinned environment (issue 13): requirements.lock pins every dependency with a hash, the environment the tests
run in was installed from it, and every result's provenance records the lock's hash."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from deqbench.experiments.provenance import lock_file_digest, provenance

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "requirements.lock"
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==(\S+) \\\n    --hash=sha256:([0-9a-f]{64})$", re.M)


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(spec: str) -> str:
    return _normalise(re.split(r"[<>=!~;\[ ]", spec, maxsplit=1)[0])


def _pins() -> dict[str, tuple[str, str]]:
    return {_normalise(name): (version, digest) for name, version, digest in PIN.findall(LOCK.read_text())}


def test_every_lock_line_is_an_exact_pin_with_a_sha256():
    body = [line for line in LOCK.read_text().splitlines() if line and not line.startswith("#")]
    pins = _pins()
    assert len(pins) * 2 == len(body), "every entry is 'name==version \\' followed by one '--hash=sha256:...' line"
    assert len(pins) > 50


def test_the_lock_covers_the_runtime_pipeline_test_and_build_requirements():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    declared = list(project["project"]["dependencies"]) + list(project["build-system"]["requires"])
    for extra in ("pipeline", "test"):
        declared += project["project"]["optional-dependencies"][extra]
    pins = _pins()
    missing = sorted(_requirement_name(spec) for spec in declared if _requirement_name(spec) not in pins)
    assert not missing, f"requirements.lock lacks {missing}: run python3 tools/refresh_lock.py"
    assert pins["torch"][0] == "2.14.1" and pins["torchvision"][0] == "0.29.1"


def test_the_test_environment_was_installed_from_the_lock():
    digest = lock_file_digest()
    assert digest["matches_installed"], (
        f"installed versions differ from requirements.lock: {digest['mismatched']} (install with the README's "
        "set-up command)")


def test_provenance_records_the_lock_hash(tmp_path):
    record = provenance({"a": 1}, "cpu", seeds=[0])
    assert re.fullmatch(r"[0-9a-f]{64}", record["lock"]["sha256"])
    other = tmp_path / "requirements.lock"
    other.write_text("numpy==0.0.1 \\\n    --hash=sha256:" + "0" * 64 + "\n")
    changed = lock_file_digest(other)
    assert changed["sha256"] != record["lock"]["sha256"]
    assert not changed["matches_installed"] and changed["mismatched"][0].startswith("numpy ")
