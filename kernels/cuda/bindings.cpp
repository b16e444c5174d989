// pybind11 bindings of the CUDA kernels (module rmbench_fast._cuda). No torch: Python passes
// tensor.data_ptr() integers, dtype codes, shapes, strides (elements) and the stream handle.
#include <pybind11/pybind11.h>

#include <cstdint>

#include "dpo_logratio.h"

namespace py = pybind11;

namespace {

rmbf::DpoLogratioParams make_params(std::uintptr_t pol, std::uintptr_t ref, std::uintptr_t labels,
                                    std::uintptr_t out_pol, std::uintptr_t out_ref, std::uintptr_t out_diff,
                                    int dtype, int label_dtype, int64_t T, int64_t V, int64_t T_ref,
                                    int64_t V_ref, int64_t n_labels, int64_t s_pt, int64_t s_pv, int64_t s_rt,
                                    int64_t s_rv, int64_t s_lab, int64_t ignore_index, std::uintptr_t stream) {
  rmbf::DpoLogratioParams p;
  p.pol = reinterpret_cast<const void*>(pol);
  p.ref = reinterpret_cast<const void*>(ref);
  p.labels = reinterpret_cast<const void*>(labels);
  p.out_pol = reinterpret_cast<float*>(out_pol);
  p.out_ref = reinterpret_cast<float*>(out_ref);
  p.out_diff = reinterpret_cast<float*>(out_diff);
  p.dtype = dtype;
  p.label_dtype = label_dtype;
  p.T = T, p.V = V, p.T_ref = T_ref, p.V_ref = V_ref, p.n_labels = n_labels;
  p.stride_pt = s_pt, p.stride_pv = s_pv, p.stride_rt = s_rt, p.stride_rv = s_rv, p.stride_lab = s_lab;
  p.ignore_index = ignore_index;
  p.stream = stream;
  return p;
}

}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "rmbench_fast CUDA kernels (raw pointers; see rmbench_fast/logprobs.py)";
  m.attr("DTYPE_FLOAT32") = static_cast<int>(rmbf::kFloat32);
  m.attr("DTYPE_FLOAT16") = static_cast<int>(rmbf::kFloat16);
  m.attr("DTYPE_BFLOAT16") = static_cast<int>(rmbf::kBFloat16);
  m.attr("LABEL_INT64") = static_cast<int>(rmbf::kInt64);
  m.attr("LABEL_INT32") = static_cast<int>(rmbf::kInt32);

  m.def(
      "check_args",
      [](std::uintptr_t pol, std::uintptr_t ref, std::uintptr_t labels, std::uintptr_t out_pol,
         std::uintptr_t out_ref, std::uintptr_t out_diff, int dtype, int label_dtype, int64_t T, int64_t V,
         int64_t T_ref, int64_t V_ref, int64_t n_labels, int64_t s_pt, int64_t s_pv, int64_t s_rt, int64_t s_rv,
         int64_t s_lab, int64_t ignore_index, std::uintptr_t stream) {
        return rmbf::check_params(make_params(pol, ref, labels, out_pol, out_ref, out_diff, dtype, label_dtype, T,
                                              V, T_ref, V_ref, n_labels, s_pt, s_pv, s_rt, s_rv, s_lab,
                                              ignore_index, stream));
      },
      "Host-only checks of dpo_logratio's arguments (no CUDA call): '' if valid, else the reason.");

  m.def(
      "dpo_logratio",
      [](std::uintptr_t pol, std::uintptr_t ref, std::uintptr_t labels, std::uintptr_t out_pol,
         std::uintptr_t out_ref, std::uintptr_t out_diff, int dtype, int label_dtype, int64_t T, int64_t V,
         int64_t T_ref, int64_t V_ref, int64_t n_labels, int64_t s_pt, int64_t s_pv, int64_t s_rt, int64_t s_rv,
         int64_t s_lab, int64_t ignore_index, std::uintptr_t stream) {
        const auto p = make_params(pol, ref, labels, out_pol, out_ref, out_diff, dtype, label_dtype, T, V, T_ref,
                                   V_ref, n_labels, s_pt, s_pv, s_rt, s_rv, s_lab, ignore_index, stream);
        py::gil_scoped_release release;  // the checks and the async launch touch no Python object
        rmbf::dpo_logratio_launch(p);
      },
      py::arg("pol"), py::arg("ref"), py::arg("labels"), py::arg("out_pol"), py::arg("out_ref"),
      py::arg("out_diff"), py::arg("dtype"), py::arg("label_dtype"), py::arg("T"), py::arg("V"), py::arg("T_ref"),
      py::arg("V_ref"), py::arg("n_labels"), py::arg("stride_pt"), py::arg("stride_pv"), py::arg("stride_rt"),
      py::arg("stride_rv"), py::arg("stride_lab"), py::arg("ignore_index"), py::arg("stream"),
      "Per-token log pi, log pi_ref and their difference (fp32, 0 where ignored), enqueued on `stream`.\n"
      "Raises ValueError for bad arguments, RuntimeError for CUDA errors (e.g. no GPU/driver).");
}
