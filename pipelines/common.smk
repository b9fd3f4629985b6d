# Shared by every rule file: the resolved profile, the one command line every job runs through, report captions.
#
# The profile is resolved once here, with `--configfile` files merged and `--config` values applied, validated,
# and written to .deqbench/profiles/<name>-<hash>.json; every job reads that file (`--resolved`), so a job computes
# exactly what this DAG was built from.  Each rule's `params.settings` is the hash of the typed settings its job
# reads (deqbench.experiments.pipeline), so editing a setting reruns exactly the jobs that read it; the job
# refuses to run if its own hash differs (`--expect-hash`).
import sys

from deqbench.experiments.config import ConfigError
from deqbench.experiments.pipeline import Pipeline

try:
    PIPE = Pipeline(config, workflow.config_settings.config)
except ConfigError as err:
    raise ValueError(f"params.yaml / --config / --configfile: {err}") from None

P = PIPE.name
PY = sys.executable  # the interpreter running Snakemake, i.e. the project's environment
RESOLVED = PIPE.resolved
GPU = PIPE.uses_gpu
JOB_THREADS = 1 if GPU == 0 else 4
CAPTION = "report/caption.rst"
# {threads} caps torch and BLAS at the rule's thread count; values are shell-quoted (:q) everywhere.
DEQBENCH = ("OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads} {PY:q} -m deqbench --resolved {RESOLVED:q} "
            "--threads {threads} --expect-hash {params.settings:q}")


def table_outputs(spec):
    """A declared table's outputs; its HTML rendering, CSV and a figure's PNG go into the report under the paper's
    category."""
    out = spec.outputs()
    marked = {k: report(v, caption=CAPTION, category=spec.paper.upper(), subcategory=spec.title)
              for k, v in out.items() if k in ("html", "csv", "png")}
    return {**out, **marked}


def table_caption(spec):
    """The report's caption of a table: what it is and where the paper's values come from (the full caption, with
    seeds and device, heads results/<name>.md)."""
    return (f"{spec.title}. The paper's values ({spec.source}) sit in the columns marked as reference; the full "
            f"caption heads results/{spec.name}.md and the provenance is in results/{spec.name}.provenance.json.")
