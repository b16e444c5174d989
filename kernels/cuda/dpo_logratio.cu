// Kernel A in CUDA C++: one block per token row, block-wide online log-sum-exp in fp32.
#include "dpo_logratio.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <stdexcept>
#include <string>

namespace rmbf {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

// Running (max, sum of exp(x - max)); m = -inf means "empty" (s = 0).
struct Lse {
  float m, s;
};

__device__ __forceinline__ Lse lse_merge(Lse a, Lse b) {
  if (a.m == -INFINITY) return b;
  if (b.m == -INFINITY) return a;
  const float m = fmaxf(a.m, b.m);
  return {m, a.s * __expf(a.m - m) + b.s * __expf(b.m - m)};
}

// Block-wide log-sum-exp of one row: each thread folds a strided subset of the columns online
// (one exp per element), then warps and finally the block merge their (m, s) pairs.
template <typename T>
__device__ float row_lse(const T* __restrict__ row, int64_t V, int64_t stride_v, Lse* smem) {
  Lse acc{-INFINITY, 0.f};
  for (int64_t v = threadIdx.x; v < V; v += kThreads) {
    const float x = to_float(row[v * stride_v]);
    if (x > acc.m) {
      acc.s = (acc.m == -INFINITY ? 0.f : acc.s * __expf(acc.m - x)) + 1.f;
      acc.m = x;
    } else if (x != -INFINITY) {
      acc.s += __expf(x - acc.m);
    }
  }
  for (int off = 16; off > 0; off >>= 1) {
    Lse o{__shfl_xor_sync(0xffffffffu, acc.m, off), __shfl_xor_sync(0xffffffffu, acc.s, off)};
    acc = lse_merge(acc, o);
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) smem[warp] = acc;
  __syncthreads();
  Lse total{-INFINITY, 0.f};
  for (int w = 0; w < kWarps; ++w) total = lse_merge(total, smem[w]);  // every thread, same order
  __syncthreads();  // smem is reused by the next call
  return total.m + logf(total.s);
}

template <typename T, typename L>
__global__ void __launch_bounds__(kThreads) dpo_logratio_kernel(DpoLogratioParams p) {
  __shared__ Lse smem[kWarps];
  const int64_t t = blockIdx.x;
  const int64_t lab = static_cast<int64_t>(static_cast<const L*>(p.labels)[t * p.stride_lab]);
  const bool has_ref = p.ref != nullptr;
  if (lab == p.ignore_index) {  // the whole block agrees: uniform early exit, no row read
    if (threadIdx.x == 0) {
      p.out_pol[t] = 0.f;
      if (has_ref) p.out_ref[t] = 0.f, p.out_diff[t] = 0.f;
    }
    return;
  }
  const bool in_range = lab >= 0 && lab < p.V;
  const T* pol = static_cast<const T*>(p.pol) + t * p.stride_pt;
  const float lse = row_lse(pol, p.V, p.stride_pv, smem);
  const float lp = in_range ? to_float(pol[lab * p.stride_pv]) - lse : NAN;
  float lpr = 0.f;
  if (has_ref) {
    const T* ref = static_cast<const T*>(p.ref) + t * p.stride_rt;
    const float lse_r = row_lse(ref, p.V, p.stride_rv, smem);
    lpr = in_range ? to_float(ref[lab * p.stride_rv]) - lse_r : NAN;
  }
  if (threadIdx.x == 0) {
    p.out_pol[t] = lp;
    if (has_ref) p.out_ref[t] = lpr, p.out_diff[t] = lp - lpr;
  }
}

void check_device_pointer(const void* ptr, const char* name) {
  if (ptr == nullptr) return;
  cudaPointerAttributes attr{};
  const cudaError_t err = cudaPointerGetAttributes(&attr, ptr);
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear the sticky-free error so later calls are unaffected
    throw std::runtime_error(std::string("rmbench_fast._cuda: cannot inspect ") + name +
                             " pointer: " + cudaGetErrorString(err));
  }
  if (attr.type != cudaMemoryTypeDevice && attr.type != cudaMemoryTypeManaged)
    throw std::invalid_argument(std::string("rmbench_fast._cuda: ") + name +
                                " is not a CUDA device pointer (host memory passed to the CUDA kernel?)");
}

template <typename T, typename L>
void launch_typed(const DpoLogratioParams& p) {
  auto stream = reinterpret_cast<cudaStream_t>(p.stream);
  dpo_logratio_kernel<T, L><<<static_cast<unsigned>(p.T), kThreads, 0, stream>>>(p);
}

template <typename T>
void launch_labels(const DpoLogratioParams& p) {
  if (p.label_dtype == kInt64)
    launch_typed<T, int64_t>(p);
  else
    launch_typed<T, int32_t>(p);
}

}  // namespace

void dpo_logratio_launch(const DpoLogratioParams& p) {
  const std::string why = check_params(p);
  if (!why.empty()) throw std::invalid_argument("rmbench_fast._cuda.dpo_logratio: " + why);
  if (p.T == 0) return;
  check_device_pointer(p.pol, "policy logits");
  check_device_pointer(p.ref, "ref logits");
  check_device_pointer(p.labels, "labels");
  check_device_pointer(p.out_pol, "output");
  check_device_pointer(p.out_ref, "ref output");
  check_device_pointer(p.out_diff, "diff output");
  switch (p.dtype) {
    case kFloat32: launch_labels<float>(p); break;
    case kFloat16: launch_labels<__half>(p); break;
    default: launch_labels<__nv_bfloat16>(p); break;
  }
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("rmbench_fast._cuda.dpo_logratio launch failed: ") + cudaGetErrorString(err));
}

}  // namespace rmbf
