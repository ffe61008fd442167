#!/usr/bin/env bash
# CPU reproduction, part "compression/decompression ablation" (paper Table 4; docs/PAPER.md "Table 4"): MoRA of every type at r = 8 on UUID
# memorization, model=tiny (configs/experiment/cpu/ablation_mora_types.yaml).
#   Phase 1: lr sweep (3 values, seed 0) of the six non-RoPE types as one Hydra multirun. The RoPE row is MoRA r = 8
#            of experiment=cpu/uuid_mora (mora_type auto = rope, the same setting); its r = 8 runs are made here only
#            when reproduce_cpu_uuid.sh has not made them.
#   Phase 2: each type at its best phase-1 lr with the reporting seeds 1, 2, 3 (the tables leave seed 0, which chose
#            the lr, out of the reported mean).
# Then rebuilds results/tables and results/figures.
#
#   [RESULTS=results] [PYTHON=python] scripts/reproduce_cpu_ablation.sh [-- extra Hydra overrides for every run]
#
# Resumable like reproduce_cpu_uuid.sh. Cost: 18 (+3 for RoPE) phase-1 and 18 (+3) phase-2 runs of ~3-4 min each.
# SKIP_BUILD=1 skips rebuilding the tables and figures at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/cpu_sweep_phases.sh
. scripts/cpu_sweep_phases.sh
split_args "$@"

two_phase_sweep cpu/ablation_mora_types 1,2,3
# The RoPE row: MoRA r = 8 (mora_type auto = rope) of the UUID part, run here only when absent.
two_phase_sweep cpu/uuid_mora 1,2,3 --where r=8
build_results
