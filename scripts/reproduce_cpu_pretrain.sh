#!/usr/bin/env bash
# CPU reproduction, part "pretraining from scratch" (paper §5.3, Table 3) on model=tiny_scratch: LoRA, MoRA, ReLoRA, ReMoRA at
# r = 16 (configs/experiment/cpu/pretrain.yaml).
#   Phase 1: each method's lr sweep (1e-3, 3e-3, 1e-2; seed 42) as one Hydra multirun.
#   Phase 2: each method at its best phase-1 lr (lowest final val ppl) with seeds 43, 44 (3 seeds in all).
# Then rebuilds results/tables and results/figures.
#
#   [RESULTS=results] [PYTHON=python] scripts/reproduce_cpu_pretrain.sh [-- extra Hydra overrides for every run]
#
# Resumable (every run has resume=auto). Cost: 12 phase-1 + 8 phase-2 runs of ~3-4 min each on 2 cores.
# SKIP_BUILD=1 skips rebuilding the tables and figures at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/cpu_sweep_phases.sh
. scripts/cpu_sweep_phases.sh
split_args "$@"

two_phase_sweep cpu/pretrain 43,44
build_results
