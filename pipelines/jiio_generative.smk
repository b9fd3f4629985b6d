# JIIO paper sections 4.1-4.2, appendices A.2 and C: generative modelling and inverse problems, Tables 1, 3, 4,
# Figures 3 and 4 and the memory comparison.  Task: deqbench/tasks/jiio_generative (models and rows declared in settings.py / tables.py);
# params: the jiio_generative block.  One rule trains every (model, problem) pair; each table cell is one job.
# The generative experiments use the profile's first seed (the paper reports single runs).
import re
import shlex
from pathlib import Path

from deqbench.tasks.jiio_generative import TASK as GEN_TASK
from deqbench.tasks.jiio_generative.settings import MODELS as GEN_MODELS, RECONSTRUCT
from deqbench.tasks.jiio_generative.tables import DENSITY_MODELS, ROWS as GEN_ROWS, row_of

GEN = PIPE.settings["jiio_generative"].params
GSEED = PIPE.info.seeds[0]
GPROBLEMS = list(GEN.problems)
GDIR = f"data/generative/{P}/checkpoints"
GDATA = f"data/generative/{P}/faces.pt"
GRES = f"results/generative/{P}"
PROBLEM_PATTERN = "|".join(re.escape(p) for p in [RECONSTRUCT, *GPROBLEMS])


def gen_checkpoint(model, problem):
    return f"{GDIR}/{model}_{problem}/seed{GSEED}.pt"


def gen_cell(table, row, problem):
    return f"{GRES}/{table}/{row}_{problem}.json"


def gen_table_inputs(table):
    if table == "table1":
        return [gen_cell("table1", r.key, RECONSTRUCT) for r in GEN_ROWS["table1"]]
    if table == "table4":
        return [gen_cell("table4", r.key, p) for r in GEN_ROWS["table4"] for p in GPROBLEMS]
    if table == "figure4":
        return [f"{GRES}/acceleration.json"]
    return [f"{GRES}/timing.json"]


rule generative_prepare:
    output:
        GDATA,
    params:
        settings=PIPE.job_hash("jiio_generative", "prepare"),
    log:
        f"logs/{P}/prepare_faces.log",
    threads: 1
    resources:
        **job_resources("prepare"),
    shell:
        DEQBENCH + " jiio_generative prepare --out {output:q} > {log:q} 2>&1"


rule generative_train:
    input:
        data=GDATA,
    output:
        f"{GDIR}/{{gmodel}}_{{problem}}/seed{{seed}}.pt",
    wildcard_constraints:
        gmodel="|".join(GEN_MODELS),
        problem=PROBLEM_PATTERN,
        seed=r"[0-9]+",
    params:
        settings=lambda wc: PIPE.job_hash("jiio_generative", "train", model=wc.gmodel, problem=wc.problem),
        partial=lambda wc: f"{GDIR}/.partial/{wc.gmodel}_{wc.problem}_seed{wc.seed}.pt",
    log:
        f"logs/{P}/train_generative_{{gmodel}}_{{problem}}_seed{{seed}}.log",
    # The JIIO models are the longest jobs and the reconstruction ones head the critical path (timing, density,
    # Table 1): start them first.
    priority: lambda wc: (2 if wc.problem == RECONSTRUCT else 1) if GEN_MODELS[wc.gmodel].family == "jiio" else 0
    threads: JOB_THREADS
    resources:
        **job_resources("train"),
    shell:
        DEQBENCH + " jiio_generative train --data {input.data:q} --model {wildcards.gmodel:q} "
        "--problem {wildcards.problem:q} --seed {wildcards.seed:q} --out {output:q} --partial {params.partial:q} "
        "> {log:q} 2>&1"


rule generative_density:
    input:
        data=GDATA,
        checkpoint=lambda wc: gen_checkpoint(wc.gmodel, RECONSTRUCT),
    output:
        f"{GDIR}/density/{{gmodel}}.pt",
    wildcard_constraints:
        gmodel="|".join(DENSITY_MODELS),
    params:
        settings=lambda wc: PIPE.job_hash("jiio_generative", "density", model=wc.gmodel),
    log:
        f"logs/{P}/density_{{gmodel}}.log",
    threads: JOB_THREADS
    resources:
        **job_resources("evaluate"),
    shell:
        DEQBENCH + " jiio_generative density --data {input.data:q} --model {wildcards.gmodel:q} "
        "--checkpoint {input.checkpoint:q} --out {output:q} > {log:q} 2>&1"


