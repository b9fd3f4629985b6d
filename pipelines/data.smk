# Data preparation: load (real or embedded stand-in) data as the profile says, resize, store both splits.


rule prepare_data:
    output:
        f"data/prepared/{P}/{{dataset}}.pt",
    params:
        profile=P,
        source=lambda wc: PROFILE["datasets"][wc.dataset],
    log:
        f"logs/{P}/prepare_{{dataset}}.log",
    threads: 1
    resources:
        mem_mb=4000,
    shell:
        "{PY} -m deqbench.tasks.adversarial --profile {params.profile} prepare "
        "--dataset {wildcards.dataset} --out {output} > {log} 2>&1"
