# The claims ledger (deqbench/tasks/claims.yaml, evaluated by deqbench/experiments/claims.py): every quantitative
# claim of the three papers with our value, the paper's, the conditions and a verdict, from every declared table.
# `snakemake --report results/report.html` shows the tables, figures and this ledger.
from pathlib import Path

from deqbench.experiments.claims import CLAIMS_FILE
from deqbench.experiments.registry import all_tables

ALL_TABLES = all_tables()
# Tables that need a real dataset without a stand-in (spec.needs, e.g. ImageNet) are built only on request; the
# ledger reads them when they exist.
BUILT_TABLES = {name: spec for name, spec in ALL_TABLES.items() if spec.needs is None}
ON_REQUEST_TABLES = {name: spec for name, spec in ALL_TABLES.items() if spec.needs is not None}
GPU_CHECK_CSV = "results/gpu/gpu_check.csv"


rule claims:
    input:
        tables=[spec.outputs()["csv"] for spec in BUILT_TABLES.values()],
        provenance=[spec.outputs()["provenance"] for spec in BUILT_TABLES.values()],
        on_request=lambda wc: [ancient(spec.outputs()["csv"]) for spec in ON_REQUEST_TABLES.values()
                               if Path(spec.outputs()["csv"]).exists()],
        declarations=str(CLAIMS_FILE),
        # The last GPU check (bench/gpu_check.py), committed; a working directory without it evaluates those claims as
        # not measured.
        gpu_check=lambda wc: [ancient(GPU_CHECK_CSV)] if Path(GPU_CHECK_CSV).exists() else [],
    output:
        csv=report("results/claims.csv", caption=CAPTION, category="Claims ledger"),
        md="results/claims.md",
        html=report("results/claims.html", caption=CAPTION, category="Claims ledger"),
        provenance="results/claims.provenance.json",
        metrics="results/metrics/claims.json",
    params:
        caption="Every quantitative claim of the JIIO, MOptEqs and (Implicit)^2 papers: the paper's value, ours, "
        "the conditions it was measured under and the verdict.",
    log:
        f"logs/{P}/claims.log",
    localrule: True
    shell:
        "{PY:q} -m deqbench claims --claims {input.declarations:q} --results results --out {output.csv:q} > {log:q} 2>&1"
