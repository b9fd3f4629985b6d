"""End-to-end: the Snakemake pipeline, its report, the claims ledger and `dvc repro` on the smallest setting (profile
`smoke`), plus how overrides, quoting and rerun hashes behave."""

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

from deqbench.experiments.io import load_artifact
from deqbench.experiments.registry import all_tables

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["DVC_NO_ANALYTICS"] = "1"
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "--directory", str(workdir), "--cores", "2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=1800)


def rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.open()))


# The `smoke` fixture (the whole pipeline on the smoke profile, run once per session) is in conftest.py;
# tests/test_slurm_cluster.py compares a Slurm run with it.


def test_adversarial_tables(smoke):
    for name, datasets in (("table5", 2), ("table8", 1)):
        table = rows(smoke / f"results/{name}.csv")
        assert len(table) == 9 * datasets
        for row in table:
            assert row["profile"] == "smoke" and "embedded stand-in" in row["data_source"]
            assert 0.0 <= float(row["accuracy_mean"]) <= 100.0 and row["n_seeds"] == "1"
            assert row["paper_value"]  # the reference column is filled
        assert {(r["train_method"], r["test_method"]) for r in table} == {
            (a, b) for a in ("clean", "pgd", "jio") for b in ("clean", "pgd", "jio")}
    assert (smoke / "results/table5.md").read_text().startswith("# Table 5")
    page = (smoke / "results/table5.html").read_text()
    assert '<th class="ref">accuracy (%) [paper, reference]</th>' in page and "embedded stand-in" in page
    timing = rows(smoke / "results/table2.csv")
    assert {r["method"] for r in timing} == {"pgd", "jio"} and all(float(r["ms_per_example"]) > 0 for r in timing)
    assert {r["engineering"] for r in timing} == {"eager"} and all(int(r["f_evals"]) > 0 for r in timing)
    prov = json.loads((smoke / "results/table5.provenance.json").read_text())
    for key in ("git", "settings", "settings_hash", "packages", "device", "seeds", "profile", "scale", "caption"):
        assert key in prov
    assert prov["inputs"]["measured_on"][0]["type"] == "cpu" and prov["scale"] == "reduced"
    metrics = json.loads((smoke / "results/metrics/table5.json").read_text())
    assert metrics["table"] == "table5" and "MNIST/jio-trained/pgd" in metrics


