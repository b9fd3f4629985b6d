# Shared helpers: the resolved profile, paths and wildcard constraints.
import sys

from deqbench.config import ConfigError, config_hash, resolve_profile

try:
    PROFILE = resolve_profile(config)
except ConfigError as err:
    raise ValueError(f"params.yaml / --config: {err}") from None

P = PROFILE["name"]
PY = sys.executable  # the interpreter running Snakemake, i.e. the project's environment
METHODS = ["clean", "pgd", "jio"]
USES_GPU = 0 if PROFILE["device"] == "cpu" else 1


wildcard_constraints:
    dataset="mnist|cifar10",
    method="clean|pgd|jio",
    eps=r"[0-9]+(\.[0-9]+)?",
    train_eps=r"[0-9]+(\.[0-9]+)?",
    seed=r"[0-9]+",


def eps_tag(eps):
    return f"{float(eps):g}"


def prepared(dataset):
    return f"data/prepared/{P}/{dataset}.pt"


def checkpoint(dataset, method, eps, seed):
    return f"data/checkpoints/{P}/{dataset}/{method}_eps{eps_tag(eps)}/seed{seed}.pt"


def evaluation(dataset, method, train_eps, seed, eps):
    return f"results/adversarial/{P}/{dataset}/{method}_eps{eps_tag(train_eps)}/seed{seed}_test-eps{eps_tag(eps)}.json"


def experiment_evaluations(table):
    """Every evaluation a table needs: datasets x training methods x seeds, at the table's eps."""
    spec = PROFILE["experiments"][table]
    eps = spec["eps"]
    return [
        evaluation(ds, m, 0 if m == "clean" else eps, seed, eps)
        for ds in spec["datasets"]
        for m in METHODS
        for seed in PROFILE["seeds"]
    ]
