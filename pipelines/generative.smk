from pathlib import Path

from deqbench.tasks.generative import train_hash

# Generative modelling and inverse problems (JIIO paper sections 4.1-4.2, appendix C): Tables 1, 3, 4, Figure 3 and
# the memory comparison.  One rule trains every (model, problem) pair; each table cell is one evaluation job.
# The generative experiments use the profile's first seed (the paper reports single runs).
GEN = PROFILE["generative"]
GSEED = PROFILE["seeds"][0]
# Evaluation jobs rerun when the generative settings change, not when the adversarial ones do.
GEN_HASH = config_hash({k: PROFILE[k] for k in ("generative", "data_root", "device", "cuda_graph")})
GPROBLEMS = list(GEN["problems"])
GDIR = f"data/generative/{P}/checkpoints"
GMODELS = ["jiio40", "jiio100", "mdeq_vae", "mdeq_ae", "vae", "rae", "ae"]
GDATA = f"data/generative/{P}/faces.pt"
GRES = f"results/generative/{P}"

TABLE1_CHECKPOINT = {"vae": "vae_reconstruct", "rae": "rae_reconstruct", "mdeq_vae": "mdeq_vae_reconstruct",
                     "mdeq_vae_jiio": "mdeq_vae_reconstruct", "jiio_mdeq": "jiio40_reconstruct"}
TABLE4_CHECKPOINT = {"sup_ae": "ae_{problem}", "sup_mdeq_ae": "mdeq_ae_{problem}", "sup_jiio100": "jiio100_{problem}",
                     "unsup_vae_adam": "vae_reconstruct", "unsup_mdeq_vae_adam": "mdeq_vae_reconstruct",
                     "unsup_jiio40": "jiio40_reconstruct", "unsup_jiio100": "jiio100_reconstruct"}
DENSITY_FOR = {"rae": "rae_reconstruct", "jiio_mdeq": "jiio40_reconstruct"}


def gen_checkpoint(name):
    return f"{GDIR}/{name}/seed{GSEED}.pt"


rule prepare_faces:
    output:
        GDATA,
    params:
        profile=P,
        source=GEN["dataset"],
    log:
        f"logs/{P}/prepare_faces.log",
    threads: 1
    resources:
        mem_mb=4000,
    shell:
        "{PY} -m deqbench.tasks.generative --profile {params.profile} prepare --out {output} > {log} 2>&1"


rule train_generative:
    input:
        data=GDATA,
    output:
        f"{GDIR}/{{gmodel}}_{{problem}}/seed{{seed}}.pt",
    wildcard_constraints:
        gmodel="|".join(GMODELS),
        problem="|".join(["reconstruct"] + [p.replace(".", r"\.") for p in GPROBLEMS]),
    params:
        profile=P,
        # Only what training reads: editing evaluation, timing or adversarial settings keeps the checkpoints.
        train_hash=lambda wc: train_hash(PROFILE, wc.gmodel, wc.problem),
        partial=lambda wc: f"{GDIR}/.partial/{wc.gmodel}_{wc.problem}_seed{wc.seed}.pt",
    log:
        f"logs/{P}/train_generative_{{gmodel}}_{{problem}}_seed{{seed}}.log",
    threads: 1 if USES_GPU == 0 else 4
    resources:
        gpu=USES_GPU,
        mem_mb=8000,
    shell:
        "{PY} -m deqbench.tasks.generative --profile {params.profile} train --data {input.data} --model {wildcards.gmodel} "
        "--problem {wildcards.problem} --seed {wildcards.seed} --out {output} --partial {params.partial} > {log} 2>&1"


rule density:
    input:
        data=GDATA,
        checkpoint=lambda wc: gen_checkpoint(DENSITY_FOR[wc.row]),
    output:
        f"{GDIR}/density/{{row}}.pt",
    wildcard_constraints:
        row="rae|jiio_mdeq",
    params:
        profile=P,
        config_hash=GEN_HASH,
    log:
        f"logs/{P}/density_{{row}}.log",
    threads: 1 if USES_GPU == 0 else 4
    resources:
        gpu=USES_GPU,
    shell:
        "{PY} -m deqbench.tasks.generative --profile {params.profile} density --data {input.data} "
        "--checkpoint {input.checkpoint} --out {output} > {log} 2>&1"


