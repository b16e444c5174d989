// Thin pybind11 bindings for the CPU core. Every input is checked here, before any C++ runs.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>

#include "prefix.h"

namespace py = pybind11;

namespace {

template <typename T>
using CArray = py::array_t<T, py::array::c_style | py::array::forcecast>;

py::array_t<int32_t> common_prefix_lengths(CArray<int32_t> ids, CArray<int64_t> offsets, int64_t group_size) {
  if (ids.ndim() != 1 || offsets.ndim() != 1) throw py::value_error("ids and offsets must be 1-D");
  if (group_size < 1) throw py::value_error("group_size must be >= 1");
  const int64_t n_seq = offsets.shape(0) - 1;
  if (n_seq < 0 || n_seq % group_size != 0)
    throw py::value_error("offsets must hold n_groups * group_size + 1 entries, got " +
                          std::to_string(offsets.shape(0)));
  const int64_t* off = offsets.data();
  if (n_seq >= 0 && off[0] != 0) throw py::value_error("offsets[0] must be 0");
  for (int64_t i = 0; i < n_seq; ++i)
    if (off[i + 1] < off[i]) throw py::value_error("offsets must be non-decreasing (at " + std::to_string(i) + ")");
  if (off[n_seq] != ids.shape(0))
    throw py::value_error("offsets[-1] = " + std::to_string(off[n_seq]) + " but ids has " +
                          std::to_string(ids.shape(0)) + " tokens");
  const int64_t n_groups = n_seq / group_size;
  py::array_t<int32_t> out(n_groups);
  rmbf::PrefixParams p{ids.data(), off, n_groups, group_size, out.mutable_data()};
  {
    py::gil_scoped_release release;
    rmbf::common_prefix_lengths(p);
  }
  return out;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "rmbench_fast C++ core (CPU): token-level prefix sharing and batch planning";
  m.def("common_prefix_lengths", &common_prefix_lengths, py::arg("ids"), py::arg("offsets"),
        py::arg("group_size") = 6,
        "For each group of `group_size` consecutive sequences (flat int32 ids + int64 offsets), "
        "the length of their longest common token prefix. Returns int32 [n_groups].");
}
