#!/usr/bin/env bash
# Run the adversarial pipeline's jobs in order without Snakemake, for machines whose image lacks it (the lent GPU
# machines run their own Python without snakemake/dvc).  Same `python -m deqbench` commands as
# pipelines/jiio_adversarial.smk, on one dataset.
#
#   bash pipelines/scripts/adversarial_without_snakemake.sh PROFILE DATASET "SEEDS" OUTDIR
#
# writes OUTDIR/table2.csv and OUTDIR/table5.csv (one dataset; + .md, .provenance.json, metrics/).
set -euo pipefail
profile=${1:?profile}; dataset=${2:?dataset}; seeds=${3:?seeds}; out=${4:?outdir}
py=${PYTHON:-python3}
seed_list="[$(echo "$seeds" | tr ' ' ',')]"
run() { $py -m deqbench --profile "$profile" --set "seeds=$seed_list" --set "jiio_adversarial.tables.table5.datasets=[$dataset]" --no-progress "$@"; }
eps=$($py -c "from deqbench.experiments.config import load_profile; print(load_profile('params.yaml', '$profile')['jiio_adversarial']['tables']['table5']['eps'])")
mkdir -p "$out"/ckpt "$out"/eval
data="$out/$dataset.pt"
run jiio_adversarial prepare --dataset "$dataset" --out "$data"
run jiio_adversarial timing --data "$data" --out "$out/table2_timing.json"
run jiio_adversarial table table2 "$out/table2_timing.json" --out "$out/table2.csv"
evals=()
for seed in $seeds; do
  for method in clean pgd jio; do
    train_eps=$([ "$method" = clean ] && echo 0 || echo "$eps")
    ckpt="$out/ckpt/${dataset}_${method}_eps${train_eps}_seed${seed}.pt"
    run jiio_adversarial train --data "$data" --dataset "$dataset" --method "$method" --eps "$train_eps" \
      --seed "$seed" --out "$ckpt" --partial "$out/ckpt/.partial_${method}_${seed}.pt"
    run jiio_adversarial evaluate --data "$data" --dataset "$dataset" --checkpoint "$ckpt" --eps "$eps" \
      --out "$out/eval/${method}_seed${seed}.json"
    evals+=("$out/eval/${method}_seed${seed}.json")
  done
done
run jiio_adversarial table table5 "${evals[@]}" --out "$out/table5.csv"
