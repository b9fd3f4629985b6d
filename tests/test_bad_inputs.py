"""Reliability R2 (issue 13): each bad input exits non-zero with a one-line message naming the key or path, and
leaves no output behind.  Every case runs the real command line (``deqbench.experiments.cli.main``) in-process on
the smoke profile; the Snakemake side (the message reaching the console) is tested in test_pipeline.py."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from deqbench.experiments import cli

REPO = Path(__file__).resolve().parents[1]
PARAMS = str(REPO / "params.yaml")


def run(capsys, *argv: str, profile: str = "smoke", params: str = PARAMS) -> tuple[int, str]:
    code = cli.main(["--params", params, "--profile", profile, "--no-progress", "--threads", "1", *argv])
    return code, capsys.readouterr().err


def assert_refused(code: int, err: str, *names: str) -> None:
    assert code == 1, err
    assert any(line.startswith("error: ") for line in err.splitlines()) and "Traceback" not in err, err
    for name in names:
        assert name in err, (name, err)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A prepared digits28 split and a 2-step clean checkpoint on the smoke profile."""
    work = tmp_path_factory.mktemp("r2")
    data, checkpoint = work / "digits.pt", work / "clean.pt"
    assert cli.main(["--params", PARAMS, "--profile", "smoke", "--no-progress", "--threads", "1",
                     "jiio_adversarial", "prepare", "--dataset", "mnist", "--out", str(data)]) == 0
    assert cli.main(["--params", PARAMS, "--profile", "smoke", "--no-progress", "--threads", "1",
                     "--set", "jiio_adversarial.train.max_steps=2", "jiio_adversarial", "train", "--data",
                     str(data), "--dataset", "mnist", "--method", "clean", "--eps", "0", "--seed", "0", "--out",
                     str(checkpoint), "--partial", str(work / "clean.partial")]) == 0
    return data, checkpoint


def _prepare(out: Path) -> list[str]:
    return ["jiio_adversarial", "prepare", "--dataset", "mnist", "--out", str(out)]


def _evaluate(data: Path, checkpoint: Path, out: Path) -> list[str]:
    return ["jiio_adversarial", "evaluate", "--data", str(data), "--dataset", "mnist", "--checkpoint",
            str(checkpoint), "--eps", "1", "--out", str(out)]


def test_unknown_profile(capsys, tmp_path):
    code, err = run(capsys, *_prepare(tmp_path / "d.pt"), profile="papr")
    assert_refused(code, err, "papr")
    assert not (tmp_path / "d.pt").exists()


def test_unknown_key(capsys, tmp_path):
    code, err = run(capsys, "--set", "jiio_adversarial.train.max_stepz=3", *_prepare(tmp_path / "d.pt"))
    assert_refused(code, err, "max_stepz")
    assert not (tmp_path / "d.pt").exists()


def test_wrong_type(capsys, tmp_path):
    code, err = run(capsys, "--set", "jiio_adversarial.train.max_steps=many", *_prepare(tmp_path / "d.pt"))
    assert_refused(code, err, "max_steps", "many")
    assert not (tmp_path / "d.pt").exists()


def test_out_of_range_value(capsys, tmp_path):
    code, err = run(capsys, "--set", "jiio_adversarial.train.max_steps=-3", *_prepare(tmp_path / "d.pt"))
    assert_refused(code, err, "max_steps", "-3")
    assert not (tmp_path / "d.pt").exists()


def test_missing_dataset_files(capsys, tmp_path):
    code, err = run(capsys, "--set", f"data_root={tmp_path / 'data'}", *_prepare(tmp_path / "d.pt"), profile="paper")
    assert_refused(code, err, str(tmp_path / "data"), "MNIST")
    assert not (tmp_path / "d.pt").exists()


def test_truncated_dataset_file(capsys, tmp_path):
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", 6), ("t10k", 4)):
        images = np.zeros((n, 28, 28), np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">4I", 2051, n, 28, 28) + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">2I", 2049, n) + bytes(n))
    truncated = raw / "train-images-idx3-ubyte"
    truncated.write_bytes(truncated.read_bytes()[:-100])
    code, err = run(capsys, "--set", f"data_root={tmp_path / 'data'}", *_prepare(tmp_path / "d.pt"), profile="paper")
    assert_refused(code, err, str(truncated))
    assert not (tmp_path / "d.pt").exists()


