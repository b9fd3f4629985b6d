# MOptEqs (Li, Wang, Xie, Lin, ICLR 2022): Tables 1(a) and 3, Figure 4.
# Task: deqbench/tasks/moptqs (settings, stages, table declarations); params: the moptqs block.
# One rule trains every (dataset, model, seed) of moptqs.models; a model shared by two tables is trained once.
# Resumable partial checkpoints live in data/moptqs/<profile>/.partial, outside the declared outputs.
from deqbench.tasks.moptqs import TASK as MOPT_TASK

MOPT = PIPE.settings["moptqs"].params
MOPT_DATASETS = "|".join(MOPT.datasets)
MOPT_MODELS = "|".join(MOPT.models)


def mopt_prepared(dataset):
    return f"data/moptqs/{P}/prepared/{dataset}.pt"


def mopt_checkpoint(dataset, model, seed):
    return f"data/moptqs/{P}/checkpoints/{dataset}/{model}/seed{seed}.pt"


def mopt_evaluation(dataset, model, seed):
    return f"results/moptqs/{P}/{dataset}/{model}/seed{seed}.json"


def mopt_table_inputs(table):
    """Every evaluation a table needs (its models x the profile's seeds), or Figure 4's trace."""
    if table == "moptqs_figure4":
        return [f"results/moptqs/{P}/figure4_trace.json"]
    spec = MOPT.tables[table]
    return [mopt_evaluation(spec.dataset, m, seed) for m in spec.models for seed in PIPE.info.seeds]


rule moptqs_prepare:
    output:
        f"data/moptqs/{P}/prepared/{{dataset}}.pt",
    wildcard_constraints:
        dataset=MOPT_DATASETS,
    params:
        settings=lambda wc: PIPE.job_hash("moptqs", "prepare", dataset=wc.dataset),
    log:
        f"logs/{P}/moptqs_prepare_{{dataset}}.log",
    threads: 1
    resources:
        mem_mb=4000,
    shell:
        DEQBENCH + " moptqs prepare --dataset {wildcards.dataset:q} --out {output:q} > {log:q} 2>&1"


rule moptqs_train:
    input:
        data=lambda wc: mopt_prepared(wc.dataset),
    output:
        f"data/moptqs/{P}/checkpoints/{{dataset}}/{{model}}/seed{{seed}}.pt",
    wildcard_constraints:
        dataset=MOPT_DATASETS,
        model=MOPT_MODELS,
        seed=r"[0-9]+",
    params:
        settings=lambda wc: PIPE.job_hash("moptqs", "train", dataset=wc.dataset, model=wc.model),
        partial=lambda wc: f"data/moptqs/{P}/.partial/{wc.dataset}_{wc.model}_seed{wc.seed}.pt",
    log:
        f"logs/{P}/moptqs_train_{{dataset}}_{{model}}_seed{{seed}}.log",
    threads: JOB_THREADS
    resources:
        gpu=GPU,
        mem_mb=6000,
    shell:
        DEQBENCH + " moptqs train --data {input.data:q} --dataset {wildcards.dataset:q} --model {wildcards.model:q} "
        "--seed {wildcards.seed:q} --out {output:q} --partial {params.partial:q} > {log:q} 2>&1"


rule moptqs_evaluate:
    input:
        data=lambda wc: mopt_prepared(wc.dataset),
        checkpoint=lambda wc: mopt_checkpoint(wc.dataset, wc.model, wc.seed),
    output:
        f"results/moptqs/{P}/{{dataset}}/{{model}}/seed{{seed}}.json",
    wildcard_constraints:
        dataset=MOPT_DATASETS,
        model=MOPT_MODELS,
        seed=r"[0-9]+",
    params:
        settings=lambda wc: PIPE.job_hash("moptqs", "evaluate", dataset=wc.dataset, model=wc.model),
    log:
        f"logs/{P}/moptqs_evaluate_{{dataset}}_{{model}}_seed{{seed}}.log",
    threads: JOB_THREADS
    resources:
        gpu=GPU,
        mem_mb=4000,
    shell:
        DEQBENCH + " moptqs evaluate --data {input.data:q} --dataset {wildcards.dataset:q} --model {wildcards.model:q} "
        "--checkpoint {input.checkpoint:q} --out {output:q} > {log:q} 2>&1"


rule moptqs_convergence:
    input:
        data=mopt_prepared(MOPT.convergence.dataset),
        checkpoints=[mopt_checkpoint(MOPT.convergence.dataset, m, MOPT.convergence.seed) for m in MOPT.convergence.models],
    output:
        f"results/moptqs/{P}/figure4_trace.json",
    params:
        settings=PIPE.job_hash("moptqs", "convergence"),
    log:
        f"logs/{P}/moptqs_convergence.log",
    threads: JOB_THREADS
    resources:
        gpu=GPU,
    shell:
        DEQBENCH + " moptqs convergence --data {input.data:q} --checkpoints {input.checkpoints:q} --out {output:q} "
        "> {log:q} 2>&1"


for mopt_spec in MOPT_TASK.tables:

    rule:
        name:
            f"moptqs_{mopt_spec.name.removeprefix('moptqs_')}"
        input:
            mopt_table_inputs(mopt_spec.name),
        output:
            **table_outputs(mopt_spec),
        params:
            settings=PIPE.table_hash("moptqs", mopt_spec.name),
            caption=table_caption(mopt_spec),
            name=mopt_spec.name,
        log:
            f"logs/{P}/{mopt_spec.name}.log",
        localrule: True
        shell:
            DEQBENCH + " moptqs table {params.name:q} {input:q} --out {output.csv:q} > {log:q} 2>&1"
