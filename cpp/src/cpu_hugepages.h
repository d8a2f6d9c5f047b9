// Transparent huge pages for the tables the CPU forward reads (Linux; a no-op elsewhere). Header
// only: included by embedding_bag_cpu_fast.cpp.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <vector>

#include "dlrm_deploy/embedding_bag.h"

#if defined(__linux__)
#include <sys/mman.h>
#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25  // Linux 6.1; older kernels answer EINVAL, which is harmless here
#endif
#endif

namespace dd {

// Tables smaller than this are left alone: their 4 KB pages fit in the TLB's reach.
constexpr size_t kHugePageMinBytes = size_t(16) << 20;

#if defined(__linux__)
namespace hugepages_detail {

constexpr uintptr_t kHuge = uintptr_t(2) << 20;
constexpr uintptr_t kCollapseChunk = uintptr_t(32) << 20;  // one parallel task's share
constexpr auto kRecheck = std::chrono::seconds(1);
constexpr size_t kMaxRanges = 64;

struct Range {
  uintptr_t lo, hi;
  enum State { kBusy, kHuge, kFailed } state;
  std::chrono::steady_clock::time_point checked;
};

inline std::mutex g_mutex;
inline std::vector<Range> g_ranges;  // few entries: one per large weights buffer the process has used

struct Collapse {
  uintptr_t lo, hi;
  std::atomic<bool> failed{false};
};

inline void collapse_chunks(void* arg, int64_t begin, int64_t end) {
  auto& c = *static_cast<Collapse*>(arg);
  for (int64_t k = begin; k < end; ++k) {
    const uintptr_t a = c.lo + (uintptr_t)k * kCollapseChunk;
    const uintptr_t b = a + kCollapseChunk < c.hi ? a + kCollapseChunk : c.hi;
    if (madvise(reinterpret_cast<void*>(a), b - a, MADV_COLLAPSE) != 0) c.failed.store(true, std::memory_order_relaxed);
  }
}

// MADV_HUGEPAGE (later faults, khugepaged) and MADV_COLLAPSE (the pages present now); true when
// both succeeded on the whole range.
inline bool make_huge(uintptr_t lo, uintptr_t hi, dd_parallel_for_fn parallel_for, void* ctx) {
  if (madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE) != 0) return false;
  Collapse c;
  c.lo = lo;
  c.hi = hi;
  const int64_t chunks = (int64_t)((hi - lo + kCollapseChunk - 1) / kCollapseChunk);
  if (parallel_for != nullptr && chunks > 1) parallel_for(ctx, chunks, &collapse_chunks, &c);
  else collapse_chunks(&c, 0, chunks);
  return !c.failed.load();
}

}  // namespace hugepages_detail

// Whether advise_huge_pages acts in this process (the platform has it and the environment allows it).
inline bool huge_pages_enabled() {
  static const bool on = [] {
    const char* e = std::getenv("DD_CPU_HUGE_PAGES");
    return e == nullptr || std::strcmp(e, "0") != 0;
  }();
  return on;
}

// Best effort, never an error, never a change of the bytes: asks the kernel to back the 2 MB-aligned
// interior of [p, p + bytes) with transparent huge pages (madvise MADV_HUGEPAGE, then MADV_COLLAPSE,
// which copies the range's present 4 KB pages into 2 MB ones in place, in parallel_for chunks), so
// that random row lookups stop paying a page walk each. Done once per range: a range whose collapse
// failed (file-backed memory, no free huge pages) is not tried again; one that succeeded is
// re-collapsed at most once a second (cheap while it stays huge; it catches a new buffer at a reused
// address). A call that finds its range being collapsed by another thread returns at once.
// DD_CPU_HUGE_PAGES=0 in the environment turns it off.
inline void advise_huge_pages(const void* p, size_t bytes, dd_parallel_for_fn parallel_for, void* parallel_ctx) {
  using namespace hugepages_detail;
  if (p == nullptr || bytes < kHugePageMinBytes || !huge_pages_enabled()) return;
  const uintptr_t lo = ((uintptr_t)p + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t hi = ((uintptr_t)p + bytes) & ~(kHuge - 1);
  if (hi <= lo) return;
  auto find = [&] {
    for (auto it = g_ranges.begin(); it != g_ranges.end(); ++it)
      if (it->lo == lo && it->hi == hi) return it;
    return g_ranges.end();
  };
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    const auto now = std::chrono::steady_clock::now();
    auto it = find();
    if (it == g_ranges.end()) {
      if (g_ranges.size() >= kMaxRanges) {  // forget the oldest settled range
        for (auto old = g_ranges.begin(); old != g_ranges.end(); ++old)
          if (old->state != Range::kBusy) {
            g_ranges.erase(old);
            break;
          }
      }
      g_ranges.push_back(Range{lo, hi, Range::kBusy, now});
    } else {
      if (it->state != Range::kHuge || now - it->checked < kRecheck) return;  // busy, failed, or recent
      it->state = Range::kBusy;
    }
  }
  // Outside the lock: a first collapse copies the whole range (roughly 2 ms per MB per thread).
  const bool ok = make_huge(lo, hi, parallel_for, parallel_ctx);
  std::lock_guard<std::mutex> lock(g_mutex);
  auto it = find();
  if (it != g_ranges.end()) {
    it->state = ok ? Range::kHuge : Range::kFailed;
    it->checked = std::chrono::steady_clock::now();
  }
}

#else

inline bool huge_pages_enabled() { return false; }
inline void advise_huge_pages(const void*, size_t, dd_parallel_for_fn, void*) {}

#endif

}  // namespace dd
