// Thin pybind11 bindings for the CPU core. Every input is checked here, before any C++ runs.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <new>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "attention_cpu.h"
#include "planner.h"
#include "prefix.h"

namespace py = pybind11;

namespace {

template <typename T>
using CArray = py::array_t<T, py::array::c_style | py::array::forcecast>;
template <typename T>
using CArrayStrict = py::array_t<T, py::array::c_style>;

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

// A 1-D C-contiguous array of T from `obj`: only lossless ("safe") dtype casts are allowed,
// so int64 ids are refused instead of silently wrapped.
template <typename T>
CArrayStrict<T> input_array(const py::handle& obj, const char* name) {
  py::array a = py::array::ensure(obj);
  if (!a) throw py::type_error(std::string(name) + " must be a numpy array");
  if (a.ndim() != 1) throw py::value_error(std::string(name) + " must be 1-D, got " + std::to_string(a.ndim()) + "-D");
  const py::dtype want = py::dtype::of<T>();
  const bool same = a.dtype().kind() == want.kind() && a.dtype().itemsize() == want.itemsize();
  if (!same) {
    const bool safe = py::module_::import("numpy").attr("can_cast")(a.dtype(), want, "safe").cast<bool>();
    if (!safe)
      throw py::type_error(std::string(name) + " must have dtype " + py::str(want).cast<std::string>() + ", got " +
                           py::str(a.dtype()).cast<std::string>());
  }
  return CArrayStrict<T>::ensure(a);
}

// A 1-D numpy array over plain malloc'd memory, freed with it. Why not numpy's allocator:
// numpy asks for transparent huge pages on big arrays, and on a busy machine the kernel's
// compaction for those stalled the planner's multi-GB outputs for seconds; 4 KiB pages cost
// a steady, smaller fault time.
template <typename T>
py::array_t<T> owned_array(int64_t n) {
  void* data = std::malloc(static_cast<size_t>(std::max<int64_t>(n, 1)) * sizeof(T));
  if (data == nullptr) throw std::bad_alloc();
  py::capsule owner(data, [](void* ptr) { std::free(ptr); });
  return py::array_t<T>({static_cast<py::ssize_t>(n)}, {static_cast<py::ssize_t>(sizeof(T))}, static_cast<T*>(data),
                        owner);
}

// Output buffers: fresh per call, or reused from a caller's workspace dict (name -> 1-D array).
// Why reuse: the outputs are several GB for 100k records, and first-touch page faults on fresh
// memory cost more than the planning itself. A workspace buffer is used when it is a writable,
// C-contiguous 1-D array of the right dtype and at least n entries; otherwise a new one with 25%
// headroom replaces it there. The returned array is a view of its first n entries.
class OutputAlloc {
 public:
  explicit OutputAlloc(const py::object& workspace) {
    if (workspace.is_none()) return;
    if (!py::isinstance<py::dict>(workspace)) throw py::type_error("workspace must be a dict or None");
    ws_ = workspace.cast<py::dict>();
    have_ws_ = true;
  }

  template <typename T>
  py::array_t<T> get(const char* name, int64_t n) {
    if (!have_ws_) return owned_array<T>(n);
    if (ws_.contains(name)) {
      py::object cur = ws_[name];
      if (py::isinstance<py::array>(cur)) {
        auto a = cur.cast<py::array>();
        const py::dtype want = py::dtype::of<T>();
        const bool fits = a.ndim() == 1 && a.dtype().kind() == want.kind() && a.itemsize() == want.itemsize() &&
                          (a.flags() & py::array::c_style) && a.writeable() && a.shape(0) >= std::max<int64_t>(n, 1);
        if (fits) return view<T>(a, n);
      }
    }
    auto fresh = owned_array<T>(std::max<int64_t>(n + n / 4, 1));
    ws_[name] = fresh;
    return view<T>(fresh, n);
  }

 private:
  template <typename T>
  static py::array_t<T> view(const py::array& base, int64_t n) {
    return py::array_t<T>({static_cast<py::ssize_t>(n)}, {static_cast<py::ssize_t>(sizeof(T))},
                          static_cast<T*>(const_cast<void*>(base.data())), base);
  }