rule table1_cell:
    input:
        data=GDATA,
        checkpoint=lambda wc: gen_checkpoint(TABLE1_CHECKPOINT[wc.row]),
        density=lambda wc: [f"{GDIR}/density/{wc.row}.pt"] if wc.row in DENSITY_FOR else [],
        # FID weights (data/weights/README.md): adding the file reruns the Table 1 jobs.
        weights=lambda wc: ["data/weights"] if Path("data/weights").is_dir() else [],
    output:
        f"{GRES}/table1/{{row}}.json",
    wildcard_constraints:
        row="|".join(TABLE1_CHECKPOINT),
    params:
        profile=P,
        config_hash=GEN_HASH,
        density=lambda wc, input: f"--density {input.density}" if input.density else "",
    log:
        f"logs/{P}/table1_{{row}}.log",
    threads: 1 if USES_GPU == 0 else 4
    resources:
        gpu=USES_GPU,
    shell:
        "{PY} -m deqbench.tasks.generative --profile {params.profile} table1-cell --data {input.data} --row {wildcards.row} "
        "--checkpoint {input.checkpoint} {params.density} --out {output} > {log} 2>&1"


rule table4_cell:
    input:
        data=GDATA,
        checkpoint=lambda wc: gen_checkpoint(TABLE4_CHECKPOINT[wc.row].format(problem=wc.problem)),
    output:
        f"{GRES}/table4/{{row}}_{{problem}}.json",
    wildcard_constraints:
        row="|".join(TABLE4_CHECKPOINT),
        problem="|".join(p.replace(".", r"\.") for p in GPROBLEMS),
    params:
        profile=P,
        config_hash=GEN_HASH,
    log:
        f"logs/{P}/table4_{{row}}_{{problem}}.log",
    threads: 1 if USES_GPU == 0 else 4
    resources:
        gpu=USES_GPU,
    shell:
        "{PY} -m deqbench.tasks.generative --profile {params.profile} table4-cell --data {input.data} --row {wildcards.row} "
        "--problem {wildcards.problem} --checkpoint {input.checkpoint} --out {output} > {log} 2>&1"


rule generative_timing:
    input:
        data=GDATA,
        checkpoint=gen_checkpoint("jiio40_reconstruct"),
        checkpoint100=gen_checkpoint("jiio100_reconstruct"),
    output:
        f"{GRES}/timing.json",
    params:
        profile=P,
        config_hash=GEN_HASH,
    log:
        f"logs/{P}/generative_timing.log",
    # Timing runs alone on the machine: all cores, and it waits for the other jobs.
    threads: workflow.cores
    resources:
        gpu=USES_GPU,
    shell:
        "{PY} -m deqbench.tasks.generative --profile {params.profile} timing --data {input.data} "
        "--checkpoint {input.checkpoint} --checkpoint100 {input.checkpoint100} --out {output} > {log} 2>&1"


rule generative_table:
    input:
        lambda wc: (
            [f"{GRES}/table1/{row}.json" for row in TABLE1_CHECKPOINT] if wc.gtable == "table1"
            else [f"{GRES}/table4/{row}_{p}.json" for row in TABLE4_CHECKPOINT for p in GPROBLEMS] if wc.gtable == "table4"
            else [f"{GRES}/timing.json"]
        ),
    output:
        csv="results/{gtable}.csv",
        md="results/{gtable}.md",
        provenance="results/{gtable}.provenance.json",
    wildcard_constraints:
        gtable="table1|table3|table4|memory",
    params:
        profile=P,
        config_hash=GEN_HASH,
    log:
        f"logs/{P}/{{gtable}}.log",
    localrule: True
    shell:
        "{PY} -m deqbench.generative_tables --profile {params.profile} --table {wildcards.gtable} --out {output.csv} "
        "{input} > {log} 2>&1"


rule figure3:
    input:
        f"{GRES}/timing.json",
    output:
        png="results/figure3.png",
        csv="results/figure3.csv",
        provenance="results/figure3.provenance.json",
    params:
        profile=P,
        config_hash=GEN_HASH,
    log:
        f"logs/{P}/figure3.log",
    localrule: True
    shell:
        "{PY} -m deqbench.generative_tables --profile {params.profile} --table figure3 --out {output.png} {input} > {log} 2>&1"
