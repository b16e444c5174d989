// Token-level shared prefixes (SPEC §7): plain C++, no Python, no torch.
#pragma once
#include <cstdint>

namespace rmbf {

// Parameters for common_prefix_lengths. Offsets index into `ids` (in elements).
struct PrefixParams {
  const int32_t* ids;      // flat token ids of all sequences
  const int64_t* offsets;  // [n_groups * group_size + 1], non-decreasing, offsets[0] == 0
  int64_t n_groups;        // e.g. records
  int64_t group_size;      // e.g. 6 sequences per record
  int32_t* out;            // [n_groups] longest common prefix of each group's sequences
};

// For each group, the length of the longest run of leading token ids that all of its
// sequences share. A group of one sequence gets that sequence's length.
void common_prefix_lengths(const PrefixParams& p);

}  // namespace rmbf
