# JIIO paper section 4.3, appendix B.2: adversarial training of MDEQ classifiers, Tables 2, 5 and 8.
# Task: deqbench/tasks/jiio_adversarial (settings, stages, table declarations); params: the jiio_adversarial block.
# One rule trains every (dataset, method, eps, seed); clean models use eps 0 and are shared by all tables.
# Resumable partial checkpoints live in data/checkpoints/<profile>/.partial, outside the declared outputs.
import shlex

from deqbench.tasks.jiio_adversarial import TASK as ADV_TASK
from deqbench.tasks.jiio_adversarial.settings import METHODS as ADV_METHODS

ADV = PIPE.settings["jiio_adversarial"].params
ADV_DATASETS = "|".join(ADV.datasets)


def eps_tag(eps):
    return f"{float(eps):g}"


def adv_prepared(dataset):
    return f"data/prepared/{P}/{dataset}.pt"


def adv_checkpoint(dataset, method, eps, seed):
    return f"data/checkpoints/{P}/{dataset}/{method}_eps{eps_tag(eps)}/seed{seed}.pt"


def adv_evaluation(dataset, method, train_eps, seed, eps):
    return f"results/adversarial/{P}/{dataset}/{method}_eps{eps_tag(train_eps)}/seed{seed}_test-eps{eps_tag(eps)}.json"


def adv_table_inputs(table):
    """Every evaluation a robustness table needs: datasets x training methods x seeds, at the table's eps."""
    if table == "table2":
        return [f"results/timing/{P}/table2_timing.json"]
    if table == "memory_adversarial":
        return [f"results/timing/{P}/attack_memory.json"]
    spec = ADV.tables[table]
    return [adv_evaluation(ds, m, 0 if m == "clean" else spec.eps, seed, spec.eps)
            for ds in spec.datasets for m in ADV_METHODS for seed in PIPE.info.seeds]


rule adversarial_prepare:
    output:
        f"data/prepared/{P}/{{dataset}}.pt",
    wildcard_constraints:
        dataset=ADV_DATASETS,
    params:
        settings=lambda wc: PIPE.job_hash("jiio_adversarial", "prepare", dataset=wc.dataset),
    log:
        f"logs/{P}/prepare_{{dataset}}.log",
    threads: 1
    resources:
        **job_resources("prepare"),
    shell:
        DEQBENCH + " jiio_adversarial prepare --dataset {wildcards.dataset:q} --out {output:q} > {log:q} 2>&1"


def adv_warm_start(wc):
    """The clean model an adversarial model fine-tunes (train.warm_start_steps), as an input list."""
    if ADV.train.warm_start_steps is None or wc.method == "clean":
        return []
    return [adv_checkpoint(wc.dataset, "clean", 0, wc.seed)]


rule adversarial_train:
    input:
        data=lambda wc: adv_prepared(wc.dataset),
        init=adv_warm_start,
    output:
        f"data/checkpoints/{P}/{{dataset}}/{{method}}_eps{{eps}}/seed{{seed}}.pt",
    wildcard_constraints:
        dataset=ADV_DATASETS,
        method="|".join(ADV_METHODS),
        eps=r"[0-9]+(\.[0-9]+)?",
        seed=r"[0-9]+",
    params:
        settings=lambda wc: PIPE.job_hash("jiio_adversarial", "train", dataset=wc.dataset, method=wc.method),
        partial=lambda wc: f"data/checkpoints/{P}/.partial/{wc.dataset}_{wc.method}_eps{wc.eps}_seed{wc.seed}.pt",
        init=lambda wc, input: f"--init {shlex.quote(input.init[0])}" if input.init else "",  # quoted
    log:
        f"logs/{P}/train_{{dataset}}_{{method}}_eps{{eps}}_seed{{seed}}.log",
    priority: lambda wc: 0 if wc.method == "clean" else 1  # adversarial training is the long work: start it first
    threads: JOB_THREADS
    resources:
        **job_resources("train"),
    shell:
        DEQBENCH + " jiio_adversarial train --data {input.data:q} --dataset {wildcards.dataset:q} "
        "--method {wildcards.method:q} --eps {wildcards.eps:q} --seed {wildcards.seed:q} --out {output:q} "
        "--partial {params.partial:q} {params.init} > {log:q} 2>&1"


rule adversarial_evaluate:
    input:
        data=lambda wc: adv_prepared(wc.dataset),
        checkpoint=lambda wc: adv_checkpoint(wc.dataset, wc.method, wc.train_eps, wc.seed),
    output:
        f"results/adversarial/{P}/{{dataset}}/{{method}}_eps{{train_eps}}/seed{{seed}}_test-eps{{eps}}.json",
    wildcard_constraints:
        dataset=ADV_DATASETS,
        method="|".join(ADV_METHODS),
        train_eps=r"[0-9]+(\.[0-9]+)?",
        eps=r"[0-9]+(\.[0-9]+)?",
        seed=r"[0-9]+",
    params:
        settings=lambda wc: PIPE.job_hash("jiio_adversarial", "evaluate", dataset=wc.dataset),
    log:
        f"logs/{P}/evaluate_{{dataset}}_{{method}}_eps{{train_eps}}_seed{{seed}}_test-eps{{eps}}.log",
    threads: JOB_THREADS
    resources:
        **job_resources("evaluate", mem_mb=8000),
    shell:
        DEQBENCH + " jiio_adversarial evaluate --data {input.data:q} --dataset {wildcards.dataset:q} "
        "--checkpoint {input.checkpoint:q} --eps {wildcards.eps:q} --out {output:q} > {log:q} 2>&1"


rule adversarial_timing:
    input:
        data=adv_prepared(ADV.timing.dataset),
    output:
        f"results/timing/{P}/table2_timing.json",
    params:
        settings=PIPE.job_hash("jiio_adversarial", "timing"),
    log:
        f"logs/{P}/table2_timing.log",
    # Timing runs alone: it takes every core Snakemake has, so no other job runs beside it.
    threads: lambda wildcards: workflow.cores
    resources:
        **job_resources("alone"),
    shell:
        DEQBENCH + " jiio_adversarial timing --data {input.data:q} --out {output:q} > {log:q} 2>&1"


rule adversarial_memory:
    input:
        data=adv_prepared(ADV.memory.dataset),
    output:
        f"results/timing/{P}/attack_memory.json",
    params:
        settings=PIPE.job_hash("jiio_adversarial", "memory"),
    log:
        f"logs/{P}/attack_memory.log",
    # On the CPU each attack runs in its own child process (peak RSS is per process); alone, like timing.
    threads: lambda wildcards: workflow.cores
    resources:
        **job_resources("alone"),
    shell:
        DEQBENCH + " jiio_adversarial memory --data {input.data:q} --out {output:q} > {log:q} 2>&1"


for adv_spec in ADV_TASK.tables:

    rule:
        name:
            f"adversarial_{adv_spec.name}"
        input:
            adv_table_inputs(adv_spec.name),
        output:
            **table_outputs(adv_spec),
        params:
            settings=PIPE.table_hash("jiio_adversarial", adv_spec.name),
            caption=table_caption(adv_spec),
            name=adv_spec.name,
        log:
            f"logs/{P}/{adv_spec.name}.log",
        localrule: True
        shell:
            DEQBENCH + " jiio_adversarial table {params.name:q} {input:q} --out {output.csv:q} > {log:q} 2>&1"
