// Exact attention over a packed shared-prefix batch on the CPU (fp32, AVX-512 or AVX2): plain C++, no torch.
//
// The batch is a list of "pieces". A piece is a run of query rows [q0, q1) of the flat token
// stream; query row t of the piece sees
//   - every context key in [c0, c1) (a shared prompt prefix, all visible), then
//   - its own piece's keys [q0, t] (causal).
// A prompt prefix is a piece with no context; each answer branch is a piece whose context is
// its segment's prefix. So one call computes a whole layer's attention with no padding, no
// repeated K/V heads and no log-sum-exp merge: each row's online softmax runs over both key
// ranges in one pass (flash-attention's recurrence, fp32 throughout).
//
//   o[t, h] = Σ_j softmax_j(scale · q[t, h] · k[j, g]) v[j, g],  g = h / (Hq / Hk)
//
// Grouped-query heads: the Hq / Hk query heads of one KV head are processed together, so each
// K/V block is loaded once for all of them.
#pragma once
#include <cstdint>
#include <string>

namespace rmbf {

struct PackedAttnParams {
  // Element strides: x[t * x_row + h * x_head + d], d contiguous.
  const float* q;
  int64_t q_row, q_head;
  const float* k;
  int64_t k_row, k_head;
  const float* v;
  int64_t v_row, v_head;
  float* out;
  int64_t o_row, o_head;
  int64_t n_heads, n_kv_heads, head_dim;  // Hq, Hk (divides Hq), D (64 or 128)
  // Pieces, each [n_pieces]: query rows [q0, q1), context keys [c0, c1) with c1 <= q0.
  const int64_t* q0;
  const int64_t* q1;
  const int64_t* c0;
  const int64_t* c1;
  int64_t n_pieces;
  float scale;    // softmax scale (e.g. D^-0.5)
  int n_threads;  // >= 1
  // [T] key flags, or nullptr (every key valid). A masked key (0: a duplicated BOS) is seen by
  // its own query row only, as engine/layout.py's rule says.
  const uint8_t* key_valid = nullptr;
};

// The instruction set the kernel uses on this CPU: "avx512" (AVX-512F + FMA), "avx2" (AVX2 +
// FMA), or "" (neither: the kernel does not run).
const char* packed_attention_cpu_isa();

// Whether the copy for `isa` ("auto": the best this CPU has, "avx512", "avx2") runs on this CPU
// and the head size is one it is built for (64, 128).
bool packed_attention_cpu_supported(int64_t head_dim, const std::string& isa = "auto");

// Computes out for every query row of every piece (rows outside all pieces are not written).
// `isa` as above; both copies give the same bits. Throws std::invalid_argument if unsupported.
void packed_attention_cpu(const PackedAttnParams& p, const std::string& isa = "auto");

}  // namespace rmbf