def test_corrupt_checkpoint(capsys, tmp_path, trained):
    data, checkpoint = trained
    corrupt = tmp_path / "clean.pt"
    corrupt.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    code, err = run(capsys, *_evaluate(data, corrupt, tmp_path / "e.json"))
    assert_refused(code, err, str(corrupt))
    assert not (tmp_path / "e.json").exists()


def test_checkpoint_from_another_config(capsys, tmp_path, trained):
    data, checkpoint = trained
    code, err = run(capsys, "--set", "jiio_adversarial.model.mnist.final_channels=24",
                    *_evaluate(data, checkpoint, tmp_path / "e.json"))
    assert_refused(code, err, str(checkpoint), "retrain")
    assert not (tmp_path / "e.json").exists()


def test_table_input_from_another_profile(capsys, tmp_path):
    result = tmp_path / "timing.json"
    result.write_text(json.dumps({"rows": [], "provenance": {"profile": "embedded", "scale": "embedded"}}))
    out = tmp_path / "results" / "table7.csv"
    code, err = run(capsys, "jiio_meta", "table", "table7", str(result), "--out", str(out))
    assert_refused(code, err, str(result), "embedded", "smoke")
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_unreadable_csv(capsys, tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    (results / "table7.csv").write_bytes(b"\x00\xff\xfe garbage \x00\n\x81")
    out = tmp_path / "claims.csv"
    code, err = run(capsys, "claims", "--results", str(results), "--out", str(out))
    assert_refused(code, err, str(results / "table7.csv"))
    assert not out.exists()


def test_output_path_that_cannot_be_written(capsys, tmp_path):
    (tmp_path / "results").write_text("a file where a folder should be")
    out = tmp_path / "results" / "digits.pt"
    code, err = run(capsys, *_prepare(out))
    assert_refused(code, err, str(tmp_path / "results"))
    assert (tmp_path / "results").read_text() == "a file where a folder should be"


def test_yaml_syntax_error_names_the_line(capsys, tmp_path):
    bad = tmp_path / "params.yaml"
    lines = Path(PARAMS).read_text().splitlines()
    lines[40] = lines[40] + " : : ["
    bad.write_text("\n".join(lines) + "\n")
    code, err = run(capsys, *_prepare(tmp_path / "d.pt"), params=str(bad))
    assert_refused(code, err, str(bad), "line 41")
    assert not (tmp_path / "d.pt").exists()



def test_a_config_name_carrying_a_shell_command_is_refused_before_any_job(tmp_path):
    """Security: an override naming a generative problem ``x --help;touch <file>;y`` must not run the command
    (names become wildcards and shell arguments); the schema refuses it, naming the key, before any job starts."""
    import subprocess
    import sys

    import yaml

    marker = tmp_path / "pwned"
    payload = f"x --help;touch {marker};y"
    override = {"profiles": {"smoke": {"jiio_generative": {"problems": {payload: {"kind": "inpaint", "window": 5}}}}}}
    (tmp_path / "override.yaml").write_text(yaml.safe_dump(override))
    snakemake = Path(sys.executable).with_name("snakemake")
    proc = subprocess.run([str(snakemake), "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path), "--cores",
                           "1", "--configfile", str(REPO / "params.yaml"), str(tmp_path / "override.yaml"),
                           "--config", "profile=smoke", "--", "results/table4.csv"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode != 0
    assert "problems" in proc.stdout + proc.stderr and "does not match" in proc.stdout + proc.stderr
    assert not marker.exists()
    assert not (tmp_path / "results").exists()


def test_every_interpolation_in_the_pipelines_shell_commands_is_quoted():
    """Every ``{...}`` a rule's shell command interpolates is shell-quoted with Snakemake's ``:q``."""
    import re

    unquoted = []
    for smk in sorted((REPO / "pipelines").glob("*.smk")):
        text = smk.read_text()
        for block in re.finditer(r"shell:\n((?:[ \t]+.*\n)+)", text):
            for field in re.findall(r"(?<!\{)\{([^{}]+)\}(?!\})", block.group(1)):
                name = field.removeprefix("params.")
                prequoted = field.startswith("params.") and re.search(rf"^\s+{name}=lambda .*shlex\.quote\(", text, re.M)
                if not field.endswith(":q") and not prequoted:  # an optional flag built with shlex.quote is quoted
                    unquoted.append(f"{smk.name}: {{{field}}}")
    assert not unquoted, unquoted
