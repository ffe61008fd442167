#!/usr/bin/env bash
# The prepared GPU check: one command, at most ~8 minutes on one H200, on a bare machine that has PyTorch (possibly
# another version than the pin, e.g. 2.11 + CUDA 13), transformers, peft, safetensors, pytest and numpy.
#
#   bash scripts/gpu_check.sh --fetch-wheels   # HERE (with PyPI): download scripts/gpu_wheels.txt into .whl/
#   bash scripts/gpu_check.sh --dry-run        # anywhere: print every step, its time limit and its output file
#   bash scripts/gpu_check.sh [--out DIR]      # on the GPU machine (carry .whl): run it all, write DIR/gpu_*.md
#
# Steps (each under its own time limit; a failed step is reported and the others still run; exit 1 if any failed):
#   env       versions, GPU, the library importing                      → gpu_check.md (the summary, with each step)
#   tests     MoRA tests on CUDA in fp32 and in bf16 (MORA_TEST_DEVICE=cuda, MORA_TEST_DTYPE, tests/gpu -m gpu)
#   adapters  bench_adapters on CUDA, bf16, the LLaMA-2-7B shapes, r = 8 and 256, vs PEFT LoRA and the floor
#             (once per MORA_BRANCH_IMPLEMENTATION value in auto/kernels/equations when the library reads MORA_BRANCH_IMPLEMENTATION, else once)
#   train     bench_train on CUDA, bf16 autocast: llama_250m with LoRA and MoRA (sharing, rope), tokens/s, peak memory
#   goals     the issue's goals checked against the tables just written (scripts/gpu_goals.py)
set -u -o pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
OUT_DIR="$REPO/results/bench"
DRY_RUN=0
FETCH=0
WHEELS="${MORA_WHEELS_DIR:-$REPO/.whl}"
PYTHON="${PYTHON:-python3}"
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --fetch-wheels) FETCH=1 ;;
        --out) shift; OUT_DIR="${1:?--out needs a folder}" ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

# ------------------------------------------------------------------------------------------------ --fetch-wheels
if [ "$FETCH" = 1 ]; then
    mkdir -p "$WHEELS"
    # the wheels are carried to the GPU machine, never committed: ignore them locally (the device tool's advice)
    if git_dir="$(git rev-parse --git-common-dir 2>/dev/null)"; then
        mkdir -p "$git_dir/info"
        grep -qsx '/.whl/' "$git_dir/info/exclude" || echo '/.whl/' >> "$git_dir/info/exclude"
    fi
    grep -v '^\s*#' scripts/gpu_wheels.txt | grep -v '^\s*$' | while read -r requirement; do
        # pure-Python wheels are platform independent; an sdist-only release (antlr4 4.9.3) is built into one here
        "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation py \
            -d "$WHEELS" "$requirement" 2>/dev/null \
        || "$PYTHON" -m pip wheel -q --no-deps -w "$WHEELS" "$requirement" \
        || { echo "error: could not fetch $requirement" >&2; exit 1; }
    done || exit 1
    ls -1 "$WHEELS"
    exit 0
fi

# ----------------------------------------------------------------------------------------------------- the steps
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=disabled TOKENIZERS_PARALLELISM=false
export PYTHONUNBUFFERED=1
SUMMARY="$OUT_DIR/gpu_check.md"
LOG="$OUT_DIR/gpu_check.log"
FAILED=()
LIMITS_TOTAL=0
# The MORA_BRANCH_IMPLEMENTATION forms to benchmark: all three when the library reads the switch, else the library's only one.
if grep -rqs "MORA_BRANCH_IMPLEMENTATION" moRA/; then KERNEL_FORMS=(auto kernels equations); else KERNEL_FORMS=(unset); fi

step() {  # step NAME LIMIT_S COMMAND… : run COMMAND under a time limit, log it, record its status in the summary
    local name="$1" limit="$2"; shift 2
    LIMITS_TOTAL=$((LIMITS_TOTAL + limit))
    if [ "$DRY_RUN" = 1 ]; then
        printf '[dry-run] %-10s (≤ %3ss)  %s\n' "$name" "$limit" "$*"
        return 0
    fi
    local start=$SECONDS status
    echo "=== $name: $*" | tee -a "$LOG"
    timeout --kill-after=10 "$limit" "$@" >> "$LOG" 2>&1
    status=$?
    local took=$((SECONDS - start))
    if [ $status -eq 0 ]; then
        status=ok
        echo "| $name | ok | ${took} s | \`$*\` |" >> "$SUMMARY"
    else
        case $status in 124|137) status="timed out after ${limit} s" ;; *) status="failed (exit $status)" ;; esac
        echo "| $name | **$status** | ${took} s | \`$*\` |" >> "$SUMMARY"
        FAILED+=("$name")
        tail -n 25 "$LOG" | sed 's/^/    /'
    fi
    echo "=== $name: $status in ${took} s" | tee -a "$LOG"
}

