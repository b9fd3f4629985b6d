# Adversarial robustness of MDEQ classifiers (JIIO paper section 4.3, appendix B.2): Tables 2, 5 and 8.
# One rule trains every (dataset, method, eps, seed) variant; clean models use eps 0 and are shared by all tables.
# Resumable partial checkpoints live in data/checkpoints/<profile>/.partial, outside the declared outputs.


rule train:
    input:
        data=lambda wc: prepared(wc.dataset),
    output:
        f"data/checkpoints/{P}/{{dataset}}/{{method}}_eps{{eps}}/seed{{seed}}.pt",
    params:
        profile=P,
        config_hash=config_hash(PROFILE),
        partial=lambda wc: f"data/checkpoints/{P}/.partial/{wc.dataset}_{wc.method}_eps{wc.eps}_seed{wc.seed}.pt",
    log:
        f"logs/{P}/train_{{dataset}}_{{method}}_eps{{eps}}_seed{{seed}}.log",
    threads: 1 if USES_GPU == 0 else 4
    resources:
        gpu=USES_GPU,
        mem_mb=8000,
    shell:
        "{PY} -m deqbench.tasks.adversarial --profile {params.profile} train --data {input.data} "
        "--dataset {wildcards.dataset} --method {wildcards.method} --eps {wildcards.eps} --seed {wildcards.seed} "
        "--out {output} --partial {params.partial} > {log} 2>&1"


rule evaluate:
    input:
        data=lambda wc: prepared(wc.dataset),
        checkpoint=lambda wc: checkpoint(wc.dataset, wc.method, wc.train_eps, wc.seed),
    output:
        f"results/adversarial/{P}/{{dataset}}/{{method}}_eps{{train_eps}}/seed{{seed}}_test-eps{{eps}}.json",
    params:
        profile=P,
        config_hash=config_hash(PROFILE),
    log:
        f"logs/{P}/evaluate_{{dataset}}_{{method}}_eps{{train_eps}}_seed{{seed}}_test-eps{{eps}}.log",
    threads: 1 if USES_GPU == 0 else 4
    resources:
        gpu=USES_GPU,
        mem_mb=8000,
    shell:
        "{PY} -m deqbench.tasks.adversarial --profile {params.profile} evaluate --data {input.data} "
        "--dataset {wildcards.dataset} --checkpoint {input.checkpoint} --eps {wildcards.eps} --out {output} > {log} 2>&1"


rule timing:
    input:
        data=prepared(PROFILE["timing"]["dataset"]),
    output:
        f"results/timing/{P}/table2_timing.json",
    params:
        profile=P,
        config_hash=config_hash(PROFILE),
    log:
        f"logs/{P}/timing.log",
    threads: 1 if USES_GPU == 0 else 4
    resources:
        gpu=USES_GPU,
    shell:
        "{PY} -m deqbench.tasks.adversarial --profile {params.profile} timing --data {input.data} --out {output} > {log} 2>&1"


rule table2:
    input:
        f"results/timing/{P}/table2_timing.json",
    output:
        csv="results/table2.csv",
        md="results/table2.md",
        provenance="results/table2.provenance.json",
    params:
        profile=P,
        config_hash=config_hash(PROFILE),
    log:
        f"logs/{P}/table2.log",
    localrule: True
    shell:
        "{PY} -m deqbench.tables --profile {params.profile} --table table2 --out {output.csv} {input} > {log} 2>&1"


rule adversarial_table:
    input:
        lambda wc: experiment_evaluations(wc.table),
    output:
        csv="results/{table}.csv",
        md="results/{table}.md",
        provenance="results/{table}.provenance.json",
    wildcard_constraints:
        table="table5|table8",
    params:
        profile=P,
        config_hash=config_hash(PROFILE),
    log:
        f"logs/{P}/{{table}}.log",
    localrule: True
    shell:
        "{PY} -m deqbench.tables --profile {params.profile} --table {wildcards.table} --out {output.csv} {input} > {log} 2>&1"
