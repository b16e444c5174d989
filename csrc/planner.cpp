#include "planner.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <numeric>

namespace rmbf {

namespace {

std::string where(int64_t r, int64_t slot) {
  return "record " + std::to_string(r) + " slot " + std::to_string(slot) + ": ";
}

inline int64_t group_size(const PlanParams& p, int64_t r) { return p.group_off[r + 1] - p.group_off[r]; }

// Longest common prefix of record r's sequences.
int64_t record_lcp(const PlanParams& p, int64_t r) {
  const int64_t* off = p.offsets + p.group_off[r];
  const int64_t n = group_size(p, r);
  const int32_t* first = p.ids + off[0];
  int64_t lcp = off[1] - off[0];
  for (int64_t s = 1; s < n && lcp > 0; ++s) {
    const int32_t* seq = p.ids + off[s];
    const int64_t len = std::min<int64_t>(lcp, off[s + 1] - off[s]);
    int64_t k = 0;
    while (k < len && seq[k] == first[k]) ++k;
    lcp = k;
  }
  return lcp;
}

// P for record r: 0 without sharing, or when its sequences disagree on masking the shared token 0.
int64_t record_prefix(const PlanParams& p, int64_t r) {
  if (!p.share_prefix) return 0;
  const int64_t lcp = record_lcp(p, r);
  if (lcp == 0) return 0;
  const uint8_t* mf = p.mask_first + p.group_off[r];
  const int64_t n = group_size(p, r);
  for (int64_t s = 1; s < n; ++s)
    if ((mf[s] != 0) != (mf[0] != 0)) return 0;
  return lcp;
}

}  // namespace

std::string check_plan_inputs(const PlanParams& p) {
  for (int64_t r = 0; r < p.n_records; ++r) {
    const int64_t g = group_size(p, r);
    if (g < 1 || g > kMaxGroup)
      return "record " + std::to_string(r) + ": expected 1 to " + std::to_string(kMaxGroup) + " sequences, got " +
             std::to_string(g);
    for (int64_t b = 0; b < g; ++b) {
      const int64_t i = p.group_off[r] + b;
      const int64_t n = p.offsets[i + 1] - p.offsets[i];
      const int64_t ls = p.label_start[i];
      if (!(ls == n || (ls >= 1 && ls <= n)))
        return where(r, b) + "label_start " + std::to_string(ls) + " out of range [1, " + std::to_string(n) + "]";
      const int64_t q = p.pool_index[i];
      if (!(q == -1 || (q >= 0 && q < n)))
        return where(r, b) + "pool_index " + std::to_string(q) + " out of range [0, " + std::to_string(n) +
               ") or -1";
      if (n > 0) {
        const int32_t* ids = p.ids + p.offsets[i];
        // A value min/max (not std::minmax_element, which tracks iterators) so it vectorizes.
        int32_t lo = ids[0], hi = ids[0];
        for (int64_t k = 1; k < n; ++k) {
          lo = std::min(lo, ids[k]);
          hi = std::max(hi, ids[k]);
        }
        if (lo < 0 || (p.vocab_size > 0 && hi >= p.vocab_size)) {
          const int32_t bad = lo < 0 ? lo : hi;
          return where(r, b) + "token id " + std::to_string(bad) + " out of range [0, " +
                 (p.vocab_size > 0 ? std::to_string(p.vocab_size) : std::string("None")) + ")";
        }
      }
    }
  }
  if (p.batch_tokens < 1) return "batch_tokens must be >= 1, got " + std::to_string(p.batch_tokens);
  return "";
}

std::string make_plan_layout(const PlanParams& p, PlanLayout* L) {
  const int64_t n = p.n_records;
  L->prefix.assign(n, 0);
  L->seg_len.assign(n, 0);
  L->n_labels.assign(n, 0);
  int64_t longest = 0, first_over = -1;
  for (int64_t r = 0; r < n; ++r) {
    const int64_t P = record_prefix(p, r);
    const int64_t* off = p.offsets + p.group_off[r];
    int64_t len = P, labels = 0;
    for (int64_t s = 0; s < group_size(p, r); ++s) {
      const int64_t sl = off[s + 1] - off[s];
      len += sl - P;
      labels += sl - p.label_start[p.group_off[r] + s];
    }
    L->prefix[r] = static_cast<int32_t>(P);
    L->seg_len[r] = len;
    L->n_labels[r] = labels;
    longest = std::max(longest, len);
    if (first_over < 0 && len > p.batch_tokens) first_over = r;
  }
  if (first_over >= 0)
    return "record " + std::to_string(first_over) + ": its packed segment has " +
           std::to_string(L->seg_len[first_over]) + " tokens, more than batch_tokens=" +
           std::to_string(p.batch_tokens) + " (the longest segment has " + std::to_string(longest) +
           " tokens; use batch_tokens >= " + std::to_string(longest) + ")";

  // Counting sort by bucket (descending), stable in the record index.
  constexpr int kBuckets = 65;  // buckets -1..63 -> 0..64
  std::array<int64_t, kBuckets + 1> start{};
  for (int64_t r = 0; r < n; ++r) ++start[kBuckets - 1 - (segment_bucket(L->seg_len[r]) + 1) + 1];
  for (int b = 0; b < kBuckets; ++b) start[b + 1] += start[b];
  L->order.assign(n, 0);
  for (int64_t r = 0; r < n; ++r) L->order[start[kBuckets - 1 - (segment_bucket(L->seg_len[r]) + 1)]++] = r;

  // Greedy cuts in that order.
  const int64_t cap = p.max_segments > 0 ? p.max_segments : n + 1;
  L->batch_seg.assign(1, 0);
  L->batch_tok.assign(1, 0);
  L->batch_lab.assign(1, 0);
  L->batch_seq.assign(1, 0);
  int64_t cur_seg = 0, cur_tok = 0, tok = 0, lab = 0, seq = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t r = L->order[i];
    if (cur_seg > 0 && (cur_tok + L->seg_len[r] > p.batch_tokens || cur_seg >= cap)) {
      L->batch_seg.push_back(i);
      L->batch_tok.push_back(tok);
      L->batch_lab.push_back(lab);
      L->batch_seq.push_back(seq);
      cur_seg = cur_tok = 0;
    }
    ++cur_seg;
    cur_tok += L->seg_len[r];
    tok += L->seg_len[r];
    lab += L->n_labels[r];
    seq += group_size(p, r);
  }
  if (cur_seg > 0) {
    L->batch_seg.push_back(n);
    L->batch_tok.push_back(tok);
    L->batch_lab.push_back(lab);
    L->batch_seq.push_back(seq);
  }
  return "";
}