if [ "$DRY_RUN" = 1 ]; then
    echo "[dry-run] output folder: $OUT_DIR (gpu_check.md summary, gpu_check.log, gpu_adapters_bf16*.md, gpu_train_bf16.md)"
    if [ -d "$WHEELS" ]; then
        echo "[dry-run] would install $(ls "$WHEELS"/*.whl 2>/dev/null | wc -l) carried wheel(s) from $WHEELS into /tmp/site"
    else
        echo "[dry-run] no $WHEELS: would run without carried wheels (make them here: --fetch-wheels)"
    fi
    echo "[dry-run] MORA_BRANCH_IMPLEMENTATION forms to benchmark: ${KERNEL_FORMS[*]}"
else
    mkdir -p "$OUT_DIR"
    : > "$LOG"
    if [ -d "$WHEELS" ] && ls "$WHEELS"/*.whl > /dev/null 2>&1; then
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            "$WHEELS"/*.whl >> "$LOG" 2>&1 || { echo "error: installing the carried wheels failed (see $LOG)" >&2; exit 1; }
        export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
    fi
    {
        echo "# GPU check"
        echo
        echo "Written by \`bash scripts/gpu_check.sh\` on $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)."
        echo
        "$PYTHON" - <<'EOF'
import platform, torch
print(f"- Python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"cuDNN {torch.backends.cudnn.version()}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"- GPU: {p.name}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs")
else:
    print("- GPU: none visible to torch")
for name in ("transformers", "peft", "accelerate", "safetensors", "omegaconf"):
    try:
        print(f"- {name} {__import__(name).__version__}")
    except Exception as error:  # noqa: BLE001  (a report line, not a failure)
        print(f"- {name}: not importable ({type(error).__name__})")
EOF
        echo
        echo "| step | status | time | command |"
        echo "|---|---|---|---|"
    } > "$SUMMARY"
fi

step env "30" "$PYTHON" -c "import torch, moRA, runner.models, runner.adapters; assert torch.cuda.is_available(), 'no CUDA device'; print('moRA imports; CUDA', torch.cuda.get_device_name(0))"

PYTEST=("$PYTHON" -m pytest -q -p no:cacheprovider)
step tests_fp32 "75" env MORA_TEST_DEVICE=cuda MORA_TEST_DTYPE=fp32 "${PYTEST[@]}" \
    tests/moRA/test_precision.py tests/moRA/test_gradient_checkpointing.py tests/gpu
step tests_bf16 "40" env MORA_TEST_DEVICE=cuda MORA_TEST_DTYPE=bf16 "${PYTEST[@]}" \
    tests/moRA/test_gradient_checkpointing.py
step fsdp "55" "${PYTEST[@]}" -m gpu tests/distributed/test_fsdp.py
step library "30" "${PYTEST[@]}" tests/moRA/test_operators.py

for form in "${KERNEL_FORMS[@]}"; do
    case "$form" in
        unset) kernels=(-u MORA_BRANCH_IMPLEMENTATION); suffix=""; repeats=15; budget=60 ;;
        auto) kernels=(MORA_BRANCH_IMPLEMENTATION=auto); suffix=""; repeats=15; budget=60 ;;
        *) kernels=("MORA_BRANCH_IMPLEMENTATION=$form"); suffix="_$form"; repeats=7; budget=35 ;;
    esac
    step "adapters$suffix" "$budget" env "${kernels[@]}" "$PYTHON" scripts/bench_adapters.py --device cuda \
        --dtype bf16 --ranks 8,256 --repeats "$repeats" --out "$OUT_DIR/gpu_adapters_bf16${suffix}.md"
done

step train "110" "$PYTHON" scripts/bench_train.py --device cuda --dtype bf16 --models llama_250m --r 8 128 \
    --batch 8 --seq 512 --warmup 3 --steps 10 --out "$OUT_DIR/gpu_train_bf16.md"

step goals "10" "$PYTHON" scripts/gpu_goals.py --adapters "$OUT_DIR/gpu_adapters_bf16.md" \
    --train "$OUT_DIR/gpu_train_bf16.md" --summary "$SUMMARY"

if [ "$DRY_RUN" = 1 ]; then
    echo "[dry-run] time limits add up to at most ${LIMITS_TOTAL} s"
    exit 0
fi
echo "summary: $SUMMARY"
cat "$SUMMARY"
if [ ${#FAILED[@]} -gt 0 ]; then
    echo "error: GPU check steps failed: ${FAILED[*]} (log: $LOG)" >&2
    exit 1
fi
