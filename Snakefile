# deqbench: reproduce the JIIO paper's tables.  Thin entry point: parameters come from params.yaml (validated in
# pipelines/common.smk against deqbench/schemas/params.schema.yaml); the rules live in pipelines/.
#
#   snakemake --cores 4 results/table5.csv                        # embedded profile (offline, CPU)
#   snakemake --cores 4 results/table5.csv --config profile=paper # paper scale (GPU, torchvision data)
#   snakemake --cores 4 results/table1.csv results/table3.csv results/table4.csv   # generative (section 4.1-4.2)

from snakemake.utils import min_version

min_version("8.0")


configfile: "params.yaml"


include: "pipelines/common.smk"
include: "pipelines/data.smk"
include: "pipelines/adversarial.smk"
include: "pipelines/generative.smk"


rule all:
    default_target: True
    input:
        "results/table2.csv",
        "results/table5.csv",
        "results/table8.csv",
        "results/table1.csv",
        "results/table3.csv",
        "results/table4.csv",
        "results/memory.csv",
        "results/figure3.png",
