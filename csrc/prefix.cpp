#include "prefix.h"

#include <algorithm>

namespace rmbf {

void common_prefix_lengths(const PrefixParams& p) {
  for (int64_t g = 0; g < p.n_groups; ++g) {
    const int64_t* off = p.offsets + g * p.group_size;
    const int32_t* first = p.ids + off[0];
    int64_t lcp = off[1] - off[0];
    for (int64_t s = 1; s < p.group_size && lcp > 0; ++s) {
      const int32_t* seq = p.ids + off[s];
      const int64_t len = std::min<int64_t>(lcp, off[s + 1] - off[s]);
      int64_t k = 0;
      while (k < len && seq[k] == first[k]) ++k;
      lcp = k;
    }
    p.out[g] = static_cast<int32_t>(lcp);
  }
}

}  // namespace rmbf
