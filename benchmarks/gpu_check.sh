#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py) on one GPU, stopped after 8 minutes.
set -u
cd "$(dirname "$0")/.."
nvidia-smi -L 2>/dev/null || echo "nvidia-smi not found"
exec timeout 480 python3 benchmarks/gpu_check.py "$@"
