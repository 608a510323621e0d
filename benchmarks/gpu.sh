#!/usr/bin/env bash
# Everything a lent GPU machine should measure, in one call of at most 8 minutes on one H100, with
# no network (and maybe no Ray): the environment, the CUDA tests, the trainer's throughput
# (ResNet-18, CIFAR stem, B = 512, bf16, our loop against a plain PyTorch loop), the regularizer
# modules' steps, and a 2-trial sweep on the GPU (skipped, with a line saying so, without Ray).
# Prints JSON lines (docs/design.md format); each step ends with a `gpu.sh` line giving its exit
# code and seconds. Exits 0 when every step that ran passed.
#
#   bash benchmarks/gpu.sh [CIFAR_DIR]           # CIFAR-10 parquet dir (default ../shared/data/cifar10)
#   GPU_SH_DRY_RUN=1 bash benchmarks/gpu.sh      # every step small on the CPU, digits data (the tests run this)
#   GPU_SH_TESTS="tests/test_targets.py" ...     # the CUDA tests of these files only (default: all of tests/)
#
# With the device tool: copy the data into the tree (an ignored path) and carry it, e.g.
#   mkdir -p .gpu-data && cp -r ../shared/data/cifar10 .gpu-data/   # then run with carry [".gpu-data"]:
#   bash benchmarks/gpu.sh .gpu-data/cifar10 > $OUT/gpu.jsonl
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
DATA="${1:-../shared/data/cifar10}"
DRY="${GPU_SH_DRY_RUN:-0}"
PY="${PYTHON:-python}"
failed=0

line() {  # line CASE METRIC VALUE [EXTRA_JSON_FIELDS]
    printf '{"bench": "gpu.sh", "case": "%s", "metric": "%s", "value": %s, "device": "%s"%s}\n' \
        "$1" "$2" "$3" "$device" "${4:+, $4}"
}

step() {  # step NAME LIMIT_S json|log COMMAND...: one step under a time limit, and how it ended;
    # a `log` step's own output is not JSON lines: it goes to stderr
    local name=$1 limit=$2 output=$3 start rc
    shift 3
    start=$(date +%s)
    if [ "$output" = json ]; then timeout "$limit" "$@"; else timeout "$limit" "$@" >&2; fi
    rc=$?
    line "$name" exit_code "$rc" "\"seconds\": $(($(date +%s) - start))"
    [ "$rc" = 0 ] || failed=1
}

if [ "$DRY" = 1 ]; then
    device=cpu
else
    device=cuda
    if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
        line "environment" error '"no CUDA device: run with GPU_SH_DRY_RUN=1 on a CPU"'
        exit 2
    fi
    [ -f "$DATA/train.parquet" ] || { line "environment" error "\"no CIFAR-10 parquet in $DATA\""; exit 2; }
fi

"$PY" - "$device" <<'EOF'
import json, sys, torch
device = sys.argv[1]
info = {"torch": torch.__version__, "cuda": torch.version.cuda}
if device == "cuda":
    info["gpu"] = torch.cuda.get_device_name(0)
    info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    info["bf16"] = torch.cuda.is_bf16_supported()
try:
    import ray
    info["ray"] = ray.__version__
except ImportError:
    info["ray"] = None
print(json.dumps({"bench": "gpu.sh", "case": "environment", "metric": "versions", "value": None, "device": device, **info}))
EOF

# 1. The CUDA tests (they skip on a CPU: the dry run checks the command).
# shellcheck disable=SC2086  # GPU_SH_TESTS: test paths, space separated (default: all of tests/)
step "cuda tests" 240 log "$PY" -m pytest -q -m cuda -p no:cacheprovider --no-header -o addopts="" ${GPU_SH_TESTS:-tests}

# 2. The trainer: our loop (in-process, as a one-worker trial trains) against a plain loop.
if [ "$DRY" = 1 ]; then
    step "trainer" 240 json "$PY" benchmarks/trainer.py --device cpu --batch 64 --epochs 2 --steps 2 --max-train 256 \
        --compare-precision
else
    step "trainer" 300 json "$PY" benchmarks/trainer.py --cifar "$DATA" --device cuda --backbone resnet18 \
        --batch 512 --precision bf16 --epochs 3 --steps 30
fi

# 3. The regularizer modules' steps against the plain formulas.
if [ "$DRY" = 1 ]; then
    step "regularizers" 240 json "$PY" benchmarks/regularizers.py --device cpu --quick --repeats 1
else
    step "regularizers" 120 json "$PY" benchmarks/regularizers.py --device cuda --quick
fi

# 4. A 2-trial sweep, each trial on the GPU (Ray is not on every lent machine).
if "$PY" -c 'import ray, ray.tune, optuna, mlflow' 2>/dev/null; then
    work=$(mktemp -d)
    gpus=1
    [ "$DRY" = 1 ] && gpus=0
    step "2-trial sweep" 240 log "$PY" sweeps/rectified.py --smoke --address local --seed 0 \
        --gpus-per-worker "$gpus" --tracking-uri "sqlite:///$work/mlflow.db" --storage-path "$work/ray" \
        --experiment gpu-check
    rm -rf "$work"
else
    line "2-trial sweep" skipped '"ray, optuna or mlflow is not installed here"'
fi
exit "$failed"
