# deqbench: reproduce the papers' tables and check their claims.  Thin entry point: parameters come from params.yaml
# (resolved and validated in pipelines/common.smk); the rules live in pipelines/, one file per paper experiment.
#
#   snakemake --cores 4 results/table5.csv                        # embedded profile (offline, CPU)
#   snakemake --cores 4 results/table5.csv --config profile=paper # paper scale (GPU, torchvision data)
#   snakemake --cores 4 results/claims.csv                        # every table, then the claims ledger
#   snakemake --report results/report.html                        # tables, figures and the ledger in one page

from snakemake.utils import min_version

min_version("8.0")


configfile: "params.yaml"


include: "pipelines/common.smk"
include: "pipelines/jiio_adversarial.smk"
include: "pipelines/jiio_generative.smk"
include: "pipelines/moptqs.smk"
include: "pipelines/implicit2.smk"
include: "pipelines/jiio_meta.smk"
include: "pipelines/claims.smk"


rule all:
    default_target: True
    input:
        [spec.outputs()["csv"] for spec in BUILT_TABLES.values()],
        [spec.outputs()["png"] for spec in BUILT_TABLES.values() if "png" in spec.outputs()],
        "results/claims.csv",
