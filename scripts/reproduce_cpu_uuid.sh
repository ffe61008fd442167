#!/usr/bin/env bash
# CPU reproduction, part "UUID memorization" (MORA.md §4) on model=tiny: FFT, LoRA and MoRA at r = 8 and 64, DoRA,
# HiRA and MiSS at matched trainable parameters (configs/experiment/cpu/uuid_*.yaml).
#   Phase 1: each method's lr sweep (3 values, seed 0) as one Hydra multirun per experiment file.
#   Phase 2: each method at its best phase-1 lr (picked from the records by results_lib.cpu_sweeps) with seeds 1, 2,
#            so the best lr has 3 seeds (0, 1, 2). The other lrs stay in the records and in the tables' notes.
# Then rebuilds results/tables and results/figures.
#
#   [RESULTS=results] [PYTHON=python] scripts/reproduce_cpu_uuid.sh [fft lora mora dora hira miss] [-- extra Hydra overrides for every run]
#
# Resumable: an experiment's phase 1 is skipped when all its records exist, a method's phase 2 when its seeds exist.
# Cost: 24 phase-1 + 16 phase-2 runs of ~3-4 min each on 2 cores (about 2-2.5 h for all methods); run subsets
# (e.g. `scripts/reproduce_cpu_uuid.sh fft lora mora`) to stay within an hour per invocation.
# SKIP_BUILD=1 skips rebuilding the tables and figures at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=offline
PYTHON=${PYTHON:-python}
RESULTS=${RESULTS:-results}   # records go to $RESULTS/runs; tables and figures to $RESULTS/tables, $RESULTS/figures

methods=()
extra=()
while [ $# -gt 0 ]; do
  if [ "$1" = "--" ]; then shift; extra=("$@"); break; fi
  methods+=("$1"); shift
done
[ ${#methods[@]} -eq 0 ] && methods=(fft lora mora dora hira miss)

for method in "${methods[@]}"; do
  experiment="cpu/uuid_${method}"
  [ -f "configs/experiment/${experiment}.yaml" ] || { echo "error: no experiment file configs/experiment/${experiment}.yaml" >&2; exit 2; }
  missing=$("$PYTHON" -m results_lib.cpu_sweeps missing "$experiment" --results "$RESULTS")
  if [ "$missing" != "0" ]; then
    echo "== ${experiment}: lr sweep (${missing} runs missing)"
    "$PYTHON" train.py -m "experiment=${experiment}" "results_dir=$RESULTS/runs" "${extra[@]}"
  else
    echo "== ${experiment}: lr sweep complete"
  fi
  "$PYTHON" -m results_lib.cpu_sweeps best "$experiment" --results "$RESULTS" --seeds 1,2 | while read -r overrides; do
    echo "== ${experiment}: seeds at the best lr: ${overrides}"
    # shellcheck disable=SC2086  # the overrides are space-separated key=value words
    "$PYTHON" train.py -m "experiment=${experiment}" ${overrides} "results_dir=$RESULTS/runs" "${extra[@]}" </dev/null
  done
done

if [ "${SKIP_BUILD:-0}" != "1" ]; then
  "$PYTHON" scripts/make_tables.py --results "$RESULTS"
  "$PYTHON" scripts/make_figures.py --results "$RESULTS"
fi
