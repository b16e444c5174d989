// Packed shared-prefix attention on the CPU, fp32, AVX-512 or AVX2 (see attention_cpu.h for the rule).
//
// Work: one task per (piece, block of BQ query rows, KV head). A task stacks its BQ query rows
// times the G = Hq / Hk query heads of that KV head into M = BQ * G "rows" (r = i * G + hh), so
// every K and V row it loads serves G heads. Per block of BK keys it computes the scores
// transposed, sT [BK, Mp] (key-major, rows in vector lanes): the online softmax's max and sum
// then run down the key axis in whole vectors, K is read in place (broadcast scalars, no
// transpose), and only q is repacked once per task (qT [D, Mp], scaled by scale * log2(e) so
// the softmax is exp2). Then o [Mp, D] += pT[:, r]ᵀ v over the block. Rows past M (padding to
// a multiple of the lane count) carry q = 0 and are never written out.
//
// Numerics: fp32 products and sums; exp2 by a degree-7 polynomial on [-0.5, 0.5] and an exact
// power-of-two scale (error below one fp32 ulp before rounding); masked keys contribute an
// exact 0. Differences from another kernel are last-bit (summation order, exp). The AVX-512
// and AVX2 copies give the same bits (attention_cpu_body.inc says why).
//
// Each copy is compiled for its target only inside its pragma region below, so no inline
// library code with AVX-512 or AVX2 leaks into the rest of the module (it must import, and plan
// batches, on any x86-64 CPU; the caller checks packed_attention_cpu_supported).
#include "attention_cpu.h"

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <new>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace rmbf {
namespace {

constexpr int kBK = 64;          // keys per block
constexpr int kRowsTarget = 96;  // stacked rows (query tokens x grouped heads) per task
constexpr int kMaxD = 128;
// 2^f on [-0.5, 0.5]: Taylor-like degree-7 coefficients, highest first (error < 1 fp32 ulp).
constexpr float kExp2Poly[8] = {1.525273380405984e-05f, 1.5403530393381606e-04f, 1.3333558146428443e-03f,
                                9.618129107628477e-03f,  5.550410866482158e-02f,  2.402265069591007e-01f,
                                6.931471805599453e-01f,  1.0f};

struct Task {
  int64_t piece, b0, b1, g;
  double cost;
};

struct Scratch {
  float* qT;     // [kMaxD, Mp]
  float* sT;     // [kBK, Mp]
  float* o;      // [Mp, kMaxD]
  float* m;      // [Mp] running max (log2 domain)
  float* l;      // [Mp] running sum
  float* alpha;  // [Mp]
  int32_t* t;    // [Mp] query token of each row (padding: INT32_MAX, sees every key)
};

}  // namespace

namespace {  // the two compiled copies (internal linkage)

// ---- AVX-512F: 16 lanes, 32 vector registers ----
#pragma GCC push_options
#pragma GCC target("avx512f,fma")
namespace avx512 {

struct V {
  static constexpr int W = 16;
  static constexpr int kScoreRJ = 4, kScoreMV = 6;  // 24 accumulators + 6 q vectors + 1 broadcast
  static constexpr int kValR = 6, kValNC = 4;       // 24 accumulators + 6 broadcasts + 1 v vector
  using F = __m512;
  using M = __mmask16;
  static F load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, F x) { _mm512_storeu_ps(p, x); }
  static F set1(float x) { return _mm512_set1_ps(x); }
  static F zero() { return _mm512_setzero_ps(); }
  static F add(F a, F b) { return _mm512_add_ps(a, b); }
  static F sub(F a, F b) { return _mm512_sub_ps(a, b); }
  static F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  static F max(F a, F b) { return _mm512_max_ps(a, b); }
  static F fmadd(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  static M all_lanes() { return static_cast<M>(0xFFFF); }
  static M key_le(int32_t j, const int32_t* t) {
    return _mm512_cmp_epi32_mask(_mm512_set1_epi32(j), _mm512_loadu_si512(t), _MM_CMPINT_LE);
  }
  static M key_eq(int32_t j, const int32_t* t) {
    return _mm512_cmp_epi32_mask(_mm512_set1_epi32(j), _mm512_loadu_si512(t), _MM_CMPINT_EQ);
  }
  static F mask_max(F a, M m, F b) { return _mm512_mask_max_ps(a, m, a, b); }  // m ? max(a, b) : a
  static F maskz(M m, F x) { return _mm512_maskz_mov_ps(m, x); }
  static M is_neg_inf(F x) {
    return _mm512_cmp_ps_mask(x, _mm512_set1_ps(-std::numeric_limits<float>::infinity()), _CMP_EQ_OQ);
  }
  static F select(M m, F a, F b) { return _mm512_mask_mov_ps(b, m, a); }  // m ? a : b
  static M ge(F a, F b) { return _mm512_cmp_ps_mask(a, b, _CMP_GE_OQ); }
  static F round(F x) { return _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static F scale2(F p, F n) { return _mm512_scalef_ps(p, n); }  // p * 2^n, n integral
};

#include "attention_cpu_body.inc"

}  // namespace avx512
#pragma GCC pop_options

// ---- AVX2 + FMA: 8 lanes, 16 vector registers (masks are all-ones lanes) ----
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {

struct V {
  static constexpr int W = 8;
  static constexpr int kScoreRJ = 3, kScoreMV = 3;  // 9 accumulators + 3 q vectors + 1 broadcast
  static constexpr int kValR = 3, kValNC = 4;       // 12 accumulators + 3 broadcasts + 1 v vector
  using F = __m256;
  using M = __m256;
  static F load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, F x) { _mm256_storeu_ps(p, x); }
  static F set1(float x) { return _mm256_set1_ps(x); }
  static F zero() { return _mm256_setzero_ps(); }
  static F add(F a, F b) { return _mm256_add_ps(a, b); }
  static F sub(F a, F b) { return _mm256_sub_ps(a, b); }
  static F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  static F max(F a, F b) { return _mm256_max_ps(a, b); }
  static F fmadd(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  static M all_lanes() { return _mm256_castsi256_ps(_mm256_set1_epi32(-1)); }
  static M key_le(int32_t j, const int32_t* t) {  // j <= t  <=>  not (j > t)
    const __m256i gt = _mm256_cmpgt_epi32(_mm256_set1_epi32(j),
                                          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(t)));
    return _mm256_castsi256_ps(_mm256_xor_si256(gt, _mm256_set1_epi32(-1)));
  }
  static M key_eq(int32_t j, const int32_t* t) {
    return _mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_set1_epi32(j),
                                                  _mm256_loadu_si256(reinterpret_cast<const __m256i*>(t))));
  }
  static F mask_max(F a, M m, F b) { return _mm256_blendv_ps(a, _mm256_max_ps(a, b), m); }
  static F maskz(M m, F x) { return _mm256_and_ps(m, x); }
  static M is_neg_inf(F x) {
    return _mm256_cmp_ps(x, _mm256_set1_ps(-std::numeric_limits<float>::infinity()), _CMP_EQ_OQ);
  }
  static F select(M m, F a, F b) { return _mm256_blendv_ps(b, a, m); }
  static M ge(F a, F b) { return _mm256_cmp_ps(a, b, _CMP_GE_OQ); }
  static F round(F x) { return _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  // p * 2^n for integral n in [-126, 0]: 2^n built from its exponent bits, an exact power of two,
  // so the product rounds as scalef does
  static F scale2(F p, F n) {
    const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
  }
};

#include "attention_cpu_body.inc"

}  // namespace avx2
#pragma GCC pop_options

template <class Body>
void run_tasks(const PackedAttnParams& p, const std::vector<Task>& tasks, int64_t mp_max, Body body) {
  const size_t floats = static_cast<size_t>(mp_max) * (2 * kMaxD + kBK + 3);
  std::atomic<size_t> next{0};
  auto worker = [&]() {
    const size_t bytes = (floats * sizeof(float) + static_cast<size_t>(mp_max) * sizeof(int32_t) + 63) / 64 * 64;
    float* buf = static_cast<float*>(std::aligned_alloc(64, bytes));
    if (buf == nullptr) return;  // the other threads take its tasks; fail only if none could start
    Scratch w{buf,
              buf + mp_max * kMaxD,
              buf + mp_max * (kMaxD + kBK),
              buf + mp_max * (2 * kMaxD + kBK),
              buf + mp_max * (2 * kMaxD + kBK + 1),
              buf + mp_max * (2 * kMaxD + kBK + 2),
              reinterpret_cast<int32_t*>(buf + floats)};
    for (size_t i; (i = next.fetch_add(1)) < tasks.size();) body(p, tasks[i], w);
    std::free(buf);
  };
  const int n = std::max(1, std::min<int>(p.n_threads, static_cast<int>(tasks.size())));
  std::vector<std::thread> pool;
  pool.reserve(n - 1);
  for (int i = 1; i < n; ++i) pool.emplace_back(worker);
  worker();
  for (auto& th : pool) th.join();
  if (next.load() < tasks.size()) throw std::bad_alloc();  // no thread had scratch memory
}

bool cpu_has(const std::string& isa) {
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("fma")) return false;
  if (isa == "avx512") return __builtin_cpu_supports("avx512f");
  if (isa == "avx2") return __builtin_cpu_supports("avx2");
  return false;
}

}  // namespace

