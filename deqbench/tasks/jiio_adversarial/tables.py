"""Tables 2, 5 and 8 of the JIIO paper as deqbench reproduces them, with the paper's printed values as reference."""

from __future__ import annotations

import statistics
from typing import Any, Sequence

from deqbench.data import DATASETS
from deqbench.experiments.config import ConfigError
from deqbench.experiments.runtime import device_name
from deqbench.experiments.tables import Column, TableRows, TableSpec, measured_on, read_results
from deqbench.tasks.jiio_adversarial.settings import METHODS, TableJob

TASK = "jiio_adversarial"
PAPER = "jiio"

# JIIO paper (Gurumurthy et al., NeurIPS 2021), accuracy mean and std over seeds; rows train / columns test.
PAPER_TABLE5 = {
    "mnist": {"clean": {"clean": (99.45, 0.03), "pgd": (80.1, 1.87), "jio": (65.88, 4.72)},
              "pgd": {"clean": (99.18, 0.03), "pgd": (96.53, 0.05), "jio": (95.74, 0.04)},
              "jio": {"clean": (99.32, 0.09), "pgd": (95.74, 0.22), "jio": (96.63, 0.58)}},
    "cifar10": {"clean": {"clean": (78.47, 0.94), "pgd": (2.38, 0.41), "jio": (3.71, 4.01)},
                "pgd": {"clean": (54.91, 1.01), "pgd": (37.4, 0.26), "jio": (36.17, 0.55)},
                "jio": {"clean": (55.54, 0.82), "pgd": (37.31, 0.67), "jio": (37.77, 0.84)}},
}
PAPER_TABLE8 = {  # CIFAR-10, eps = 0.5 (appendix B.2)
    "cifar10": {"clean": {"clean": (78.47, 0.94), "pgd": (4.54, 1.33), "jio": (4.85, 2.93)},
                "pgd": {"clean": (68.48, 0.81), "pgd": (51.77, 0.75), "jio": (50.14, 0.74)},
                "jio": {"clean": (67.79, 2.33), "pgd": (51.39, 0.56), "jio": (51.25, 0.66)}},
}
PAPER_TABLE2_MS = {"pgd": 4360.0, "jio": 1401.0}  # one MNIST adversarial example, RTX 2080 Ti
# Appendix C.5: adversarial training wall clock (hours, midpoints of the printed ranges): MNIST on 2 RTX 2080 Ti,
# CIFAR-10 on 3; PGD-trained 13-14 / 20-21 h, JIO-trained 5-6 / 9-10 h.
PAPER_TRAIN_HOURS = {"mnist": {"pgd": 13.5, "jio": 5.5}, "cifar10": {"pgd": 20.5, "jio": 9.5}}
PAPER_MEMORY_GB = {"pgd": 2.15, "jio": 2.19}  # appendix C.6: one attack, CIFAR-10, batch 96


def dataset_label(dataset: str) -> str:
    """The table's name for a dataset key: the registry's label for real datasets (MNIST, CIFAR-10)."""
    return DATASETS[dataset].display_name() if dataset in DATASETS else dataset


def _settings(table: str):
    return lambda settings: settings.table(table)


# ----------------------------------------------------------------------------- Tables 5 and 8


ROBUSTNESS_COLUMNS = (
    Column("dataset"), Column("eps", "eps (L2)"), Column("eps_used", "eps used on this data (L2)"),
    Column("train_method", "train"), Column("training", "how it was trained"),
    Column("inner_iterations", "attack iterations inside training"), Column("test_method", "test"),
    Column("accuracy_mean", "accuracy", "%"), Column("accuracy_std", "std over seeds", "%"),
    Column("n_seeds", "seeds"), Column("n_test", "test images"),
    Column("train_seconds_mean", "training wall clock", "s"),
    Column("paper_value", "accuracy", "%", reference_for="accuracy_mean"),
    Column("paper_std", "std", "%", reference_for="accuracy_std"),
    Column("paper_train_hours", "training wall clock", "h", reference_for="train_seconds_mean"),
    Column("profile"), Column("data_source", "data"),
)


