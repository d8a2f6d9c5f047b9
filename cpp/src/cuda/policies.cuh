// Tuning layer of the kernels (CUB's policy -> agent -> dispatch split): every kernel variant is a
// named policy type holding its numbers, the kernels (bag_kernel.cuh, warp_kernel.cuh) are
// templated on a policy, and launch.cuh dispatches through the one policy list per family below,
// which is also what instantiates the kernels. Adding a variant = one policy type + one list entry.
#pragma once

#include "params.cuh"

namespace dd {
namespace {

// ---- family 1 (bag_kernel): PyTorch's structure with the paper's optimisations ----
// Prefetch: lookups in flight per thread (0 = none); CapRegisters: cut the register budget for
// DD_OCC_MIN_BLOCKS resident 256-thread blocks per SM (a per-architecture number, so it is read in
// each device pass here and not part of the type: host and device must name the same kernel);
// Hint: L2 evict_last hints for hot rows and the hot-row prefetch pass.
template <int Variant, int Prefetch, bool CapRegisters, bool Hint>
struct BagPolicy {
  static constexpr int kVariant = Variant;
  static constexpr int kPrefetch = Prefetch;
  static constexpr int kMinBlocks = CapRegisters ? DD_OCC_MIN_BLOCKS : 1;
  static constexpr bool kHint = Hint;
};

using BaselinePolicy = BagPolicy<DD_BASELINE, 0, false, false>;
using OccupancyPolicy = BagPolicy<DD_OCCUPANCY, 0, true, false>;
template <int PD> using PrefetchPolicy = BagPolicy<DD_PREFETCH, PD, false, false>;
using L2PinPolicy = BagPolicy<DD_L2PIN, 0, false, true>;
template <int PD> using CombinedPolicy = BagPolicy<DD_COMBINED, PD, true, true>;

// ---- family 2 (warp_kernel, what auto runs): vector bytes per lane and row loads in flight ----
template <int VecBytes, int Unroll>
struct WarpPolicy {
  static constexpr int kVecBytes = VecBytes;
  static constexpr int kUnroll = Unroll;
};

// ---- family 3 (short_kernel, auto for short bags): row bytes of elements, bags a warp, rows a step ----
// short_kernel's bytes of a row a lane adds: whole columns of rows of 128 bytes and more; 4 under
// that, where lane groups take a bag's rows in turn.
__host__ __device__ constexpr int short_lane_bytes(int row_bytes) { return row_bytes >= 128 ? row_bytes / 32 : 4; }

template <int RowBytes, int Bags, int Rows>
struct ShortPolicy {
  static constexpr int kRowBytes = RowBytes;
  static constexpr int kBags = Bags;
  static constexpr int kRows = Rows;
};

template <typename... Policies>
struct PolicyList {};

// The one table of compiled variants: plan.cuh picks among these (prefetch distances 4/8/16 are
// contract::PREFETCH_DISTANCES; 0 runs 8).
using BagPolicies = PolicyList<BaselinePolicy, OccupancyPolicy, PrefetchPolicy<4>, PrefetchPolicy<8>, PrefetchPolicy<16>,
                               L2PinPolicy, CombinedPolicy<4>, CombinedPolicy<8>, CombinedPolicy<16>>;
using WarpPolicies = PolicyList<WarpPolicy<16, 4>, WarpPolicy<8, 4>, WarpPolicy<4, 4>, WarpPolicy<16, 8>,
                                WarpPolicy<8, 8>, WarpPolicy<4, 8>>;
// 2 bags a warp, 16 rows a step (H100, D 128 and 64 at 19 and 38 lookups a bag: faster than 32 rows a
// step or 4 bags a warp in most cells, docs/benchmarks.md). 64-byte rows (int8 D 64): 32 rows a step,
// as 4 bags or 2 (H100, 19 lookups, split: 0.145 ms against 0.176 with 2 bags of 8 rows). 512-byte
// rows (fp32 D 128): 2 bags of 4 rows a step (H100, 19 lookups: 0.632 ms against 0.659 with 8 rows
// and 0.670 with one bag of 16). Bags of a few lookups: 4 or 8 bags of 8 or 4 rows (plan.cuh,
// short_bags), and the last line's 8 rows a step (16 for 32-byte rows; plan.cuh, few_shape).
// short_compiled says which dtypes each is built for.
using ShortPolicies =
    PolicyList<ShortPolicy<16, 4, 32>, ShortPolicy<32, 4, 32>, ShortPolicy<32, 8, 32>, ShortPolicy<64, 2, 32>,
               ShortPolicy<64, 4, 32>, ShortPolicy<64, 8, 32>, ShortPolicy<128, 2, 16>, ShortPolicy<128, 4, 32>,
               ShortPolicy<128, 8, 32>, ShortPolicy<256, 2, 16>, ShortPolicy<512, 2, 8>,
               ShortPolicy<32, 4, 16>, ShortPolicy<64, 4, 8>, ShortPolicy<128, 4, 8>, ShortPolicy<128, 8, 8>,
               ShortPolicy<256, 4, 8>, ShortPolicy<256, 8, 8>, ShortPolicy<512, 4, 8>>;

}  // namespace
}  // namespace dd
