#!/usr/bin/env bash
# The engine on a GPU in one command (5 minutes or less on an H200); see bench/gpu_check.py.
#   bash bench/gpu_check.sh --prepare      # here, on the CPU: records + tokenizer into .gpu_data/
#   bash bench/gpu_check.sh [OUT_DIR [--shape qwen3-8b]]  # on the GPU machine: JSON into OUT_DIR
#                                          # (default bench/results; speed shape default llama-3.1-8b)
#   bash bench/gpu_check.sh --dry-run [OUT_DIR [--shape S]]  # CI: tiny shapes on the CPU, same code path
# Device tool: run(command="bash bench/gpu_check.sh $OUT", carry=[".gpu_data"], timeout_s=420)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
case "${1:-}" in
  --prepare) exec python bench/gpu_check.py --prepare ;;
  --dry-run) exec python bench/gpu_check.py --dry-run --out "${2:-bench/results}" "${@:3}" ;;
  *) exec python bench/gpu_check.py --out "${1:-bench/results}" "${@:2}" ;;
esac
