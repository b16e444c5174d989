// The batch planner (SPEC §7): records of N token sequences (a prompt's N completions, N in
// 1..kMaxGroup, per record) -> prefix-shared segments packed into token-budgeted batches. Plain
// C++, no Python, no torch. Mirrors rmbench_fast/plan.py, which documents the layout; the two
// must produce identical batches.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace rmbf {

constexpr int64_t kMaxGroup = 64;  // sequences per record at most (plan.MAX_GROUP)

// Inputs: flat views of all records' sequences; record r's sequences are
// i = group_off[r] .. group_off[r+1]-1, in slot order.
struct PlanParams {
  const int32_t* ids = nullptr;          // [offsets[n_seq]] token ids
  const int64_t* offsets = nullptr;      // [n_seq + 1] sequence i is ids[offsets[i] : offsets[i+1]]
  const int32_t* label_start = nullptr;  // [n_seq] first scored token (== length when none)
  const int32_t* pool_index = nullptr;   // [n_seq] classifier pooled token, -1 for none
  const uint8_t* mask_first = nullptr;   // [n_seq] token 0 is a masked duplicated BOS
  const int64_t* group_off = nullptr;    // [n_records + 1] first sequence of each record
  int64_t n_records = 0;
  int64_t n_ids = 0;            // length of ids (for the offsets check)
  int64_t vocab_size = -1;      // ids must lie in [0, vocab_size); <= 0: only >= 0 is checked
  int64_t batch_tokens = 0;     // token budget per batch (>= 1)
  int64_t max_segments = 0;     // segments per batch, 0 = no cap
  bool share_prefix = true;
};

// What the first pass decides: per-record prefix and sizes, the record order and batch cuts.
struct PlanLayout {
  std::vector<int32_t> prefix;     // [n] shared prefix length P of each record
  std::vector<int64_t> seg_len;    // [n] packed tokens of each record's segment
  std::vector<int64_t> n_labels;   // [n] scored tokens of each record
  std::vector<int64_t> order;      // [n] records in packing order
  std::vector<int64_t> batch_seg;  // [B+1] batch b holds order[batch_seg[b] : batch_seg[b+1]]
  std::vector<int64_t> batch_tok;  // [B+1] global token offset of each batch
  std::vector<int64_t> batch_lab;  // [B+1] global label offset of each batch
  std::vector<int64_t> batch_seq;  // [B+1] global sequence offset of each batch
  int64_t n_batches() const { return static_cast<int64_t>(batch_seg.size()) - 1; }
};

// Output buffers, sized from the layout. Batch-local indices (each batch's flat tokens start
// at 0); seg_offsets / seg_seqs / branch_offsets hold S_b+1 / S_b+1 / J_b+1 entries per batch
// (J_b = the batch's sequences), back to back.
struct PlanOutputs {
  int32_t* input_ids;       // [T]
  int32_t* position_ids;    // [T]
  uint8_t* key_valid;       // [T]
  int32_t* seg_offsets;     // [S + B]
  int32_t* prefix_len;      // [S]
  int32_t* branch_offsets;  // [J + B]
  int32_t* label_pos;       // [K]
  int32_t* label_ids;       // [K]
  int32_t* label_seq;       // [K]
  int32_t* pool_pos;        // [J]
  int32_t* seq_record;      // [J]
  int32_t* seg_seqs;        // [S + B] batch-local first sequence of each segment, then J_b
};

// Checks every input; returns "" or a one-line message (same wording as plan.py).
std::string check_plan_inputs(const PlanParams& p);
// First pass: prefixes, segment sizes, bucketed order, greedy batch cuts. Returns "" or an
// error message (a segment longer than the budget).
std::string make_plan_layout(const PlanParams& p, PlanLayout* layout);
// Second pass: writes every batch into the output buffers.
void fill_plan(const PlanParams& p, const PlanLayout& layout, const PlanOutputs& out);

// Length bucket of a segment: floor(log_sqrt2(len)) = bit_length(len^2) - 1, -1 for 0.
inline int segment_bucket(int64_t len) {
  if (len <= 0) return -1;
  const uint64_t sq = static_cast<uint64_t>(len) * static_cast<uint64_t>(len);
  return 63 - __builtin_clzll(sq);
}

}  // namespace rmbf