namespace {

inline void iota32(int32_t* dst, int64_t n, int64_t first) {
  for (int64_t k = 0; k < n; ++k) dst[k] = static_cast<int32_t>(first + k);
}

}  // namespace

void fill_plan(const PlanParams& p, const PlanLayout& L, const PlanOutputs& o) {
  const int64_t B = L.n_batches();
  for (int64_t b = 0; b < B; ++b) {
    const int64_t s_begin = L.batch_seg[b], s_end = L.batch_seg[b + 1];
    int32_t* ids_out = o.input_ids + L.batch_tok[b];
    int32_t* pos_out = o.position_ids + L.batch_tok[b];
    uint8_t* kv_out = o.key_valid + L.batch_tok[b];
    int32_t* seg_off = o.seg_offsets + s_begin + b;
    int32_t* seg_seq = o.seg_seqs + s_begin + b;
    int32_t* br_off = o.branch_offsets + L.batch_seq[b] + b;
    int32_t* pool_out = o.pool_pos + L.batch_seq[b];
    int32_t* srec_out = o.seq_record + L.batch_seq[b];
    int64_t k = L.batch_lab[b];  // next label (global)
    int64_t cur = 0;             // batch-local flat index
    int64_t j = 0;               // batch-local sequence
    seg_off[0] = 0;
    seg_seq[0] = 0;
    for (int64_t si = s_begin; si < s_end; ++si) {
      const int64_t s = si - s_begin;  // batch-local segment
      const int64_t r = L.order[si];
      const int64_t P = L.prefix[r];
      const int64_t g0 = p.group_off[r], n_b = group_size(p, r);
      const int64_t* off = p.offsets + g0;
      const int64_t base = cur;
      // The prefix, once.
      std::memcpy(ids_out + cur, p.ids + off[0], P * sizeof(int32_t));
      iota32(pos_out + cur, P, 0);
      std::memset(kv_out + cur, 1, P);
      if (P > 0 && p.mask_first[g0]) kv_out[cur] = 0;
      cur += P;
      o.prefix_len[si] = static_cast<int32_t>(P);
      // The record's branches, in slot order.
      for (int64_t bi = 0; bi < n_b; ++bi, ++j) {
        const int64_t i = g0 + bi;  // input sequence
        const int64_t len = off[bi + 1] - off[bi];
        const int64_t st = cur;
        const int64_t blen = len - P;
        br_off[j] = static_cast<int32_t>(st);
        std::memcpy(ids_out + st, p.ids + off[bi] + P, blen * sizeof(int32_t));
        iota32(pos_out + st, blen, P);
        std::memset(kv_out + st, 1, blen);
        if (P == 0 && blen > 0 && p.mask_first[i]) kv_out[st] = 0;
        cur += blen;
        // Labels t in [ls, len): predicted at token t-1, in the prefix when t-1 < P.
        const int64_t ls = p.label_start[i];
        const int64_t n_lab = len - ls;
        std::memcpy(o.label_ids + k, p.ids + off[bi] + ls, n_lab * sizeof(int32_t));
        std::fill(o.label_seq + k, o.label_seq + k + n_lab, static_cast<int32_t>(j));
        const int64_t split = std::min(len, std::max(ls, P + 1));  // t < split: predictor in prefix
        iota32(o.label_pos + k, split - ls, base + ls - 1);
        iota32(o.label_pos + k + (split - ls), len - split, st + split - 1 - P);
        k += n_lab;
        const int64_t q = p.pool_index[i];
        pool_out[j] = q < 0 ? -1 : static_cast<int32_t>(q < P ? base + q : st + q - P);
        srec_out[j] = static_cast<int32_t>(r);
      }
      seg_off[s + 1] = static_cast<int32_t>(cur);
      seg_seq[s + 1] = static_cast<int32_t>(j);
    }
    br_off[j] = static_cast<int32_t>(cur);
  }
}

}  // namespace rmbf