  py::dict ws_;
  bool have_ws_ = false;
};

py::dict plan_batches(const py::handle& ids_obj, const py::handle& offsets_obj, const py::handle& label_start_obj,
                      const py::handle& pool_index_obj, const py::handle& mask_first_obj,
                      const py::handle& group_offsets_obj, int64_t vocab_size, int64_t batch_tokens,
                      int64_t max_segments, bool share_prefix, const py::object& workspace) {
  auto ids = input_array<int32_t>(ids_obj, "ids");
  auto offsets = input_array<int64_t>(offsets_obj, "offsets");
  auto label_start = input_array<int32_t>(label_start_obj, "label_start");
  auto pool_index = input_array<int32_t>(pool_index_obj, "pool_index");
  auto mask_first = input_array<uint8_t>(mask_first_obj, "mask_first");
  auto group_offsets = input_array<int64_t>(group_offsets_obj, "group_offsets");
  const int64_t n_off = offsets.shape(0);
  if (n_off < 1) throw py::value_error("offsets must hold n_sequences + 1 entries, got 0");
  const int64_t n_seq = n_off - 1;
  for (auto [arr, name] : {std::pair<py::ssize_t, const char*>{label_start.shape(0), "label_start"},
                           {pool_index.shape(0), "pool_index"},
                           {mask_first.shape(0), "mask_first"}})
    if (arr != n_seq)
      throw py::value_error(std::string(name) + " must hold one entry per sequence (" + std::to_string(n_seq) +
                            "), got " + std::to_string(arr));
  const int64_t n_rec = group_offsets.shape(0) - 1;
  const int64_t* goff = group_offsets.data();
  if (n_rec < 0 || goff[0] != 0 || goff[n_rec] != n_seq)
    throw py::value_error("group_offsets must run from 0 to the number of sequences (" + std::to_string(n_seq) + ")");
  for (int64_t r = 0; r < n_rec; ++r)
    if (goff[r + 1] < goff[r])
      throw py::value_error("group_offsets must be non-decreasing (at " + std::to_string(r) + ")");
  if (batch_tokens > INT32_MAX) throw py::value_error("batch_tokens must be < 2**31 (batch indices are int32)");
  if (n_seq > INT32_MAX) throw py::value_error("too many sequences for int32 sequence indices");
  if (max_segments < 0) throw py::value_error("max_segments must be >= 0 (0 = no cap)");
  const int64_t* off = offsets.data();
  if (off[0] != 0) throw py::value_error("offsets[0] must be 0, got " + std::to_string(off[0]));
  for (int64_t i = 0; i < n_seq; ++i)
    if (off[i + 1] < off[i]) throw py::value_error("offsets must be non-decreasing (at " + std::to_string(i) + ")");
  if (off[n_seq] != ids.shape(0))
    throw py::value_error("offsets[-1] = " + std::to_string(off[n_seq]) + " but ids has " +
                          std::to_string(ids.shape(0)) + " tokens");

  rmbf::PlanParams p;
  p.ids = ids.data();
  p.offsets = off;
  p.label_start = label_start.data();
  p.pool_index = pool_index.data();
  p.mask_first = mask_first.data();
  p.group_off = goff;
  p.n_records = n_rec;
  p.n_ids = ids.shape(0);
  p.vocab_size = vocab_size;
  p.batch_tokens = batch_tokens;
  p.max_segments = max_segments;
  p.share_prefix = share_prefix;

  rmbf::PlanLayout layout;
  std::string err;
  {
    py::gil_scoped_release release;
    err = rmbf::check_plan_inputs(p);
    if (err.empty()) err = rmbf::make_plan_layout(p, &layout);
  }
  if (!err.empty()) throw py::value_error(err);

  const int64_t B = layout.n_batches(), S = p.n_records;
  const int64_t T = layout.batch_tok.back(), K = layout.batch_lab.back();
  const int64_t n_seq_out = n_seq;
  OutputAlloc alloc(workspace);
  auto input_ids = alloc.get<int32_t>("input_ids", T), position_ids = alloc.get<int32_t>("position_ids", T);
  auto key_valid = alloc.get<bool>("key_valid", T);
  auto seg_offsets = alloc.get<int32_t>("seg_offsets", S + B), prefix_len = alloc.get<int32_t>("prefix_len", S);
  auto branch_offsets = alloc.get<int32_t>("branch_offsets", n_seq_out + B);
  auto label_pos = alloc.get<int32_t>("label_pos", K), label_ids = alloc.get<int32_t>("label_ids", K);
  auto label_seq = alloc.get<int32_t>("label_seq", K);
  auto pool_pos = alloc.get<int32_t>("pool_pos", n_seq_out), seq_record = alloc.get<int32_t>("seq_record", n_seq_out);
  auto seg_seqs = alloc.get<int32_t>("seg_seqs", S + B);
  rmbf::PlanOutputs o{input_ids.mutable_data(),
                      position_ids.mutable_data(),
                      reinterpret_cast<uint8_t*>(key_valid.mutable_data()),
                      seg_offsets.mutable_data(),
                      prefix_len.mutable_data(),
                      branch_offsets.mutable_data(),
                      label_pos.mutable_data(),
                      label_ids.mutable_data(),
                      label_seq.mutable_data(),
                      pool_pos.mutable_data(),
                      seq_record.mutable_data(),
                      seg_seqs.mutable_data()};
  {
    py::gil_scoped_release release;
    rmbf::fill_plan(p, layout, o);
  }
  auto vec = [](const std::vector<int64_t>& v) {
    py::array_t<int64_t> a(static_cast<py::ssize_t>(v.size()));
    std::copy(v.begin(), v.end(), a.mutable_data());
    return a;
  };
  py::dict out;
  out["input_ids"] = input_ids;
  out["position_ids"] = position_ids;
  out["key_valid"] = key_valid;
  out["seg_offsets"] = seg_offsets;
  out["prefix_len"] = prefix_len;
  out["branch_offsets"] = branch_offsets;
  out["label_pos"] = label_pos;
  out["label_ids"] = label_ids;
  out["label_seq"] = label_seq;
  out["pool_pos"] = pool_pos;
  out["seq_record"] = seq_record;
  out["seg_seqs"] = seg_seqs;
  out["batch_seq"] = vec(layout.batch_seq);
  out["batch_tok"] = vec(layout.batch_tok);
  out["batch_seg"] = vec(layout.batch_seg);
  out["batch_lab"] = vec(layout.batch_lab);
  return out;
}


// A [T, H, D] float32 view: the element strides of its rows and heads (d must be contiguous).
struct HeadsView {
  int64_t t, h, d, row, head;
};

HeadsView heads_view(const py::array& a, const char* name) {
  const std::string n(name);
  if (!py::isinstance<py::array_t<float>>(a) || a.dtype().kind() != 'f' || a.itemsize() != 4)
    throw py::value_error(n + " must be a float32 array");
  if (a.ndim() != 3) throw py::value_error(n + " must be 3-D [T, H, D], got " + std::to_string(a.ndim()) + "-D");
  const auto* st = a.strides();
  if (st[2] != 4) throw py::value_error(n + " must be contiguous in its last dimension");
  for (int i = 0; i < 2; ++i)
    if (st[i] < 0 || st[i] % 4 != 0) throw py::value_error(n + " has a negative or misaligned stride");
  return {a.shape(0), a.shape(1), a.shape(2), st[0] / 4, st[1] / 4};
}

void packed_attention_f32(const py::array& q, const py::array& k, const py::array& v, py::array& out,
                          CArrayStrict<int64_t> q0, CArrayStrict<int64_t> q1, CArrayStrict<int64_t> c0,
                          CArrayStrict<int64_t> c1, double scale, int n_threads, const std::string& isa,
                          std::optional<CArrayStrict<uint8_t>> key_valid) {
  const HeadsView Q = heads_view(q, "q"), K = heads_view(k, "k"), V = heads_view(v, "v"), O = heads_view(out, "out");
  if (K.t != Q.t || V.t != Q.t || O.t != Q.t) throw py::value_error("q, k, v and out must have the same token count");
  if (K.h != V.h || O.h != Q.h) throw py::value_error("k and v must have the same heads, as must q and out");
  if (K.h < 1 || Q.h % K.h != 0) throw py::value_error("the KV head count must divide the query head count");
  if (K.d != Q.d || V.d != Q.d || O.d != Q.d) throw py::value_error("q, k, v and out must have the same head size");
  if (isa != "auto" && isa != "avx512" && isa != "avx2")
    throw py::value_error("isa must be 'auto', 'avx512' or 'avx2', got '" + isa + "'");
  if (!rmbf::packed_attention_cpu_supported(Q.d, isa))
    throw py::value_error("packed_attention_f32 needs " +
                          std::string(isa == "auto" ? "AVX-512F or AVX2" : isa) +
                          " (with FMA) on this CPU and a head size of 64 or 128, got " + std::to_string(Q.d));
  if (Q.t > INT32_MAX) throw py::value_error("too many tokens for one call");
  if (!out.writeable()) throw py::value_error("out must be writeable");
  if (n_threads < 1) throw py::value_error("n_threads must be >= 1");
  if (!std::isfinite(scale) || scale <= 0) throw py::value_error("scale must be finite and positive");
  const int64_t n = q0.shape(0);
  if (q0.ndim() != 1 || q1.ndim() != 1 || c0.ndim() != 1 || c1.ndim() != 1 || q1.shape(0) != n ||
      c0.shape(0) != n || c1.shape(0) != n)
    throw py::value_error("q0, q1, c0 and c1 must be 1-D of one length");
  const int64_t *a = q0.data(), *b = q1.data(), *ca = c0.data(), *cb = c1.data();
  for (int64_t i = 0; i < n; ++i)
    if (!(0 <= a[i] && a[i] <= b[i] && b[i] <= Q.t && 0 <= ca[i] && ca[i] <= cb[i] && cb[i] <= a[i]))
      throw py::value_error("piece " + std::to_string(i) + " needs 0 <= c0 <= c1 <= q0 <= q1 <= T");
  rmbf::PackedAttnParams p{static_cast<const float*>(q.data()), Q.row, Q.head,
                           static_cast<const float*>(k.data()), K.row, K.head,
                           static_cast<const float*>(v.data()), V.row, V.head,
                           static_cast<float*>(out.mutable_data()), O.row, O.head,
                           Q.h, K.h, Q.d, a, b, ca, cb, n, static_cast<float>(scale), n_threads};
  if (key_valid) {
    if (key_valid->ndim() != 1 || key_valid->shape(0) != Q.t)
      throw py::value_error("key_valid must be 1-D of length T (uint8 or bool)");
    p.key_valid = key_valid->data();
  }
  py::gil_scoped_release release;
  rmbf::packed_attention_cpu(p, isa);
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "rmbench_fast C++ core (CPU): token-level prefix sharing and batch planning";
  m.def("common_prefix_lengths", &common_prefix_lengths, py::arg("ids"), py::arg("offsets"),
        py::arg("group_size"),
        "For each group of `group_size` consecutive sequences (flat int32 ids + int64 offsets), "
        "the length of their longest common token prefix. Returns int32 [n_groups].");
  m.def("packed_attention_isa", &rmbf::packed_attention_cpu_isa,
        "The instruction set packed_attention_f32 uses on this CPU: 'avx512', 'avx2' or '' (it does not run).");
  m.def("packed_attention_supported", &rmbf::packed_attention_cpu_supported, py::arg("head_dim"),
        py::arg("isa") = "auto",
        "Whether packed_attention_f32 runs here for this head size (64 or 128) and isa ('auto': the best "
        "this CPU has; 'avx512'; 'avx2').");
  m.def("packed_attention_f32", &packed_attention_f32, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("out"),
        py::arg("q0"), py::arg("q1"), py::arg("c0"), py::arg("c1"), py::kw_only(), py::arg("scale"),
        py::arg("n_threads") = 1, py::arg("isa") = "auto", py::arg("key_valid") = py::none(),
        "Exact attention over a packed shared-prefix batch (csrc/attention_cpu.h): float32 q/out [T, Hq, D], "
        "k/v [T, Hk, D] (strided views allowed, d contiguous); pieces int64 [n]: query rows [q0, q1) see keys "
        "[c0, c1) and their own keys causally. Writes out in place; the GIL is released. isa: 'auto', "
        "'avx512' or 'avx2' (the copies give the same bits). key_valid: uint8 [T] or None (all valid); a masked "
        "key is seen by its own row only.");
  m.def("plan_batches", &plan_batches, py::arg("ids"), py::arg("offsets"), py::arg("label_start"),
        py::arg("pool_index"), py::arg("mask_first"), py::arg("group_offsets"), py::kw_only(),
        py::arg("vocab_size") = -1,
        py::arg("batch_tokens"), py::arg("max_segments") = 0, py::arg("share_prefix") = true,
        py::arg("workspace") = py::none(),
        "Plan prefix-shared, token-budgeted batches (see rmbench_fast.plan). Inputs: ids int32 [N], "
        "offsets int64 [M+1] over M sequences, label_start / pool_index int32 [M], mask_first uint8/bool "
        "[M], group_offsets int64 [n+1] (record r = sequences group_offsets[r]..group_offsets[r+1]-1, "
        "1 to 64 each). Returns a dict of concatenated batch-local arrays plus batch_tok / batch_seg / "
        "batch_lab / batch_seq int64 [B+1] ranges. vocab_size <= 0 skips the upper id check; max_segments 0 = no cap. "
        "workspace: a dict of reusable output buffers (filled and grown in place); the returned "
        "arrays are then views into it, overwritten by the next call with the same workspace.");
}
