#!/usr/bin/env bash
# Run the adversarial pipeline's commands in order without Snakemake, for machines whose image lacks it
# (the lent GPU machines run their own Python without snakemake/dvc).  Same commands as pipelines/adversarial.smk.
#
#   bash pipelines/scripts/adversarial_without_snakemake.sh PROFILE DATASET "SEEDS" OUTDIR
#
# writes OUTDIR/table5_<dataset>.csv (+ .md, .provenance.json) and OUTDIR/table2.csv from whatever finished.
set -euo pipefail
profile=${1:?profile}; dataset=${2:?dataset}; seeds=${3:?seeds}; out=${4:?outdir}
py=${PYTHON:-python3}
task="$py -m deqbench.tasks.adversarial --profile $profile --no-progress"
eps=$($py -c "from deqbench.config import load_profile; print(load_profile('params.yaml', '$profile')['experiments']['table5']['eps'])")
mkdir -p "$out"/ckpt "$out"/eval
data="$out/$dataset.pt"
$task prepare --dataset "$dataset" --out "$data"
$task timing --data "$data" --out "$out/table2_timing.json"
$py -m deqbench.tables --profile "$profile" --table table2 --out "$out/table2.csv" "$out/table2_timing.json"
evals=()
for seed in $seeds; do
  for method in clean pgd jio; do
    train_eps=$([ "$method" = clean ] && echo 0 || echo "$eps")
    ckpt="$out/ckpt/${dataset}_${method}_eps${train_eps}_seed${seed}.pt"
    $task train --data "$data" --dataset "$dataset" --method "$method" --eps "$train_eps" --seed "$seed" \
      --out "$ckpt" --partial "$out/ckpt/.partial_${method}_${seed}.pt"
    $task evaluate --data "$data" --dataset "$dataset" --checkpoint "$ckpt" --eps "$eps" \
      --out "$out/eval/${method}_seed${seed}.json"
    evals+=("$out/eval/${method}_seed${seed}.json")
  done
  $py -m deqbench.tables --profile "$profile" --table table5 --datasets "$dataset" --out "$out/table5_${dataset}.csv" "${evals[@]}"
done