const char* packed_attention_cpu_isa() {
  if (cpu_has("avx512")) return "avx512";
  if (cpu_has("avx2")) return "avx2";
  return "";
}

bool packed_attention_cpu_supported(int64_t head_dim, const std::string& isa) {
  if (head_dim != 64 && head_dim != 128) return false;
  if (isa == "auto") return packed_attention_cpu_isa()[0] != '\0';
  return cpu_has(isa);
}

void packed_attention_cpu(const PackedAttnParams& p, const std::string& isa) {
  const std::string use = isa == "auto" ? std::string(packed_attention_cpu_isa()) : isa;
  if (!packed_attention_cpu_supported(p.head_dim, use))
    throw std::invalid_argument("packed_attention_cpu: this CPU or head size is not supported for isa " + isa);
  const int64_t G = p.n_heads / p.n_kv_heads;
  const int64_t bq = std::max<int64_t>(1, kRowsTarget / G);
  std::vector<Task> tasks;
  for (int64_t i = 0; i < p.n_pieces; ++i) {
    const int64_t ctx = p.c1[i] - p.c0[i];
    for (int64_t b0 = p.q0[i]; b0 < p.q1[i]; b0 += bq) {
      const int64_t b1 = std::min(b0 + bq, p.q1[i]);
      const double cost = static_cast<double>(b1 - b0) * static_cast<double>(ctx + (b1 - p.q0[i]));
      for (int64_t g = 0; g < p.n_kv_heads; ++g) tasks.push_back({i, b0, b1, g, cost});
    }
  }
  // Longest first, so the last tasks to start are short and the threads finish together.
  std::stable_sort(tasks.begin(), tasks.end(), [](const Task& a, const Task& b) { return a.cost > b.cost; });
  const int64_t mp_max = (std::max<int64_t>(1, bq * G) + 15) / 16 * 16;  // lanes padded for either copy
  if (use == "avx512")
    run_tasks(p, tasks, mp_max, avx512::run_task_any);
  else
    run_tasks(p, tasks, mp_max, avx2::run_task_any);
}

}  // namespace rmbf
