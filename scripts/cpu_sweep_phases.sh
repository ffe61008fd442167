# shellcheck shell=bash
# Shared by scripts/reproduce_cpu_*.sh (sourced, not run): the two phases of one CPU sweep file.
#   two_phase_sweep <experiment> <seeds> [--where KEY=VALUE ...]
#     Phase 1: the file's grid (hydra.sweeper.params: every lr, the file's seed) as one Hydra multirun, skipped when
#              every grid point has a record. Phase 2: each method at its best phase-1 lr (results_lib.cpu_sweeps)
#              with <seeds>, one multirun per method still lacking one of them. Every run gets resume=auto: a point
#              with a record is skipped, an interrupted one continues from its last complete checkpoint.
#   build_results: rebuild results/tables and results/figures (unless SKIP_BUILD=1).
#   split_args "$@": the words before "--" into the array `positional`, those after it into `extra` (Hydra
#     overrides for every run).
# Sourcing it sets the offline environment and the defaults PYTHON=python, RESULTS=results (records go to
# $RESULTS/runs; tables and figures to $RESULTS/tables, $RESULTS/figures).
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=offline
PYTHON=${PYTHON:-python}
RESULTS=${RESULTS:-results}
positional=()
extra=()

split_args() {
  positional=()
  extra=()
  while [ $# -gt 0 ]; do
    if [ "$1" = "--" ]; then shift; extra=("$@"); return; fi
    positional+=("$1"); shift
  done
}

two_phase_sweep() {
  local experiment=$1 seeds=$2
  shift 2
  local where=("$@") selector=() item
  for item in "${where[@]}"; do
    [ "$item" = "--where" ] && continue
    selector+=("${item}")
  done
  [ -f "configs/experiment/${experiment}.yaml" ] || { echo "error: no experiment file configs/experiment/${experiment}.yaml" >&2; return 2; }
  local missing
  missing=$("$PYTHON" -m results_lib.cpu_sweeps missing "$experiment" --results "$RESULTS" "${where[@]}")
  if [ "$missing" != "0" ]; then
    echo "== ${experiment}: lr sweep (${missing} runs missing)"
    "$PYTHON" train.py -m "experiment=${experiment}" "${selector[@]}" resume=auto "results_dir=$RESULTS/runs" "${extra[@]}"
  else
    echo "== ${experiment}: lr sweep complete"
  fi
  "$PYTHON" -m results_lib.cpu_sweeps best "$experiment" --results "$RESULTS" --seeds "$seeds" "${where[@]}" \
    | while read -r overrides; do
      echo "== ${experiment}: seeds at the best lr: ${overrides}"
      # shellcheck disable=SC2086  # the overrides are space-separated key=value words
      "$PYTHON" train.py -m "experiment=${experiment}" ${overrides} resume=auto "results_dir=$RESULTS/runs" "${extra[@]}" </dev/null
    done
}

build_results() {
  if [ "${SKIP_BUILD:-0}" != "1" ]; then
    "$PYTHON" scripts/make_tables.py --results "$RESULTS"
    "$PYTHON" scripts/make_figures.py --results "$RESULTS"
  fi
}
