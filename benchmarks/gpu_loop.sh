#!/usr/bin/env bash
# The prepared GPU run of benchmarks/gpu_loop.py (benchmarks/README.md "The training loop on a GPU").
#
#   benchmarks/gpu_loop.sh --fetch-wheels   here: download benchmarks/gpu_carry.txt into .whl/
#   benchmarks/gpu_loop.sh --dry-run        here: check the carried wheels, then every step on
#                                           the CPU at a small size, importing only what the GPU
#                                           machine has (device_packages.txt) or is carried
#   benchmarks/gpu_loop.sh [ARGS...]        on the GPU machine (carry .whl): install the wheels
#                                           into /tmp/site, then the full run; ARGS go to
#                                           gpu_loop.py (default: 24 cases, 6 epochs, 3 loops)
#
# Results: printed, and written to $OUT/gpu_loop.json when $OUT is set (the device tool's
# folder that comes back), else to gpu_loop.json in the current folder.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=${WHEELS:-.whl}
PYTHON=${PYTHON:-python3}
export PYTHONUNBUFFERED=1

case "${1:-}" in
--fetch-wheels)
    mkdir -p "$WHEELS"
    grep -q "^/$WHEELS/\$" .git/info/exclude 2>/dev/null || echo "/$WHEELS/" >>.git/info/exclude
    # The GPU machine's Python is 3.12 on x86-64: fetch for it, not for this interpreter.
    "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$WHEELS" \
        -r <(sed 's/#.*//' benchmarks/gpu_carry.txt | grep -v '^\s*$')
    du -ch "$WHEELS"/*.whl | tail -1
    ;;
--dry-run)
    shift
    "$PYTHON" benchmarks/gpu_loop.py --check-carry "$WHEELS" --device cpu --small \
        --cases 8 --epochs 3 --skip-epochs 1 --bare-steps 3 --cores 2 \
        --allow-only benchmarks/device_packages.txt --allow-only benchmarks/gpu_carry.txt \
        --json "${OUT:-.}/gpu_loop.json" "$@"
    ;;
*)
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site "$WHEELS"/*.whl
    export PYTHONPATH=/tmp/site:$PWD/src
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
    "$PYTHON" benchmarks/gpu_loop.py --check-carry "$WHEELS" --json "${OUT:-.}/gpu_loop.json" "$@"
    ;;
esac
