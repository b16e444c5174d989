#!/usr/bin/env bash
# The engine on a GPU in one command (5 minutes or less on an H200); see bench/gpu_check.py.
#   bash bench/gpu_check.sh --prepare      # here, on the CPU: records + tokenizer into .gpu_data/
#   bash bench/gpu_check.sh [OUT_DIR [--shape qwen3-8b]]  # on the GPU machine: build, then JSON into
#                                          # OUT_DIR (default bench/results; speed shape llama-3.1-8b)
#   bash bench/gpu_check.sh --dry-run [OUT_DIR [--shape S]]  # CI: tiny shapes on the CPU, same code path
#   bash bench/gpu_check.sh --build-only [OUT_DIR]  # the build step alone (its test)
# Device tool: run(command="bash bench/gpu_check.sh $OUT", carry=[".gpu_data"], timeout_s=420)
#
# The package is built here, before Python starts: an editable install's import hook is read when
# an interpreter starts, so a Python that installed the package in a subprocess could not import
# it. The build tries the C++ core with the CUDA kernel (sm_90 only, no package index: the
# machine's torch, pybind11 and scikit-build-core); if that fails, the core alone (RMBF_CUDA=OFF,
# its own build folder), so every stage but the CUDA kernel's still runs. What was built goes to
# OUT_DIR/build.env (key=value lines), the logs beside it; gpu_check.py's build stage reports them.
# RMBF_GPU_CHECK_PIP replaces "python -m pip" (the test's stand-in).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1

build() {  # $1: out dir. Never fails the script: what failed is in build.env.
  local out=$1 t0 cuda=failed cpu=failed
  local -a pip
  read -r -a pip <<<"${RMBF_GPU_CHECK_PIP:-python -m pip}"
  local -a install=(install -q --no-build-isolation --no-deps -e .)
  mkdir -p "$out"
  t0=$(date +%s)
  if RMBF_CUDA=ON SKBUILD_CMAKE_DEFINE="CMAKE_CUDA_ARCHITECTURES=90;RMBF_CUDA=ON" \
      timeout 300 "${pip[@]}" "${install[@]}" >"$out/build-cuda.log" 2>&1; then
    cuda=ok cpu="ok (with the CUDA kernel)"
  elif RMBF_CUDA=OFF SKBUILD_CMAKE_DEFINE="RMBF_CUDA=OFF" SKBUILD_BUILD_DIR="build/cpu-only" \
      timeout 240 "${pip[@]}" "${install[@]}" >"$out/build-cpu.log" 2>&1; then
    cpu=ok
  fi
  printf 'cuda_build=%s\ncpu_build=%s\ncuda_archs=90\nseconds=%s\ncommand=%s %s\n' \
    "$cuda" "$cpu" "$(($(date +%s) - t0))" "${pip[*]}" "${install[*]}" >"$out/build.env"
  echo "[build.sh] cuda_build=$cuda cpu_build=$cpu ($(($(date +%s) - t0)) s)"
}

case "${1:-}" in
  --prepare) exec python bench/gpu_check.py --prepare ;;
  --dry-run)
    out=${2:-bench/results}
    mkdir -p "$out"
    printf 'cuda_build=skipped\ncpu_build=skipped (dry run: the package is installed already)\n' >"$out/build.env"
    exec python bench/gpu_check.py --dry-run --out "$out" "${@:3}"
    ;;
  --build-only) build "${2:-bench/results}" ;;
  *)
    out=${1:-bench/results}
    build "$out"
    exec python bench/gpu_check.py --out "$out" "${@:2}"
    ;;
esac
