# JIIO meta-learning (JIIO paper section 4.4, appendix B.1): Table 6 (5-way 1-shot accuracy of JIIO-DEQ, MAML,
# Reptile and iMAML, all trained here) and Table 7 (inner-loop time, Adam on the task vector vs JIIO).
# Task: deqbench/tasks/jiio_meta (settings, stages, tables); params: the jiio_meta block.
# One job per method meta-trains and then scores it on the held-out tasks; the timing job reads the trained JIIO-DEQ
# and runs alone (every core Snakemake has), so nothing else runs beside the measurement.
from deqbench.tasks.jiio_meta import TASK as META_TASK

META = PIPE.settings["jiio_meta"].params
META_DIR = f"results/jiio_meta/{P}"
META_CKPT = f"data/jiio_meta/{P}/checkpoints"


def meta_table_inputs(table):
    """Every per-job result a table reads."""
    if table == "table6":
        return [f"{META_DIR}/{m}.json" for m in META.methods] + [f"{META_DIR}/trivial.json"]
    return [f"{META_DIR}/timing.json"]


rule jiio_meta_train:
    """Meta-train one method, then evaluate it on the held-out tasks (one process)."""
    output:
        checkpoint=f"{META_CKPT}/{{method}}.pt",
        evaluation=f"{META_DIR}/{{method}}.json",
    wildcard_constraints:
        method="|".join(META.methods),
    params:
        settings=lambda wc: PIPE.job_hash("jiio_meta", "train", method=wc.method),
        partial=lambda wc: f"data/jiio_meta/{P}/.partial/{wc.method}.pt",
    log:
        f"logs/{P}/jiio_meta_train_{{method}}.log",
    priority: lambda wc: 1 if wc.method == "jiio_deq" else 0  # the longest job first
    threads: JOB_THREADS
    resources:
        **job_resources("train", mem_mb=3000),
    shell:
        DEQBENCH + " jiio_meta train --method {wildcards.method:q} --checkpoint {output.checkpoint:q} "
        "--partial {params.partial:q} --out {output.evaluation:q} > {log:q} 2>&1"


rule jiio_meta_trivial:
    output:
        f"{META_DIR}/trivial.json",
    params:
        settings=PIPE.job_hash("jiio_meta", "trivial"),
    log:
        f"logs/{P}/jiio_meta_trivial.log",
    threads: 1
    resources:
        **job_resources("cpu"),
    shell:
        DEQBENCH + " jiio_meta trivial --out {output:q} > {log:q} 2>&1"


rule jiio_meta_timing:
    input:
        checkpoint=f"{META_CKPT}/jiio_deq.pt",
    output:
        f"{META_DIR}/timing.json",
    params:
        settings=PIPE.job_hash("jiio_meta", "timing"),
    log:
        f"logs/{P}/jiio_meta_timing.log",
    # Timing runs alone: it takes every core Snakemake has, so no other job runs beside it.
    threads: lambda wildcards: workflow.cores
    resources:
        **job_resources("alone"),
    shell:
        DEQBENCH + " jiio_meta timing --checkpoint {input.checkpoint:q} --out {output:q} > {log:q} 2>&1"


for meta_spec in META_TASK.tables:

    rule:
        name:
            f"jiio_meta_{meta_spec.name}"
        input:
            meta_table_inputs(meta_spec.name),
        output:
            **table_outputs(meta_spec),
        params:
            settings=PIPE.table_hash("jiio_meta", meta_spec.name),
            caption=table_caption(meta_spec),
            name=meta_spec.name,
        log:
            f"logs/{P}/{meta_spec.name}.log",
        localrule: True
        shell:
            DEQBENCH + " jiio_meta table {params.name:q} {input:q} --out {output.csv:q} > {log:q} 2>&1"
