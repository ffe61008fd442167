#!/usr/bin/env bash
# CPU reproduction, part "compression/decompression ablation" (MORA.md §2, §4): MoRA of every type at r = 8 on UUID
# memorization, model=tiny (configs/experiment/cpu/ablation_mora_types.yaml).
#   Phase 1: lr sweep (3 values, seed 0) of the six non-RoPE types as one Hydra multirun. The RoPE row is MoRA r = 8
#            of experiment=cpu/uuid_mora (mora_type auto = rope, the same setting); its r = 8 runs are made here only
#            when reproduce_cpu_uuid.sh has not made them.
#   Phase 2: each type at its best phase-1 lr with seeds 1, 2 (3 seeds in all).
# Then rebuilds results/tables and results/figures.
#
#   [RESULTS=results] [PYTHON=python] scripts/reproduce_cpu_ablation.sh [-- extra Hydra overrides for every run]
#
# Resumable like reproduce_cpu_uuid.sh. Cost: 18 (+3 for RoPE) phase-1 and 12 (+2) phase-2 runs of ~3-4 min each.
# SKIP_BUILD=1 skips rebuilding the tables and figures at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=offline
PYTHON=${PYTHON:-python}
RESULTS=${RESULTS:-results}   # records go to $RESULTS/runs; tables and figures to $RESULTS/tables, $RESULTS/figures
extra=()
if [ "${1:-}" = "--" ]; then shift; extra=("$@"); fi

experiment=cpu/ablation_mora_types
missing=$("$PYTHON" -m results_lib.cpu_sweeps missing "$experiment" --results "$RESULTS")
if [ "$missing" != "0" ]; then
  echo "== ${experiment}: lr sweep (${missing} runs missing)"
  "$PYTHON" train.py -m "experiment=${experiment}" "results_dir=$RESULTS/runs" "${extra[@]}"
fi
"$PYTHON" -m results_lib.cpu_sweeps best "$experiment" --results "$RESULTS" --seeds 1,2 | while read -r overrides; do
  echo "== ${experiment}: seeds at the best lr: ${overrides}"
  # shellcheck disable=SC2086
  "$PYTHON" train.py -m "experiment=${experiment}" ${overrides} "results_dir=$RESULTS/runs" "${extra[@]}" </dev/null
done

# The RoPE row: MoRA r = 8 (mora_type auto = rope) of the UUID part, run here only when absent.
mora_missing=$("$PYTHON" -m results_lib.cpu_sweeps missing cpu/uuid_mora --results "$RESULTS" --where r=8)
if [ "$mora_missing" != "0" ]; then
  echo "== cpu/uuid_mora at r = 8 (the ablation's RoPE row)"
  "$PYTHON" train.py -m experiment=cpu/uuid_mora r=8 "results_dir=$RESULTS/runs" "${extra[@]}"
fi
"$PYTHON" -m results_lib.cpu_sweeps best cpu/uuid_mora --results "$RESULTS" --seeds 1,2 --where r=8 | while read -r overrides; do
  echo "== cpu/uuid_mora: seeds at the best lr: ${overrides}"
  # shellcheck disable=SC2086
  "$PYTHON" train.py -m experiment=cpu/uuid_mora ${overrides} "results_dir=$RESULTS/runs" "${extra[@]}" </dev/null
done

if [ "${SKIP_BUILD:-0}" != "1" ]; then
  "$PYTHON" scripts/make_tables.py --results "$RESULTS"
  "$PYTHON" scripts/make_figures.py --results "$RESULTS"
fi