def _robustness_builder(reference: dict[str, Any]):
    def build(job: TableJob, files: Sequence[str]) -> TableRows:
        """Rows (dataset, train method, test method): mean and sample std over seeds."""
        cells: dict[tuple[str, str, str], list[float]] = {}
        sources: dict[str, str] = {}
        n_test: dict[str, int] = {}
        eps_used: dict[str, set[float]] = {}
        attacks: dict[str, set[str]] = {}
        recipes: dict[tuple[str, str], set[str]] = {}
        train_seconds: dict[tuple[str, str], list[float]] = {}
        inner: dict[tuple[str, str], set[Any]] = {}
        results = read_results(files)
        for r in results:
            train = r["train"]
            if abs(r["eps"] - job.eps) > 1e-12:
                raise ConfigError(f"{r['_file']}: evaluated at eps={r['eps']}, but {job.table} uses eps={job.eps}")
            sources[train["dataset"]], n_test[train["dataset"]] = r["data_source"], r["n_test"]
            eps_used.setdefault(train["dataset"], set()).add(round(r.get("eps_used", r["eps"]), 6))
            attacks.setdefault(train["dataset"], set()).add(r.get("test_attacks", "not recorded"))
            recipes.setdefault((train["dataset"], train["method"]), set()).add(training_recipe(train))
            inner.setdefault((train["dataset"], train["method"]), set()).add(train.get("inner_iterations"))
            if "train_seconds" in train:
                train_seconds.setdefault((train["dataset"], train["method"]), []).append(train["train_seconds"])
            for test_method, acc in r["accuracy"].items():
                cells.setdefault((train["dataset"], train["method"], test_method), []).append(acc)
        rows = []
        for dataset in job.datasets:
            for train_method in METHODS:
                for test_method in METHODS:
                    values = cells.get((dataset, train_method, test_method))
                    if not values:
                        raise ConfigError(f"{job.table}: no evaluation for dataset={dataset} train={train_method} "
                                          f"test={test_method}")
                    paper = reference.get(dataset, {}).get(train_method, {}).get(test_method)
                    seconds = train_seconds.get((dataset, train_method))
                    rows.append({"dataset": dataset_label(dataset), "eps": job.eps,
                                 "eps_used": _one(eps_used[dataset], f"{job.table} {dataset}: eps_used"),
                                 "train_method": train_method,
                                 "training": _one(recipes[(dataset, train_method)], f"{job.table} {dataset} "
                                                  f"{train_method}: training recipe"),
                                 "inner_iterations": _one(inner[(dataset, train_method)], f"{job.table} {dataset} "
                                                          f"{train_method}: inner attack iterations"),
                                 "test_method": test_method, "accuracy_mean": statistics.fmean(values),
                                 "accuracy_std": statistics.stdev(values) if len(values) > 1 else float("nan"),
                                 "n_seeds": len(values), "n_test": n_test[dataset],
                                 "train_seconds_mean": statistics.fmean(seconds) if seconds else None,
                                 "paper_value": paper[0] if paper else None, "paper_std": paper[1] if paper else None,
                                 "paper_train_hours": PAPER_TRAIN_HOURS.get(dataset, {}).get(train_method),
                                 "profile": job.profile, "data_source": sources[dataset]})
        seeds = sorted({r["train"]["seed"] for r in results})
        used = ", ".join(f"{_one(eps_used[d], d):.3g} on {sources[d]}" for d in job.datasets)
        tested = "; ".join(f"{_one(attacks[d], f'{job.table} {d}: test attacks')} on {sources[d]}"
                           for d in job.datasets)
        return TableRows(rows, {"eps": job.eps, "seeds": seeds, "profile": job.profile, "eps_used": used,
                                "attacks": tested},
                         {"seeds": seeds, "eval_files": sorted(files), "measured_on": measured_on(results)})

    return build


def training_recipe(train: dict[str, Any]) -> str:
    """How a model was trained, for the table: inner attack, steps, warm start (from its training summary)."""
    inner = train.get("inner_attack") or "no attack"
    text = f"{train['method']}: {inner} inside, {train.get('steps', '?')} steps"
    if train.get("warm_start"):
        text += " fine-tuning the clean model of the same seed"
    return text


def _one(values: set[Any], what: str) -> Any:
    if len(values) != 1:
        raise ConfigError(f"{what} differs between the evaluations read: {sorted(values)}")
    return next(iter(values))