def _cell_row(wc):
    return row_of(wc.gtable, wc.row)


rule generative_cell:
    input:
        data=GDATA,
        checkpoint=lambda wc: [gen_checkpoint(*c)] if (c := _cell_row(wc).checkpoint(wc.problem)) else [],
        density=lambda wc: [f"{GDIR}/density/{_cell_row(wc).model}.pt"] if _cell_row(wc).sampling == "density" else [],
        # FID weights (data/weights/README.md): adding the file reruns the Table 1 jobs.
        weights=lambda wc: ["data/weights"] if wc.gtable == "table1" and Path("data/weights").is_dir() else [],
    output:
        f"{GRES}/{{gtable}}/{{row}}_{{problem}}.json",
    wildcard_constraints:
        gtable="table1|table4",
        row="|".join(r.key for rows in GEN_ROWS.values() for r in rows),
        problem=PROBLEM_PATTERN,
    params:
        settings=lambda wc: PIPE.job_hash("jiio_generative", "cell", table=wc.gtable, row=wc.row, problem=wc.problem),
        density=lambda wc, input: f"--density {shlex.quote(input.density[0])}" if input.density else "",  # quoted
        checkpoint=lambda wc, input: f"--checkpoint {shlex.quote(input.checkpoint[0])}" if input.checkpoint else "",
    log:
        f"logs/{P}/{{gtable}}_{{row}}_{{problem}}.log",
    threads: JOB_THREADS
    resources:
        **job_resources("evaluate"),
    shell:
        DEQBENCH + " jiio_generative cell --data {input.data:q} --table {wildcards.gtable:q} --row {wildcards.row:q} "
        "--problem {wildcards.problem:q} {params.checkpoint} {params.density} --out {output:q} "
        "> {log:q} 2>&1"


rule generative_timing:
    input:
        data=GDATA,
        checkpoint=gen_checkpoint("jiio40", RECONSTRUCT),
        checkpoint100=gen_checkpoint("jiio100", RECONSTRUCT),
    output:
        f"{GRES}/timing.json",
    params:
        settings=PIPE.job_hash("jiio_generative", "timing"),
    log:
        f"logs/{P}/generative_timing.log",
    # Timing runs alone: it takes every core Snakemake has, so no other job runs beside it.
    threads: lambda wildcards: workflow.cores
    resources:
        **job_resources("alone"),
    shell:
        DEQBENCH + " jiio_generative timing --data {input.data:q} --checkpoint {input.checkpoint:q} "
        "--checkpoint100 {input.checkpoint100:q} --out {output:q} > {log:q} 2>&1"


rule generative_acceleration:
    # Figure 4 (appendix A.2): Broyden vs Anderson Type-I / Type-II inside JIIO on the pre-trained MDEQ-VAE decoder.
    input:
        data=GDATA,
        checkpoint=gen_checkpoint("mdeq_vae", RECONSTRUCT),
    output:
        f"{GRES}/acceleration.json",
    params:
        settings=PIPE.job_hash("jiio_generative", "acceleration"),
    log:
        f"logs/{P}/generative_acceleration.log",
    threads: JOB_THREADS
    resources:
        **job_resources("evaluate"),
    shell:
        DEQBENCH + " jiio_generative acceleration --data {input.data:q} --checkpoint {input.checkpoint:q} "
        "--out {output:q} > {log:q} 2>&1"


for gen_spec in GEN_TASK.tables:

    rule:
        name:
            f"generative_{gen_spec.name}"
        input:
            gen_table_inputs(gen_spec.name),
        output:
            **table_outputs(gen_spec),
        params:
            settings=PIPE.table_hash("jiio_generative", gen_spec.name),
            caption=table_caption(gen_spec),
            name=gen_spec.name,
        log:
            f"logs/{P}/{gen_spec.name}.log",
        localrule: True
        shell:
            DEQBENCH + " jiio_generative table {params.name:q} {input:q} --out {output.csv:q} > {log:q} 2>&1"
