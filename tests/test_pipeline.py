"""End-to-end: the Snakemake pipeline and `dvc repro` on the smallest embedded setting (profile `smoke`)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["DVC_NO_ANALYTICS"] = "1"
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "--directory", str(workdir), "--cores", "2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=1500)


def _check_adversarial_table(path: Path, datasets: list[str]) -> None:
    rows = list(csv.DictReader(path.open()))
    assert len(rows) == 9 * len(datasets)
    for row in rows:
        assert row["profile"] == "smoke"
        assert "embedded stand-in" in row["data_source"]
        assert 0.0 <= float(row["accuracy_mean"]) <= 100.0
        assert row["n_seeds"] == "1"
        assert row["paper_value"]  # the reference column is filled
    assert {(r["train_method"], r["test_method"]) for r in rows} == {(a, b) for a in ("clean", "pgd", "jio") for b in ("clean", "pgd", "jio")}


def _check_generative_outputs(root: Path) -> None:
    """Tables 1, 3, 4, memory and Figure 3 of the generative experiments (section 4.1-4.2)."""
    table1 = list(csv.DictReader((root / "results/table1.csv").open()))
    assert [r["model"] for r in table1] == ["VAE", "RAE", "MDEQ-VAE", "MDEQ-VAE (w/ JIIO)", "JIIO-MDEQ"]
    for row in table1:
        assert row["fid_reconstruction"] == "n/a" and "Inception weights not found" in row["fid_note"]  # offline
        assert 5.0 < float(row["recon_median_psnr_01"]) < 60.0
        assert row["paper_fid_reconstruction"] and "embedded stand-in" in row["data_source"]
    prov = json.loads((root / "results/table1.provenance.json").read_text())
    assert "Inception weights not found" in prov["inputs"]["fid"]["jiio_mdeq"]["generation"]
    table4 = list(csv.DictReader((root / "results/table4.csv").open()))
    assert len(table4) == 7 and {r["task"] for r in table4} == {"supervised", "unsupervised"}
    for row in table4:
        for problem in ("inpaint20", "denoise0.2", "denoise0.4"):
            assert float(row[f"{problem}_median_psnr_01"]) > float(row[f"{problem}_psnr_reference_convention"])
            assert row[f"{problem}_paper"]
    gen = yaml.safe_load((REPO / "params.yaml").read_text())["profiles"]["smoke"]["generative"]
    names = {f"adam{gen['adam']['steps']}", "jiio40", f"jiio{gen['jiio']['test_iterations']}"}  # counts actually run
    table3 = list(csv.DictReader((root / "results/table3.csv").open()))
    assert {r["method"] for r in table3} == names
    assert all(float(r["ms_per_example"]) > 0 for r in table3)
    memory = list(csv.DictReader((root / "results/memory.csv").open()))
    assert {r["method"] for r in memory} == {"jiio40", "adam40"} and all("RSS" in r["measure"] for r in memory)
    assert (root / "results/figure3.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    curves = list(csv.DictReader((root / "results/figure3.csv").open()))
    assert {r["method"] for r in curves} == names
    assert {r["panel"] for r in curves} == {"model trained with JIIO-40", "model trained with JIIO-100"}
    assert json.loads((root / "results/figure3.provenance.json").read_text())["figure"] == "figure3"


@pytest.mark.slow
def test_snakemake_pipeline_end_to_end(tmp_path):
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    proc = _snakemake(tmp_path, "--config", "profile=smoke")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    _check_adversarial_table(tmp_path / "results/table5.csv", ["mnist", "cifar10"])
    _check_adversarial_table(tmp_path / "results/table8.csv", ["cifar10"])
    assert (tmp_path / "results/table5.md").read_text().startswith("# Table 5")
    timing = list(csv.DictReader((tmp_path / "results/table2.csv").open()))
    assert {r["method"] for r in timing} == {"pgd", "jio"} and all(float(r["ms_per_example"]) > 0 for r in timing)
    prov = json.loads((tmp_path / "results/table5.provenance.json").read_text())
    for key in ("git", "config_hash", "packages", "device", "seeds", "config"):
        assert key in prov
    assert prov["inputs"]["measured_on"][0]["type"] == "cpu"
    _check_generative_outputs(tmp_path)
    # A second run has nothing to do.
    again = _snakemake(tmp_path, "--config", "profile=smoke", "-n")
    assert "Nothing to be done" in again.stdout + again.stderr


@pytest.mark.slow
def test_bad_profile_fails_cleanly(tmp_path):
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    proc = _snakemake(tmp_path, "results/table5.csv", "--config", "profile=papr")
    assert proc.returncode != 0
    assert "unknown profile 'papr'" in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_dvc_repro_rebuilds_the_tables(tmp_path):
    work = tmp_path / "repo"
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        src = REPO / name
        if src.is_file():
            dst = work / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["profile"] = "smoke"
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = _env()
    subprocess.run(["git", "init", "-q"], cwd=work, check=True, env=env)
    proc = subprocess.run([str(BIN / "dvc"), "repro"], cwd=work, capture_output=True, text=True, env=env, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    _check_adversarial_table(work / "results/table5.csv", ["mnist", "cifar10"])
    _check_generative_outputs(work)
    assert (work / "dvc.lock").exists()
    status = subprocess.run([str(BIN / "dvc"), "status"], cwd=work, capture_output=True, text=True, env=env)
    assert "up to date" in status.stdout.lower(), status.stdout + status.stderr
