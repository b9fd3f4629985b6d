# MOptEqs (Li, Wang, Xie, Lin, ICLR 2022): Tables 1(a), 1(b), 2-6, Figures 2, 3(a)-(c) and 4.
# Task: deqbench/tasks/moptqs (settings, stages, table declarations); params: the moptqs block.
# One rule trains and evaluates every (dataset, model, seed) of moptqs.models / .baselines (one job, one process start-up);
# a model shared by two tables is trained once.
# Resumable partial checkpoints live in data/moptqs/<profile>/.partial, outside the declared outputs.
# Table 4 (ImageNet) has no stand-in: `snakemake results/moptqs_table4.csv` builds it from the real files only.
from deqbench.tasks.moptqs import TASK as MOPT_TASK

MOPT_SETTINGS = PIPE.settings["moptqs"]
MOPT = MOPT_SETTINGS.params
MOPT_DATASETS = "|".join(MOPT.datasets)
MOPT_MODELS = "|".join([*MOPT.models, *MOPT.baselines])


def mopt_prepared(dataset):
    return f"data/moptqs/{P}/prepared/{dataset}.pt"


def mopt_checkpoint(dataset, model, seed):
    return f"data/moptqs/{P}/checkpoints/{dataset}/{model}/seed{seed}.pt"


def mopt_evaluation(dataset, model, seed):
    return f"results/moptqs/{P}/{dataset}/{model}/seed{seed}.json"


def mopt_attack(dataset, model, seed):
    return f"results/moptqs/{P}/{dataset}/{model}/seed{seed}_pgd.json"


def mopt_table_inputs(table):
    """Every per-job result a table or figure reads."""
    if table in ("moptqs_figure2", "moptqs_figure3a"):
        return [f"results/moptqs/{P}/{table.removeprefix('moptqs_')}_data.json"]
    if table == "moptqs_figure4":
        return [f"results/moptqs/{P}/figure4{panel}_data.json" for panel in MOPT.convergence.panels]
    job = MOPT_SETTINGS.table(table)
    if table in ("moptqs_table5", "moptqs_figure3b"):
        return [mopt_attack(ds, m, seed) for ds, m, _ in job.rows for seed in job.seeds]
    files = [mopt_evaluation(ds, m, seed) for ds, m, _ in job.rows for seed in job.seeds]
    if table == "moptqs_table6":
        files.append(f"results/moptqs/{P}/table6_cost.json")
    return files


def mopt_train_priority(wc):
    """Start the longest trainings first so no long job is left alone at the end of a CPU run: adversarial
    training (its attack job follows), then the MDEQ baselines and the multi-scale models."""
    model = MOPT_SETTINGS.model(wc.model)
    if getattr(model, "adversarial", False):
        return 3
    return 2 if wc.model in MOPT.baselines or getattr(model, "layout", "") == "multi_scale" else 0


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
        **job_resources("prepare"),
    shell:
        DEQBENCH + " moptqs prepare --dataset {wildcards.dataset:q} --out {output:q} > {log:q} 2>&1"


rule moptqs_train:
    """Train one model and evaluate its checkpoint in the same job (one process start-up and data load)."""
    input:
        data=lambda wc: mopt_prepared(wc.dataset),
    output:
        checkpoint=f"data/moptqs/{P}/checkpoints/{{dataset}}/{{model}}/seed{{seed}}.pt",
        evaluation=f"results/moptqs/{P}/{{dataset}}/{{model}}/seed{{seed}}.json",
    wildcard_constraints:
        dataset=MOPT_DATASETS,
        model=MOPT_MODELS,
        seed=r"[0-9]+",
    params:
        settings=lambda wc: PIPE.job_hash("moptqs", "train-evaluate", dataset=wc.dataset, model=wc.model),
        partial=lambda wc: f"data/moptqs/{P}/.partial/{wc.dataset}_{wc.model}_seed{wc.seed}.pt",
    log:
        f"logs/{P}/moptqs_train_{{dataset}}_{{model}}_seed{{seed}}.log",
    priority: mopt_train_priority
    threads: JOB_THREADS
    resources:
        **job_resources("train", mem_mb=6000),
    shell:
        DEQBENCH + " moptqs train-evaluate --data {input.data:q} --dataset {wildcards.dataset:q} "
        "--model {wildcards.model:q} --seed {wildcards.seed:q} --out {output.checkpoint:q} "
        "--partial {params.partial:q} --evaluation {output.evaluation:q} > {log:q} 2>&1"


