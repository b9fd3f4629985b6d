# (Implicit)^2 (Huang, Bai, Kolter, NeurIPS 2021): the image-generalisation and video tables, Fig. 4 (gradient order),
# the cost figure, the amortisation check and the reconstruction pictures.
# Task: deqbench/tasks/implicit2 (settings, stages, table and figure declarations); params: the implicit2 block.
# Runs are many and small: one job per (image set, image, filter) trains every size x {explicit, implicit} (paired,
# same init), one job per video filter, one per amortisation image; the timing jobs (cost, gradient order) run alone.
from deqbench.tasks.implicit2 import TASK as IMP2_TASK

IMP2_SETTINGS = PIPE.settings["implicit2"]
IMP2 = IMP2_SETTINGS.params
IMP2_DIR = f"results/implicit2/{P}"


def imp2_fit(dataset, image, filter):
    return f"{IMP2_DIR}/generalization/{dataset}/image{image}_{filter}.json"


def imp2_table_inputs(table):
    """Every per-job result a table or figure reads."""
    g = IMP2.generalization
    if table == "implicit2_generalization":
        return [imp2_fit(s, i, f) for s in g.sets for i in IMP2_SETTINGS.image_indices(s) for f in g.filters]
    if table == "implicit2_video":
        return [f"{IMP2_DIR}/video/{f}.json" for f in IMP2.video.filters]
    if table == "implicit2_gradient_order":
        return [f"{IMP2_DIR}/gradient_order.json"]
    if table == "implicit2_cost":
        return [f"{IMP2_DIR}/cost.json"]
    if table == "implicit2_amortization":
        return [f"{IMP2_DIR}/amortization/image{i}.json" for i in IMP2.amortization.images]
    return [imp2_fit(s, i, IMP2.pictures.filter) for s, i in IMP2.pictures.images]


rule implicit2_fit:
    output:
        f"{IMP2_DIR}/generalization/{{dataset}}/image{{image}}_{{filter}}.json",
    wildcard_constraints:
        dataset="|".join(IMP2.generalization.sets),
        image=r"[0-9]+",
        filter="|".join(IMP2.generalization.filters),
    params:
        settings=lambda wc: PIPE.job_hash("implicit2", "fit", dataset=wc.dataset, image=int(wc.image),
                                          filter=wc.filter),
    log:
        f"logs/{P}/implicit2_fit_{{dataset}}_image{{image}}_{{filter}}.log",
    priority: lambda wc: 1 if wc.filter == "gabor" else 0  # the slowest filter first
    threads: JOB_THREADS
    resources:
        **job_resources("evaluate", mem_mb=2000),
    shell:
        DEQBENCH + " implicit2 fit --dataset {wildcards.dataset:q} --image {wildcards.image:q} "
        "--filter {wildcards.filter:q} --out {output:q} > {log:q} 2>&1"


rule implicit2_fit_video:
    output:
        f"{IMP2_DIR}/video/{{filter}}.json",
    wildcard_constraints:
        filter="|".join(IMP2.video.filters),
    params:
        settings=lambda wc: PIPE.job_hash("implicit2", "video", filter=wc.filter),
    log:
        f"logs/{P}/implicit2_video_{{filter}}.log",
    priority: 2  # the longest jobs: start them first
    threads: JOB_THREADS
    resources:
        **job_resources("evaluate", mem_mb=3000),
    shell:
        DEQBENCH + " implicit2 video --filter {wildcards.filter:q} --out {output:q} > {log:q} 2>&1"


rule implicit2_fit_amortization:
    output:
        f"{IMP2_DIR}/amortization/image{{image}}.json",
    wildcard_constraints:
        image="|".join(str(i) for i in IMP2.amortization.images),
    params:
        settings=lambda wc: PIPE.job_hash("implicit2", "amortization", image=int(wc.image)),
    log:
        f"logs/{P}/implicit2_amortization_image{{image}}.log",
    threads: JOB_THREADS
    resources:
        **job_resources("evaluate", mem_mb=2000),
    shell:
        DEQBENCH + " implicit2 amortization --image {wildcards.image:q} --out {output:q} > {log:q} 2>&1"


rule implicit2_sweep_gradient_order:
    output:
        f"{IMP2_DIR}/gradient_order.json",
    params:
        settings=PIPE.job_hash("implicit2", "gradient-order"),
    log:
        f"logs/{P}/implicit2_gradient_order.log",
    # Fig. 4 plots PSNR against wall clock: it runs alone, with every core Snakemake has.
    threads: lambda wildcards: workflow.cores
    resources:
        **job_resources("alone"),
    shell:
        DEQBENCH + " implicit2 gradient-order --out {output:q} > {log:q} 2>&1"


rule implicit2_measure_cost:
    output:
        f"{IMP2_DIR}/cost.json",
    params:
        settings=PIPE.job_hash("implicit2", "cost"),
    log:
        f"logs/{P}/implicit2_cost.log",
    # Timing runs alone: it takes every core Snakemake has, so no other job runs beside it.
    threads: lambda wildcards: workflow.cores
    resources:
        **job_resources("alone"),
    shell:
        DEQBENCH + " implicit2 cost --out {output:q} > {log:q} 2>&1"


for imp2_spec in IMP2_TASK.tables:

    rule:
        name:
            imp2_spec.name
        input:
            imp2_table_inputs(imp2_spec.name),
        output:
            **table_outputs(imp2_spec),
        params:
            settings=PIPE.table_hash("implicit2", imp2_spec.name),
            caption=table_caption(imp2_spec),
            name=imp2_spec.name,
        log:
            f"logs/{P}/{imp2_spec.name}.log",
        localrule: True
        shell:
            DEQBENCH + " implicit2 table {params.name:q} {input:q} --out {output.csv:q} > {log:q} 2>&1"
