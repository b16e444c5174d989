// Kernel A in CUDA C++: per-token label log-probs of a policy (and optionally a reference) model.
// No torch: raw device pointers, strides in elements, dtype codes and a stream handle cross the
// Python boundary (rmbench_fast/logprobs.py: cuda_dpo_logratio).
#pragma once

#include <cstdint>
#include <string>

namespace rmbf {

// Logits dtype codes (must match CUDA_DTYPE_CODES in rmbench_fast/logprobs.py).
enum DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };
// Label dtype codes (must match CUDA_LABEL_CODES).
enum LabelType : int { kInt64 = 0, kInt32 = 1 };

// All arguments of one launch. Strides are in elements, not bytes.
struct DpoLogratioParams {
  const void* pol = nullptr;     // [T, V] policy logits, dtype `dtype`
  const void* ref = nullptr;     // [T, V] reference logits, or nullptr (no reference)
  const void* labels = nullptr;  // [T] labels, dtype `label_dtype`
  float* out_pol = nullptr;      // [T] fp32: log pi(y_t), 0 where ignored
  float* out_ref = nullptr;      // [T] fp32: log pi_ref(y_t) (nullptr iff ref is nullptr)
  float* out_diff = nullptr;     // [T] fp32: out_pol - out_ref (nullptr iff ref is nullptr)
  int dtype = kFloat32;
  int label_dtype = kInt64;
  int64_t T = 0, V = 0;          // policy logits shape
  int64_t T_ref = 0, V_ref = 0;  // reference logits shape (checked equal to T, V when ref given)
  int64_t n_labels = 0;          // labels length (checked equal to T)
  int64_t stride_pt = 0, stride_pv = 1;
  int64_t stride_rt = 0, stride_rv = 1;
  int64_t stride_lab = 1;
  int64_t ignore_index = -100;
  std::uintptr_t stream = 0;     // cudaStream_t as an integer (0 = legacy default stream)
};

// Host-only argument checks (no CUDA call): returns "" if fine, else a one-line reason.
// Separate from the launch so they are testable on machines without a GPU.
std::string check_params(const DpoLogratioParams& p);

// Checks p (check_params, then cudaPointerGetAttributes on every pointer: each must be device
// or managed memory), then launches on p.stream. Throws std::invalid_argument for bad arguments,
// std::runtime_error for CUDA errors (no driver, no device, launch failure).
void dpo_logratio_launch(const DpoLogratioParams& p);

}  // namespace rmbf
