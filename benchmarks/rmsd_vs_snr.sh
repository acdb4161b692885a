#!/usr/bin/env bash
# Accuracy on the bundled example: per-image RMSD after training, at several noise levels.
# Usage: bash benchmarks/rmsd_vs_snr.sh OUTDIR [N_IMAGES] [EPOCHS]   (results in OUTDIR/snr_*/run/evaluation/summary.json)
set -euo pipefail
out=${1:?output directory}
n=${2:-5000}
epochs=${3:-20}
data=$(python -c "import cryodomain.examples as e; print(e.EXAMPLE_DIR)")
for snr in 1 0.1 0.01; do
  dir="$out/snr_$snr"
  cryodomain simulate "$data/example_state_a.pdb" "$data/example_state_b.pdb" -o "$dir/sim" \
    --n-images "$n" --snr "$snr" --atoms all --seed 0
  cryodomain train "$dir/sim/particles.star" --structure "$data/example_state_a.pdb" -o "$dir/run" \
    --config "$data/demo.yaml" --epochs "$epochs" --force
  cryodomain evaluate "$dir/run" --truth "$dir/sim/truth.npz" > "$dir/summary.json"
  echo "SNR $snr: $(python -c "import json,sys; s=json.load(open('$dir/summary.json')); b=s['by_conformation']; print('median', round(s['rmsd_A']['median'],2), 'state A', round(b['0']['rmsd_A']['median'],2), 'state B', round(b['1']['rmsd_A']['median'],2), 'baseline B', round(b['1']['baseline_rmsd_A']['median'],2))")"
done