def _robustness_metrics(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {f"{r['dataset']}/{r['train_method']}-trained/{r['test_method']}": r["accuracy_mean"] for r in rows}


ROBUSTNESS_CAPTION = ("Accuracy (%) of MDEQ classifiers under L2 attacks of radius {eps:g} (radius actually used: "
                      "{eps_used}; on stand-ins eps is scaled by the ratio of RMS image norms): rows are the training "
                      "method (clean, PGD or JIO adversarial training), columns the attack at test time (none, PGD, "
                      "JIO; test attacks: {attacks}); mean and sample std over seeds {seeds}; profile `{profile}`. "
                      "The training wall clock "
                      "(appendix C.5) is the mean over seeds of each model's own training; a model that fine-tunes "
                      "the clean one (see `how it was trained`) does not include the clean model's time.")

TABLE5 = TableSpec("table5", TASK, PAPER, "JIIO paper, Table 5 (MNIST and CIFAR-10, eps = 1)",
                   "Table 5: L2 adversarial training", ROBUSTNESS_CAPTION, ROBUSTNESS_COLUMNS, _settings("table5"),
                   _robustness_builder(PAPER_TABLE5), _robustness_metrics)
TABLE8 = TableSpec("table8", TASK, PAPER, "JIIO paper, Table 8 (CIFAR-10, eps = 0.5)",
                   "Table 8: L2 adversarial training, CIFAR-10", ROBUSTNESS_CAPTION, ROBUSTNESS_COLUMNS,
                   _settings("table8"), _robustness_builder(PAPER_TABLE8), _robustness_metrics)


# ----------------------------------------------------------------------------- Table 2


def _build_table2(job: TableJob, files: Sequence[str]) -> TableRows:
    (result,) = read_results(files)
    device = device_name(result["provenance"]["device"])
    rows = []
    for row in result["rows"]:
        one = row["batch_size"] == 1  # the paper times one example
        rows.append({**row, "paper_value_ms": PAPER_TABLE2_MS[row["method"]] if one else None,
                     "paper_ratio": PAPER_TABLE2_MS["pgd"] / PAPER_TABLE2_MS["jio"] if one else None,
                     "device": device, "profile": job.profile, "data_source": result["data_source"]})
    return TableRows(rows, {"profile": job.profile, "device": device},
                     {"timing_file": files[0], "measured_on": [result["provenance"]["device"]], "seeds": [0]})


def _table2_metrics(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for r in rows:
        level = r.get("engineering", "eager")
        out[f"{level}/batch{r['batch_size']}/{r['method']}{r['iterations']}_ms_per_example"] = r["ms_per_example"]
        out[f"{level}/batch{r['batch_size']}/pgd_over_jio"] = r["pgd_over_jio"]
    return out


TABLE2 = TableSpec(
    "table2", TASK, PAPER, "JIIO paper, Table 2 (MNIST, RTX 2080 Ti, one example)",
    "Table 2: time to compute an adversarial example",
    "Time to compute an L2 adversarial example of an MDEQ, PGD vs JIO, timed side by side in one process with "
    "device synchronisation on {device}; profile `{profile}`. Both methods run at each engineering level (eager; "
    "CUDA-graphed where CUDA is present) with the stem injection computed once per distinct input; graphed, each "
    "method captures each kind of solve once per call and replays it (PGD: forward and adjoint, reused over its "
    "steps; JIO: its one solve). The f / VJP counts are per call, from the settings. The paper's values are for one "
    "example (batch 1).",
    (Column("method"), Column("iterations"), Column("engineering"), Column("batch_size", "batch"),
     Column("f_evals", "f evaluations (nominal)"), Column("vjps", "VJPs (nominal)"),
     Column("injections", "stem injections (nominal)"), Column("graph_captures", "CUDA graphs captured per call"),
     Column("ms_per_example", "time", "ms/example"),
     Column("ms_per_call", "time", "ms/call"), Column("pgd_over_jio", "PGD / JIO"),
     Column("paper_value_ms", "time", "ms/example", reference_for="ms_per_example"),
     Column("paper_ratio", "PGD / JIO", reference_for="pgd_over_jio"),
     Column("device"), Column("profile"), Column("data_source", "data")),
    _settings("table2"), _build_table2, _table2_metrics,
)

# ----------------------------------------------------------------------------- appendix C.6 memory


def _build_memory(job: TableJob, files: Sequence[str]) -> TableRows:
    (result,) = read_results(files)
    device = device_name(result["provenance"]["device"])
    peak = {r["method"]: r["peak_bytes"] for r in result["rows"]}
    ratio = peak["jio"] / max(peak["pgd"], 1)
    rows = [{"method": r["method"], "iterations": r["iterations"], "batch_size": r["batch_size"],
             "eps_used": r["eps_used"], "peak_gib": r["peak_gib"], "jio_over_pgd": ratio, "measure": r["measure"],
             "paper_gb": PAPER_MEMORY_GB[r["method"]], "paper_ratio": PAPER_MEMORY_GB["jio"] / PAPER_MEMORY_GB["pgd"],
             "device": device, "profile": job.profile, "data_source": result["data_source"]} for r in result["rows"]]
    return TableRows(rows, {"profile": job.profile, "device": device, "dataset": dataset_label(job.datasets[0])},
                     {"memory_file": files[0], "measured_on": [result["provenance"]["device"]], "seeds": [0]})


MEMORY_ADVERSARIAL = TableSpec(
    "memory_adversarial", TASK, PAPER, "JIIO paper, appendix C.6 (CIFAR-10, batch 96, GPU)",
    "Memory: JIO vs PGD attacks",
    "Peak working memory of one adversarial attack on an MDEQ classifier ({dataset} setting), JIO vs PGD at the "
    "test iteration counts (appendix C.6; the generative JIIO vs Adam comparison is `memory`); `measure` says what "
    "was measured (CUDA peak allocation, or peak RSS of a CPU child process) on {device}; profile `{profile}`.",
    (Column("method"), Column("iterations"), Column("batch_size", "batch"), Column("peak_gib", "peak memory", "GiB"),
     Column("jio_over_pgd", "JIO / PGD"), Column("measure"),
     Column("paper_gb", "memory", "GB", reference_for="peak_gib"),
     Column("paper_ratio", "JIO / PGD", reference_for="jio_over_pgd"),
     Column("device"), Column("profile"), Column("data_source", "data")),
    _settings("memory_adversarial"), _build_memory,
    lambda rows: {"jio_over_pgd": rows[0]["jio_over_pgd"], **{f"{r['method']}_peak_gib": r["peak_gib"] for r in rows}},
)

TABLES = (TABLE2, TABLE5, TABLE8, MEMORY_ADVERSARIAL)
