// Offsets of contiguous groups from per-sample group ids, torch-free.
//
// ids[N] must be non-decreasing (rewards laid out group by group; ids need not be dense). A group
// starts where the id changes: offsets = [0, starts..., N], num_groups + 1 entries. Two passes:
// a reduction counting the changes and spotting a decrease (vectorised), then a branch-free fill
// (every position is written at the current slot, the slot advances at a change).
#pragma once
#include <cstdint>

#include "isa.h"

namespace medix {
namespace cpu {

struct GroupIdScan {
  int64_t num_groups;
  int64_t first_decrease;  // position i with ids[i] < ids[i - 1], or -1
};

template <typename I>
MEDIX_INLINE GroupIdScan scan_group_ids_impl(const I* ids, int64_t n) {
  int64_t changes = 0;
  bool decrease = false;
  for (int64_t i = 1; i < n; ++i) {
    changes += ids[i] != ids[i - 1];
    decrease |= ids[i] < ids[i - 1];
  }
  GroupIdScan s{n > 0 ? changes + 1 : 0, -1};
  if (decrease) {
    for (int64_t i = 1; i < n; ++i)
      if (ids[i] < ids[i - 1]) { s.first_decrease = i; break; }
  }
  return s;
}

template <typename I>
MEDIX_INLINE void fill_group_offsets_impl(const I* ids, int64_t n, int64_t num_groups, int64_t* offsets) {
  offsets[0] = 0;
  if (n == 0) return;
  int64_t g = 1;
  for (int64_t i = 1; i < n; ++i) {
    offsets[g] = i;  // g <= num_groups throughout: the last slot is overwritten below
    g += ids[i] != ids[i - 1];
  }
  offsets[num_groups] = n;
}

template <typename I>
GroupIdScan scan_group_ids_base(const I* ids, int64_t n) { return scan_group_ids_impl(ids, n); }
template <typename I>
void fill_group_offsets_base(const I* ids, int64_t n, int64_t g, int64_t* o) { fill_group_offsets_impl(ids, n, g, o); }
#if MEDIX_HAS_ISA_VARIANTS
template <typename I>
MEDIX_TARGET_AVX512 GroupIdScan scan_group_ids_avx512(const I* ids, int64_t n) { return scan_group_ids_impl(ids, n); }
template <typename I>
MEDIX_TARGET_AVX2 GroupIdScan scan_group_ids_avx2(const I* ids, int64_t n) { return scan_group_ids_impl(ids, n); }
#endif

template <typename I>
GroupIdScan scan_group_ids(const I* ids, int64_t n) {
#if MEDIX_HAS_ISA_VARIANTS
  const int level = cpu_level();
  if (level == 2) return scan_group_ids_avx512(ids, n);
  if (level == 1) return scan_group_ids_avx2(ids, n);
#endif
  return scan_group_ids_base(ids, n);
}

template <typename I>
void fill_group_offsets(const I* ids, int64_t n, int64_t num_groups, int64_t* offsets) {
  fill_group_offsets_base(ids, n, num_groups, offsets);
}

}  // namespace cpu
}  // namespace medix