def test_generative_tables_and_figure(smoke):
    table1 = rows(smoke / "results/table1.csv")
    assert [r["model"] for r in table1] == ["VAE", "RAE", "MDEQ-VAE", "MDEQ-VAE (w/ JIIO)", "JIIO-MDEQ"]
    for row in table1:
        assert row["fid_reconstruction"] == "n/a" and "Inception weights not found" in row["fid_note"]  # offline
        assert 5.0 < float(row["recon_median_psnr_01"]) < 60.0
        assert row["paper_fid_reconstruction"] and "embedded stand-in" in row["data_source"]
    prov = json.loads((smoke / "results/table1.provenance.json").read_text())
    assert "Inception weights not found" in prov["inputs"]["fid"]["jiio_mdeq"]["generation"]
    assert all(float(row["swd_reconstruction"]) > 0 for row in table1)  # the offline distance is filled
    assert {row["model"] for row in table1 if row["swd_generation"] != "-"} == {"VAE", "RAE", "MDEQ-VAE", "JIIO-MDEQ"}
    table4 = rows(smoke / "results/table4.csv")
    from deqbench.tasks.jiio_generative.tables import TABLE4_ROWS

    assert len(TABLE4_ROWS) == 10  # 7 model rows, 3 reference rows (corrupted input, mean image, PCA)
    assert len(table4) == len(TABLE4_ROWS) * 3 and {r["task"] for r in table4} == {"supervised", "unsupervised",
                                                                                   "reference"}
    for row in table4:
        assert float(row["median_psnr_01"]) > float(row["psnr_reference_convention"])
        assert bool(row["paper_psnr"]) == (row["task"] != "reference")  # no paper value for the trivial answers
        assert bool(row["median_psnr_01_composite"]) == (row["problem"].startswith("inpaint"))
    for name in ("table1", "table4"):
        assert (smoke / f"results/{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    gen = yaml.safe_load((REPO / "params.yaml").read_text())["profiles"]["smoke"]["jiio_generative"]
    names = {f"adam{gen['adam']['steps']}", "jiio40", f"jiio{gen['jiio']['test_iterations']}"}  # counts actually run
    table3 = rows(smoke / "results/table3.csv")
    assert {r["method"] for r in table3} == names
    assert {r["distinct_examples"] for r in table3} == {str(gen["timing"]["distinct_examples"])}
    memory = rows(smoke / "results/memory.csv")
    assert {r["method"] for r in memory} == {"jiio40", f"adam{gen['adam']['steps']}"}
    assert all("RSS" in r["measure"] for r in memory)
    assert (smoke / "results/figure3.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    curves = rows(smoke / "results/figure3.csv")
    assert {r["method"] for r in curves} == names
    assert {r["panel"] for r in curves} == {"model trained with JIIO-40", "model trained with JIIO-100"}
    for panel, method in {(r["panel"], r["method"]) for r in curves}:  # real, increasing per-iteration timestamps
        stamps = [float(r["seconds"]) for r in curves if r["panel"] == panel and r["method"] == method]
        assert all(b > a for a, b in zip(stamps, stamps[1:]))
    assert (smoke / "results/figure4.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    accel = rows(smoke / "results/figure4.csv")  # Broyden vs Anderson Type-I / II inside JIIO (appendix A.2)
    iterations = gen["jiio"]["test_iterations"]
    assert [(r["solver"], int(r["iteration"])) for r in accel] == [
        (s, k) for s in ("broyden", "anderson_I", "anderson_II") for k in range(1, iterations + 1)]
    assert all(r["final_cost"] and "embedded stand-in" in r["data_source"] for r in accel)


def test_moptqs_tables_and_figure(smoke):
    table1a = rows(smoke / "results/moptqs_table1a.csv")
    ours = [r for r in table1a if r["row_source"] == "ours"]
    assert [r["model"] for r in ours] == ["Parallel-OptEqs", "POptEqs(sum)", "POptEqs(conv)", "MOptEqs (w/o PE)",
                                          "MOptEqs"]
    for row in ours:
        assert 0.0 <= float(row["accuracy_mean"]) <= 100.0 and row["paper_accuracy"] and int(row["num_parameters"]) > 0
        assert "embedded stand-in" in row["data_source"] and "spectral" in row["choices"]
    assert all(r["accuracy_mean"] == "" and r["paper_accuracy"] for r in table1a if r["row_source"].startswith("quoted"))
    chance = [r for r in table1a if r["row_source"] == "reference: no model"]  # computed from the test labels
    assert len(chance) == 1 and 0.0 < float(chance[0]["accuracy_mean"]) <= 100.0
    assert [r["model"] for r in rows(smoke / "results/moptqs_table3.csv") if r["row_source"] == "ours"] == [
        "MOptEqs", "- D", "- H", "- D, H"]
    table2 = [r for r in rows(smoke / "results/moptqs_table2.csv") if r["row_source"] == "ours"]
    assert {(r["dataset"], r["coupling"]) for r in table2} == {(d, c) for d in ("CIFAR-100", "ImageNette")
                                                                for c in ("MDEQ", "hhd")}
    assert {r["model_key"] for r in rows(smoke / "results/moptqs_table1b.csv") if r["row_source"] == "ours"} == {
        "mdeq_small", "mdeq_large", "moptqs_ms_048", "moptqs_ms_19"}
    curves = rows(smoke / "results/moptqs_figure4.csv")
    assert len({r["model_key"] for r in curves}) == 4 and all(float(r["residual_median"]) >= 0 for r in curves)
    assert {r["panel"] for r in curves} == {"a", "b"}
    for name in ("moptqs_figure2", "moptqs_figure3a", "moptqs_figure3b", "moptqs_figure3c", "moptqs_figure4"):
        assert (smoke / f"results/{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {r["model"] for r in rows(smoke / "results/moptqs_figure2.csv") if r["kind"] == "mean"} == {
        "MOptEqs", "POptEqs"}
    perturbed = rows(smoke / "results/moptqs_figure3a.csv")
    assert {r["kind"] for r in perturbed} >= {"reconstructed", "binomial", "uniform"}
    table5 = rows(smoke / "results/moptqs_table5.csv")
    assert [r["model_key"] for r in table5] == ["adv_no_pe", "adv_pe"]
    assert all(float(r["pgd_accuracy_mean"]) <= float(r["natural_accuracy_mean"]) + 50 and r["paper_pgd_accuracy"]
               for r in table5)
    table6 = rows(smoke / "results/moptqs_table6.csv")
    assert [r["gradient"] for r in table6] == ["implicit", "one_step"]
    assert all(float(r["memory_mib"]) > 0 and float(r["inference_seconds"]) > 0 for r in table6)
    robustness = rows(smoke / "results/moptqs_figure3b.csv")
    assert {r["pe_eps"] for r in robustness} == {"0", "0.1", "0.25", "0.5"}
    gammas = rows(smoke / "results/moptqs_figure3c.csv")
    assert {r["kind"] for r in gammas} == {"baseline", "regularised", "reference", "best_regularised"}
    assert not (smoke / "results/moptqs_table4.csv").exists()  # ImageNet: built only on request


def test_implicit2_tables_and_figures(smoke):
    """(Implicit)^2 on the smoke profile: every table and figure, paired rows, paper columns and stand-in labels."""
    imp2 = yaml.safe_load((REPO / "params.yaml").read_text())["profiles"]["smoke"]["implicit2"]
    table = rows(smoke / "results/implicit2_generalization.csv")
    summary = [r for r in table if r["kind"] == "summary"]
    assert {(r["set"], r["filter"], r["paper_size"], r["model"]) for r in summary} == {
        (s, f, p, m) for s in ("natural", "text") for f in ("fourier", "gabor", "siren")
        for p in ("1L-256D", "1L-512D", "4L-256D") for m in ("explicit", "implicit")}
    for row in summary:
        assert row["profile"] == "smoke" and "embedded stand-in" in row["data_source"] and row["paper_psnr_mean"]
        assert 0.0 < float(row["psnr_mean"]) < 60.0 and row["n_images"] == str(imp2["data"]["images"])
        assert row["size"] == imp2["generalization"]["sizes"][row["paper_size"]]
        assert bool(row["wins"]) == (row["model"] == "implicit")
    assert len([r for r in table if r["kind"] == "image"]) == 2 * 3 * 3 * imp2["data"]["images"]
    baselines = [r for r in table if r["kind"] == "baseline"]
    assert len(baselines) == 2 * 3 and all(r["model"].startswith("baseline: ") and r["psnr_mean"] for r in baselines)
    assert all(r["minus_bilinear"] for r in summary)
    video = rows(smoke / "results/implicit2_video.csv")
    assert len(video) == 18 and all("SYNTHETIC MOTION" in r["data_source"] and r["paper_psnr_mean"] for r in video)
    order = rows(smoke / "results/implicit2_gradient_order.csv")
    assert [r["order"] for r in order if r["kind"] == "final"] == ["0", "1", "inf"]
    assert len([r for r in order if r["kind"] == "step"]) == 3 * imp2["gradient_order"]["steps"]
    cost = rows(smoke / "results/implicit2_cost.csv")
    assert {r["kind"] for r in cost} == {"explicit", "deq_full_solve", "amortized"}
    assert all(float(r["step_seconds"]) > 0 and float(r["saved_mib"]) > 0 for r in cost)
    amortization = rows(smoke / "results/implicit2_amortization.csv")
    assert [r["kind"] for r in amortization if r["kind"] != "trace"] == ["image", "mean"]
    assert [r["image"] for r in rows(smoke / "results/implicit2_pictures.csv")] == ["camera"]
    for name in ("implicit2_gradient_order", "implicit2_cost", "implicit2_amortization", "implicit2_pictures"):
        assert (smoke / f"results/{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    prov = json.loads((smoke / "results/implicit2_generalization.provenance.json").read_text())
    assert prov["scale"] == "reduced" and prov["inputs"]["seeds"] == [0] and len(prov["inputs"]["run_files"]) == 6
    run = json.loads(Path(smoke / prov["inputs"]["run_files"][0]).read_text())
    assert {"provenance", "image_sha256", "seed"} <= set(run) and run["provenance"]["settings_hash"]


def test_jiio_meta_tables(smoke):
    """JIIO meta-learning on the smoke profile: every method of Table 6 trained and scored on the same held-out tasks,
    the trivial answers beside them, and Table 7's two inner loops with their work counts."""
    meta = yaml.safe_load((REPO / "params.yaml").read_text())["profiles"]["smoke"]["jiio_meta"]
    table6 = rows(smoke / "results/table6.csv")
    assert [r["method"] for r in table6] == ["maml", "reptile", "imaml", "jiio_deq", "chance", "pixel_1nn"]
    for r in table6:
        assert r["tasks"] == str(meta["eval"]["tasks"]) and "embedded stand-in for omniglot" in r["data_source"]
        assert 0.0 <= float(r["accuracy"]) <= 100.0
        assert bool(r["paper_accuracy"]) == (r["kind"] == "method")
    assert float(next(r for r in table6 if r["method"] == "chance")["accuracy"]) == 20.0
    table7 = rows(smoke / "results/table7.csv")
    assert [r["label"] for r in table7] == [f"Adam-{meta['timing']['adam_steps']}",
                                             f"JIIO-{meta['timing']['jiio_iterations']}"]
    jiio = table7[1]
    assert int(jiio["f_evals"]) == int(jiio["vjps"]) == meta["timing"]["jiio_iterations"]
    assert float(table7[0]["ratio_to_jiio"]) > 0 and table7[0]["paper_ms_per_batch"] == "28948.0"
    run = json.loads((smoke / "results/jiio_meta/smoke/jiio_deq.json").read_text())
    assert run["provenance"]["settings_hash"] and len(run["per_task"]) == meta["eval"]["tasks"]


def test_claims_ledger(smoke):
    ledger = rows(smoke / "results/claims.csv")
    by_id = {r["id"]: r for r in ledger}
    assert {"JIIO-T2", "JIIO-T5-ROBUST", "MOPT-1", "IMP2-1", "JIIO-T7", "JIIO-T6"} <= set(by_id)
    for row in ledger:
        verdict = row["verdict"]
        assert verdict.startswith(("holds", "does not hold", "not measured: ")), row
        if verdict.startswith(("holds", "does not hold")):
            assert "(reduced scale, stand-in data)" in verdict and row["our_value"] and row["evidence"]
    assert by_id["MOPT-9"]["verdict"].startswith("not measured: ImageNet: results/moptqs_table4.csv is built only on")
    assert by_id["MOPT-10"]["verdict"].startswith(("holds", "does not hold", "not measured: the adversarially"))
    assert by_id["MOPT-1"]["verdict"].startswith(("holds", "does not hold", "not measured: the MDEQ baseline near",
                                                  "not measured: MOptEqs near"))  # measured on every profile
    assert by_id["MOPT-16"]["verdict"].startswith(("holds", "does not hold"))
    assert by_id["JIIO-T1-RECON"]["verdict"].startswith("not measured: table1[model=JIIO-MDEQ].fid_reconstruction=n/a")
    assert by_id["JIIO-T2"]["verdict"].startswith(("holds", "does not hold"))  # Table 2 is measured on any profile
    for claim in ("IMP2-1", "IMP2-2", "IMP2-6", "IMP2-9", "IMP2-10", "IMP2-COST"):  # measured on every profile
        assert by_id[claim]["verdict"].startswith(("holds", "does not hold")), by_id[claim]
    assert by_id["IMP2-11"]["verdict"] == "not measured: no numbers in the sources"
    assert by_id["JIIO-T7-2X"]["verdict"].startswith(("holds", "does not hold"))  # Table 7 is measured on any profile
    assert json.loads((smoke / "results/metrics/claims.json").read_text())["holds"] >= 0


def test_second_run_and_report(smoke):
    again = snakemake(smoke, "--config", "profile=smoke", "-n")
    assert "Nothing to be done" in again.stdout + again.stderr
    report = snakemake(smoke, "--config", "profile=smoke", "--report", "results/report.html")
    assert report.returncode == 0, report.stderr[-3000:]
    html = (smoke / "results/report.html").read_text(errors="replace")
    for name in ("claims.html", "table5.html", "table5.csv", "figure3.png", "figure4.png", "Claims ledger"):
        assert name in html, name


def test_editing_a_setting_reruns_only_the_jobs_that_read_it(smoke, tmp_path):
    """Generative evaluation settings are not read by training or by the adversarial task."""
    override = tmp_path / "edit.yaml"
    override.write_text(yaml.safe_dump({"profiles": {"smoke": {"jiio_generative": {"eval": {"batch_size": 5}}}}}))
    plan = snakemake(smoke, "--config", "profile=smoke", "--configfile", str(override), "-n")
    out = plan.stdout + plan.stderr
    assert plan.returncode == 0, out[-3000:]
    assert "generative_cell" in out and "claims" in out
    for untouched in ("generative_train", "adversarial_train", "adversarial_evaluate", "generative_timing"):
        assert f"rule {untouched}:" not in out, untouched
    description = tmp_path / "description.yaml"  # read by no job at all
    description.write_text(yaml.safe_dump({"profiles": {"smoke": {"description": "edited"}}}))
    plan = snakemake(smoke, "--config", "profile=smoke", "--configfile", str(description), "-n")
    assert "Nothing to be done" in plan.stdout + plan.stderr


def test_overrides_reach_the_jobs(tmp_path):
    """A nested --configfile override and a nested --config override both change what the job computes."""
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    target = "data/checkpoints/smoke/mnist/clean_eps0/seed0.pt"
    override = tmp_path / "steps.yaml"
    override.write_text(yaml.safe_dump({"profiles": {"smoke": {"jiio_adversarial": {"train": {"max_steps": 2}}}}}))
    proc = snakemake(tmp_path, target, "--config", "profile=smoke", "--configfile", str(override))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert load_artifact(tmp_path / target)["summary"]["steps"] == 2
    proc = snakemake(tmp_path, target, "--config", "profile=smoke",
                     "profiles={smoke: {jiio_adversarial: {train: {max_steps: 1}}}}")
    assert proc.returncode == 0, proc.stderr[-3000:]  # the nested value arrives as '1' and is retyped
    assert load_artifact(tmp_path / target)["summary"]["steps"] == 1


def test_values_in_shell_commands_are_quoted(tmp_path):
    """A profile name with shell syntax ends up in paths and commands; it must never run as shell code."""
    marker = tmp_path / "MARKER"
    evil = f"x;touch {marker};y"
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["profiles"][evil] = {"inherits": "smoke", "description": "a profile name with shell syntax"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = snakemake(tmp_path, f"data/prepared/{evil}/mnist.pt", "--config", f"profile={evil}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not marker.exists()
    assert (tmp_path / "data/prepared" / evil / "mnist.pt").exists()


def test_timing_jobs_take_every_core_and_jobs_get_their_thread_count(tmp_path):
    """Timing rules reserve all of Snakemake's cores (nothing runs beside them); every job is told its threads."""
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    plan = snakemake(tmp_path, "results/timing/smoke/table2_timing.json", "results/generative/smoke/timing.json",
                     "--config", "profile=smoke", "-n", "-p", "--cores", "3")
    out = plan.stdout + plan.stderr
    assert plan.returncode == 0, out[-3000:]
    for rule in ("adversarial_timing", "generative_timing"):
        block = out.split(f"rule {rule}:", 1)[1].split("\n\n", 1)[0]
        assert "threads: 3" in block, block
    assert "OMP_NUM_THREADS=3" in out and "--threads 3" in out and "OMP_NUM_THREADS=1" in out


def test_bad_profile_fails_cleanly(tmp_path):
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    proc = snakemake(tmp_path, "results/table5.csv", "--config", "profile=papr")
    assert proc.returncode != 0
    assert "unknown profile 'papr'" in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()


def test_missing_dataset_message_reaches_the_console(tmp_path):
    """Offline, the paper profile's Omniglot job fails; the message naming the missing folder is on the console
    (profiles/default: show-failed-logs), the run exits non-zero and leaves no table."""
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    proc = snakemake(tmp_path, "results/table6.csv", "--config", "profile=paper")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and str(tmp_path / "data/raw/omniglot-py") in out, out[-3000:]
    assert not (tmp_path / "results/table6.csv").exists()


def test_dvc_yaml_lists_every_declared_table():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    declared: set[str] = set()
    for stage in stages.values():
        for section in ("outs", "metrics", "plots"):
            for entry in stage.get(section, []):
                declared.add(entry if isinstance(entry, str) else next(iter(entry)))
    for spec in all_tables().values():
        for path in spec.outputs().values():
            assert (path in declared) == (spec.needs is None), path  # tables needing absent data are not staged


def test_dvc_repro_tracks_the_pipeline(smoke, tmp_path):
    """`dvc repro` on a copy of the finished smoke run: its stages, metrics and plots are wired to the pipeline, a
    second `dvc repro` runs nothing (R4), and `dvc exp run -S` overrides a nested setting."""
    work = tmp_path / "repo"
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        src = REPO / name
        if src.is_file():
            dst = work / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    for produced in ("data", "results", ".snakemake", ".deqbench"):
        shutil.copytree(smoke / produced, work / produced, dirs_exist_ok=True, symlinks=True)
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["profile"] = "smoke"
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = _env()
    subprocess.run(["git", "init", "-q"], cwd=work, check=True, env=env)
    proc = subprocess.run([str(BIN / "dvc"), "repro"], cwd=work, capture_output=True, text=True, env=env, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert (work / "dvc.lock").exists()
    status = subprocess.run([str(BIN / "dvc"), "status"], cwd=work, capture_output=True, text=True, env=env)
    assert "up to date" in status.stdout.lower(), status.stdout + status.stderr
    again = subprocess.run([str(BIN / "dvc"), "repro"], cwd=work, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-4000:]
    assert "Running stage" not in again.stdout, again.stdout[-4000:]  # R4: a second repro does nothing
    metrics = subprocess.run([str(BIN / "dvc"), "metrics", "show", "--json"], cwd=work, capture_output=True,
                             text=True, env=env)
    assert metrics.returncode == 0 and "results/metrics/claims.json" in metrics.stdout, metrics.stderr[-2000:]
    plots = subprocess.run([str(BIN / "dvc"), "plots", "show", "-o", str(tmp_path / "plots")], cwd=work,
                           capture_output=True, text=True, env=env)
    assert plots.returncode == 0 and (tmp_path / "plots" / "index.html").exists(), plots.stderr[-2000:]
    # The documented DVC override path: `dvc exp run -S` edits a nested key of params.yaml and reruns; Snakemake
    # then recomputes only the jobs whose settings read it (here: the Table 2 timing job, then Table 2 and the
    # ledger; no training and no evaluation).
    git_env = {**env, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
               "GIT_COMMITTER_EMAIL": "t@t"}
    subprocess.run(["git", "add", "-A"], cwd=work, check=True, env=git_env, capture_output=True)
    subprocess.run(["git", "commit", "-q", "-m", "smoke"], cwd=work, check=True, env=git_env, capture_output=True)
    trained = {p: p.stat().st_mtime_ns for p in (work / "data/checkpoints").rglob("*.pt")}
    evaluated = {p: p.stat().st_mtime_ns for p in (work / "results/adversarial").rglob("*.json")}
    exp = subprocess.run([str(BIN / "dvc"), "exp", "run", "-S", "profiles.smoke.jiio_adversarial.timing.repeats=2"],
                         cwd=work, capture_output=True, text=True, env=git_env, timeout=1200)
    assert exp.returncode == 0, exp.stdout[-4000:] + exp.stderr[-4000:]
    assert yaml.safe_load((work / "params.yaml").read_text())["profiles"]["smoke"]["jiio_adversarial"]["timing"][
        "repeats"] == 2
    timing = json.loads((work / "results/timing/smoke/table2_timing.json").read_text())
    assert {row["repeats"] for row in timing["rows"]} == {2}
    assert evaluated == {p: p.stat().st_mtime_ns for p in (work / "results/adversarial").rglob("*.json")}
    assert trained == {p: p.stat().st_mtime_ns for p in (work / "data/checkpoints").rglob("*.pt")}