rule moptqs_attack:
    input:
        data=lambda wc: mopt_prepared(wc.dataset),
        checkpoint=lambda wc: mopt_checkpoint(wc.dataset, wc.model, wc.seed),
    output:
        f"results/moptqs/{P}/{{dataset}}/{{model}}/seed{{seed}}_pgd.json",
    wildcard_constraints:
        dataset=MOPT_DATASETS,
        model=MOPT_MODELS,
        seed=r"[0-9]+",
    params:
        settings=lambda wc: PIPE.job_hash("moptqs", "attack", dataset=wc.dataset, model=wc.model),
    log:
        f"logs/{P}/moptqs_attack_{{dataset}}_{{model}}_seed{{seed}}.log",
    threads: JOB_THREADS
    resources:
        **job_resources("evaluate"),
    shell:
        DEQBENCH + " moptqs attack --data {input.data:q} --dataset {wildcards.dataset:q} --model {wildcards.model:q} "
        "--checkpoint {input.checkpoint:q} --out {output:q} > {log:q} 2>&1"


rule moptqs_convergence:
    input:
        data=lambda wc: mopt_prepared(MOPT.convergence.panels[wc.panel].dataset),
        checkpoints=lambda wc: [mopt_checkpoint(MOPT.convergence.panels[wc.panel].dataset, m, MOPT.convergence.seed)
                                for m in MOPT.convergence.panels[wc.panel].models],
    output:
        f"results/moptqs/{P}/figure4{{panel}}_data.json",
    wildcard_constraints:
        panel="|".join(MOPT.convergence.panels),
    params:
        settings=lambda wc: PIPE.job_hash("moptqs", "convergence", panel=wc.panel),
    log:
        f"logs/{P}/moptqs_convergence_{{panel}}.log",
    threads: JOB_THREADS
    resources:
        **job_resources("evaluate"),
    shell:
        DEQBENCH + " moptqs convergence --data {input.data:q} --panel {wildcards.panel:q} "
        "--checkpoints {input.checkpoints:q} --out {output:q} > {log:q} 2>&1"


rule moptqs_cost:
    input:
        data=mopt_prepared(MOPT.cost.dataset),
        checkpoints=[mopt_checkpoint(MOPT.cost.dataset, m, MOPT.cost.seed) for m in MOPT.cost.models],
    output:
        f"results/moptqs/{P}/table6_cost.json",
    params:
        settings=PIPE.job_hash("moptqs", "cost"),
    log:
        f"logs/{P}/moptqs_cost.log",
    threads: JOB_THREADS
    resources:
        **job_resources("evaluate"),
    shell:
        DEQBENCH + " moptqs cost --data {input.data:q} --checkpoints {input.checkpoints:q} --out {output:q} "
        "> {log:q} 2>&1"


rule moptqs_figure2_data:
    input:
        data=mopt_prepared(MOPT.figure2.dataset),
        checkpoints=[mopt_checkpoint(MOPT.figure2.dataset, m, MOPT.figure2.seed)
                     for m in (MOPT.figure2.moptqs, MOPT.figure2.poptqs)],
    output:
        f"results/moptqs/{P}/figure2_data.json",
    params:
        settings=PIPE.job_hash("moptqs", "figure2"),
    log:
        f"logs/{P}/moptqs_figure2.log",
    threads: JOB_THREADS
    resources:
        **job_resources("evaluate"),
    shell:
        DEQBENCH + " moptqs figure2 --data {input.data:q} --checkpoints {input.checkpoints:q} --out {output:q} "
        "> {log:q} 2>&1"


rule moptqs_figure3a_data:
    input:
        data=mopt_prepared(MOPT.figure3a.dataset),
        checkpoint=mopt_checkpoint(MOPT.figure3a.dataset, MOPT.figure3a.model, MOPT.figure3a.seed),
    output:
        f"results/moptqs/{P}/figure3a_data.json",
    params:
        settings=PIPE.job_hash("moptqs", "figure3a"),
    log:
        f"logs/{P}/moptqs_figure3a.log",
    threads: JOB_THREADS
    resources:
        **job_resources("evaluate"),
    shell:
        DEQBENCH + " moptqs figure3a --data {input.data:q} --checkpoint {input.checkpoint:q} --out {output:q} "
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
