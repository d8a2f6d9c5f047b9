"""Memory of the benchmarks' processes: host RSS and its high-water mark around a call (Linux's
/proc, else ru_maxrss as a lower bound) and the free memory of the CUDA device (bytes)."""

from __future__ import annotations

import resource
import sys


def proc_status_bytes(key: str) -> int | None:
    """A VmRSS / VmHWM line of /proc/self/status in bytes (None off Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def smaps_kb(field: str, lo: int | None = None, hi: int | None = None) -> int:
    """Sum of one /proc/self/smaps field in kB (e.g. AnonHugePages) over the mappings overlapping the
    address range [lo, hi) (all mappings when lo is None); -1 where smaps cannot be read."""
    total, inside = 0, False
    try:
        with open("/proc/self/smaps") as f:
            for line in f:
                head = line.split(None, 1)[0]
                if not head.endswith(":"):
                    a, b = (int(x, 16) for x in head.split("-"))
                    inside = lo is None or (a < hi and b > lo)
                elif inside and head == field + ":":
                    total += int(line.split()[1])
    except OSError:
        return -1
    return total


def _reset_rss_peak() -> bool:
    """Resets this process's RSS high-water mark (VmHWM) to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return proc_status_bytes("VmHWM") is not None
    except OSError:
        return False


def _ru_maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def host_peak(fn):
    """Runs fn() and returns (its result, host memory of this process around it): rss_before,
    peak (RSS high-water during the call), increment (peak - rss_before), rss_after, method.
    method "VmHWM" is exact (the high-water mark is reset first); "ru_maxrss" is a lower bound of
    the increment (ru_maxrss only moves when the call goes above the process's earlier peak)."""
    before = proc_status_bytes("VmRSS")
    exact = _reset_rss_peak()
    ru0 = _ru_maxrss_bytes()
    result = fn()
    if exact:
        peak, method = proc_status_bytes("VmHWM"), "VmHWM"
    else:
        before = before if before is not None else ru0
        peak, method = max(_ru_maxrss_bytes(), before), "ru_maxrss (lower bound)"
    return result, {"rss_before": before, "peak": peak, "increment": peak - before,
                    "rss_after": proc_status_bytes("VmRSS"), "method": method}


def gpu_free_bytes() -> int | None:
    """Free memory of the current CUDA device (torch.cuda.mem_get_info), None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    torch.cuda.synchronize()
    return int(torch.cuda.mem_get_info()[0])


