// Host-only argument checks for the CUDA kernels: plain C++, no CUDA runtime call.
#include "dpo_logratio.h"

#include <sstream>

namespace rmbf {

namespace {
std::string fmt_shape(int64_t a, int64_t b) {
  std::ostringstream s;
  s << "[" << a << ", " << b << "]";
  return s.str();
}
}  // namespace

std::string check_params(const DpoLogratioParams& p) {
  if (p.dtype != kFloat32 && p.dtype != kFloat16 && p.dtype != kBFloat16)
    return "bad logits dtype code " + std::to_string(p.dtype) + " (0=float32, 1=float16, 2=bfloat16)";
  if (p.label_dtype != kInt64 && p.label_dtype != kInt32)
    return "bad labels dtype code " + std::to_string(p.label_dtype) + " (0=int64, 1=int32)";
  if (p.T < 0 || p.V <= 0) return "policy logits shape " + fmt_shape(p.T, p.V) + " must have T >= 0, V > 0";
  if (p.T > 2147483647LL) return "T = " + std::to_string(p.T) + " exceeds the grid limit 2^31 - 1";
  if (p.n_labels != p.T)
    return "labels length " + std::to_string(p.n_labels) + " != T = " + std::to_string(p.T);
  const bool has_ref = p.ref != nullptr;
  if (has_ref && (p.T_ref != p.T || p.V_ref != p.V))
    return "ref logits shape " + fmt_shape(p.T_ref, p.V_ref) + " != policy logits shape " + fmt_shape(p.T, p.V);
  if (p.stride_pt < 0 || p.stride_pv < 0 || p.stride_rt < 0 || p.stride_rv < 0 || p.stride_lab < 0)
    return "negative strides are not supported";
  if (p.T == 0) return "";  // nothing to read or write: null pointers are fine
  if (p.pol == nullptr) return "policy logits pointer is null";
  if (p.labels == nullptr) return "labels pointer is null";
  if (p.out_pol == nullptr) return "output pointer is null";
  if (has_ref != (p.out_ref != nullptr) || has_ref != (p.out_diff != nullptr))
    return "ref logits, ref output and diff output must be all given or all null";
  return "";
}

}  // namespace rmbf
