"""The fast CPU forward (dd_forward_cpu, dd_forward_tables_cpu and their _parallel forms) against the
sequential CPU reference (dd_forward_*_cpu_reference), bit for bit: every dtype, mode, output type,
per-sample weights, include_last_offset, empty and huge bags, odd dims and the multiples of 8 that
the x86 intrinsic kernels take (register and L1 accumulators), int32/int64 ids, the hot-first
layout, both call forms, serial and with a multi-threaded parallel_for; and bad input, which must
give the very same message (the lowest (table, bag) wins, whatever the threads do). Tables past
16 MB are put in transparent huge pages by the forward: same bits, a failing madvise (file-backed
memory) harmless, DD_CPU_HUGE_PAGES=0 respected, concurrent first calls safe."""

from __future__ import annotations

import ctypes
import mmap
import os
import random
import subprocess
import sys
import threading

import numpy as np
import pytest

from dlrm_deploy.runtime import _core

MSG = _core.MSG_LEN
P, I64, SZ = ctypes.c_void_p, ctypes.c_int64, ctypes.c_size_t
C = ctypes.POINTER(_core.Config)
TL = ctypes.POINTER(_core.TableLookups)
RANGE_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64)
PARALLEL_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, RANGE_FN, ctypes.c_void_p)


def _lib():
    L = _core.lib()
    sig = {
        "dd_forward_cpu_reference": [C, P, P, P, P, I64, I64, P, P, SZ],
        "dd_forward_tables_cpu_reference": [C, P, TL, P, P, SZ],
        "dd_forward_cpu_parallel": [C, P, P, P, P, I64, I64, P, PARALLEL_FN, P, P, SZ],
        "dd_forward_tables_cpu_parallel": [C, P, TL, P, PARALLEL_FN, P, P, SZ],
    }
    for name, args in sig.items():
        f = getattr(L, name)
        f.restype, f.argtypes = ctypes.c_int, args
    return L


L = _lib()


def _threaded_parallel_for(seed: int, threads: int = 3):
    """A parallel_for that cuts [0, n) into random ranges and runs them in random order on several
    threads (ctypes drops the GIL while the core runs, so they really overlap)."""

    def parallel_for(_ctx, n, body, arg):
        rng = random.Random(seed + n)
        cuts = sorted(rng.sample(range(1, n), min(n - 1, rng.randint(0, 12)))) if n > 1 else []
        ranges = list(zip([0] + cuts, cuts + [n]))
        rng.shuffle(ranges)
        work = [ranges[i::threads] for i in range(threads)]
        ts = [threading.Thread(target=lambda rs=rs: [body(arg, b, e) for b, e in rs]) for rs in work]
        for t in ts:
            t.start()
        for t in ts:
            t.join()

    return PARALLEL_FN(parallel_for)


# --------------------------------------------------------------------------------------------
# Inputs


def _weights(cfg, dtype: str, rng) -> np.ndarray:
    """A random packed blob of every stored row (values with a wide exponent range, so that the
    order of the fp32 sums shows in the bits; fp16 includes subnormals)."""
    rows, rb, D = _core.lib().dd_total_rows(ctypes.byref(cfg)), _core.row_bytes(cfg), cfg.dim
    if dtype == "fp32":
        w = (rng.standard_normal((rows, D)) * np.exp2(rng.integers(-20, 20, (rows, D)))).astype(np.float32)
        return w.view(np.uint8).reshape(rows, rb)
    if dtype == "fp16":
        w = rng.integers(0, 1 << 16, (rows, D), dtype=np.uint32).astype(np.uint16)
        w[(w & 0x7C00) == 0x7C00] &= 0xBFFF  # no inf/NaN: their sums are compared elsewhere
        return w.view(np.uint8).reshape(rows, rb)
    if dtype == "bf16":
        f = (rng.standard_normal((rows, D)) * np.exp2(rng.integers(-30, 30, (rows, D)))).astype(np.float32)
        return (f.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8).reshape(rows, rb)
    blob = np.zeros((rows, rb), dtype=np.uint8)
    blob[:, :D] = rng.integers(0, 256, (rows, D))
    sb = np.stack([rng.uniform(1e-3, 1.0, rows), rng.standard_normal(rows)], 1).astype(np.float32)
    blob[:, D:D + 8] = sb.view(np.uint8)
    return blob


def _config(tables, dim, dtype="fp32", mode="sum", index="int64", ilo=0, out="fp32", pinned=0, hot_first=0):
    attrs = {"table_rows": list(tables), "dim": dim, "dtype": dtype, "mode": mode, "include_last_offset": ilo,
             "out_dtype": out}
    if hot_first:
        attrs.update(pinned_rows=pinned, hot_first=1)
    return _core.make_config(attrs, index_type=index)


def _lookups(tables, batch, rng, lengths="random", max_len=6, index="int64", ilo=0, weighted=False, trailing=0):
    """Per table: ids, offsets (with PyTorch's rules) and per-sample weights."""
    it = np.int32 if index == "int32" else np.int64
    out = []
    for rows in tables:
        if lengths == "fixed":
            lens = np.full(batch, max_len)
        else:
            lens = rng.integers(0, max_len + 1, batch)
            lens[rng.random(batch) < 0.2] = 0  # empty bags
        n = int(lens.sum())
        ids = rng.integers(0, rows, n + trailing).astype(it)
        off = np.concatenate([[0], np.cumsum(lens)]).astype(it)
        if not ilo:
            off = off[:-1]
        psw = rng.standard_normal(n + trailing).astype(np.float32) if weighted else None
        out.append((ids, off, psw))
    return out


def _tables_struct(lk):
    arr = (_core.TableLookups * len(lk))()
    for t, (ids, off, psw) in enumerate(lk):
        arr[t].indices = ids.ctypes.data
        arr[t].offsets = off.ctypes.data
        arr[t].per_sample_weights = psw.ctypes.data if psw is not None else None
        arr[t].num_indices = len(ids)
        arr[t].num_offsets = len(off)
    return arr


def _out(cfg, batch):
    elem = 4 if cfg.out_dtype == 0 else 2
    return np.full(batch * cfg.num_tables * cfg.dim * elem, 0xAB, dtype=np.uint8)


def _run_tables(fn, cfg, w, lk, batch, *extra):
    out, buf = _out(cfg, batch), ctypes.create_string_buffer(MSG)
    arr = _tables_struct(lk)
    rc = fn(ctypes.byref(cfg), w.ctypes.data, arr, out.ctypes.data, *extra, buf, MSG)
    return rc, buf.value.decode(), out


def _packed(cfg, lk, batch):
    """The same lookups in the packed form (concatenated ids, table-major offsets)."""
    ids = np.concatenate([x[0][:int(x[1][-1]) if cfg.include_last_offset else len(x[0])] for x in lk])
    starts, base = [], 0
    for i, (t_ids, off, _) in enumerate(lk):
        o = off[:batch] + base
        starts.append(o)
        base += int(off[-1]) if cfg.include_last_offset else len(t_ids)
    off = np.concatenate(starts + ([np.array([base])] if cfg.include_last_offset else [])).astype(ids.dtype)
    psw = None
    if lk[0][2] is not None:
        psw = np.concatenate([x[2][:int(x[1][-1]) if cfg.include_last_offset else len(x[0])] for x in lk])
    return ids, off, psw


def _run_packed(fn, cfg, w, ids, off, psw, batch, *extra):
    out, buf = _out(cfg, batch), ctypes.create_string_buffer(MSG)
    rc = fn(ctypes.byref(cfg), w.ctypes.data, ids.ctypes.data if len(ids) else None, off.ctypes.data,
            psw.ctypes.data if psw is not None else None, len(ids), len(off), out.ctypes.data, *extra, buf, MSG)
    return rc, buf.value.decode(), out


def _all_forms_equal(cfg, w, lk, batch, seed=0):
    """Fast serial, fast threaded and the reference agree bit for bit (and in rc and message) in both
    call forms. Returns the reference's (rc, message) of the per-table form."""
    pf = _threaded_parallel_for(seed)
    ref = _run_tables(L.dd_forward_tables_cpu_reference, cfg, w, lk, batch)
    fast = _run_tables(L.dd_forward_tables_cpu, cfg, w, lk, batch)
    par = _run_tables(L.dd_forward_tables_cpu_parallel, cfg, w, lk, batch, pf, None)
    assert fast[:2] == ref[:2] and par[:2] == ref[:2]
    if ref[0] == 0:
        assert np.array_equal(fast[2], ref[2]), "per-table: fast output differs from the reference"
        assert np.array_equal(par[2], ref[2]), "per-table: threaded output differs from the reference"
    ids, off, psw = _packed(cfg, lk, batch)
    pref = _run_packed(L.dd_forward_cpu_reference, cfg, w, ids, off, psw, batch)
    pfast = _run_packed(L.dd_forward_cpu, cfg, w, ids, off, psw, batch)
    ppar = _run_packed(L.dd_forward_cpu_parallel, cfg, w, ids, off, psw, batch, pf, None)
    assert pfast[:2] == pref[:2] and ppar[:2] == pref[:2]
    if pref[0] == 0:
        assert np.array_equal(pfast[2], pref[2]) and np.array_equal(ppar[2], pref[2])
        if ref[0] == 0:
            assert np.array_equal(pref[2], ref[2])  # both forms mean the same
    return ref[:2]


# --------------------------------------------------------------------------------------------
# Bit-exact outputs


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16", "int8"])
@pytest.mark.parametrize("dim", [1, 3, 4, 8, 16, 24, 32, 64, 100, 128, 136, 256, 260])
def test_dtypes_and_dims(dtype, dim):
    if dtype == "int8" and dim % 4:
        pytest.skip("int8 row-wise tables need dim divisible by 4")
    rng = np.random.default_rng(dim * 7 + len(dtype))
    tables = (40, 1, 300)
    cfg = _config(tables, dim, dtype)
    w = _weights(cfg, dtype, rng)
    lk = _lookups(tables, 9, rng, max_len=12)
    assert _all_forms_equal(cfg, w, lk, 9)[0] == 0


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16", "int8"])
@pytest.mark.parametrize("mode,weighted", [("sum", False), ("sum", True), ("mean", False)])
@pytest.mark.parametrize("ilo", [0, 1])
@pytest.mark.parametrize("index", ["int32", "int64"])
@pytest.mark.parametrize("dim", [20, 16, 128])
def test_modes_weights_offsets_index_types(dtype, mode, weighted, ilo, index, dim):
    rng = np.random.default_rng(hash((dtype, mode, weighted, ilo, index, dim)) % 2**32)
    tables = (70, 20)
    cfg = _config(tables, dim, dtype, mode=mode, index=index, ilo=ilo)
    w = _weights(cfg, dtype, rng)
    lk = _lookups(tables, 17, rng, index=index, ilo=ilo, weighted=weighted, trailing=3 if ilo else 0)
    assert _all_forms_equal(cfg, w, lk, 17)[0] == 0


@pytest.mark.parametrize("out", ["fp16", "bf16"])
@pytest.mark.parametrize("mode", ["sum", "mean"])
def test_output_rounding(out, mode):
    rng = np.random.default_rng(11)
    tables = (64, 33)
    cfg = _config(tables, 24, "fp32", mode=mode, out=out)
    w = _weights(cfg, "fp32", rng)
    assert _all_forms_equal(cfg, w, _lookups(tables, 12, rng), 12)[0] == 0


@pytest.mark.parametrize("dtype", ["fp32", "int8"])
@pytest.mark.parametrize("dim", [16, 128, 20])
def test_hot_first_layout(dtype, dim):
    rng = np.random.default_rng(5)
    tables = (50, 80, 30)
    cfg = _config(tables, dim, dtype, pinned=10, hot_first=1)
    w = _weights(cfg, dtype, rng)
    assert _all_forms_equal(cfg, w, _lookups(tables, 20, rng, max_len=9, weighted=True), 20)[0] == 0


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("dtype,dim", [("fp32", 128), ("fp16", 128), ("int8", 128), ("fp32", 16), ("bf16", 64)])
def test_huge_bags_and_many_tasks(weighted, dtype, dim):
    """Bags of thousands of ids (many prefetches ahead, fp32 rounding over long sums) next to empty
    ones, and a batch big enough to split into many parallel tasks; the first table is past the
    1 MB from which rows are prefetched."""
    rng = np.random.default_rng(9)
    tables = (5000 if dim == 128 else 40000, 300)
    cfg = _config(tables, dim, dtype)
    w = _weights(cfg, dtype, rng)
    lk = _lookups(tables, 6, rng, max_len=4000, weighted=weighted)
    assert _all_forms_equal(cfg, w, lk, 6)[0] == 0
    lk = _lookups(tables, 600, rng, max_len=150, weighted=weighted)
    assert _all_forms_equal(cfg, w, lk, 600, seed=3)[0] == 0


def test_empty_batch_and_no_ids():
    rng = np.random.default_rng(1)
    cfg = _config((10, 20), 8)
    w = _weights(cfg, "fp32", rng)
    assert _all_forms_equal(cfg, w, _lookups((10, 20), 0, rng), 0)[0] == 0
    assert _all_forms_equal(cfg, w, _lookups((10, 20), 5, rng, max_len=0), 5)[0] == 0


def test_every_fp16_value_decodes_like_the_reference():
    """All 65536 half values, infinities and NaNs included, one id per bag: the flat decoder of the
    fast path equals the reference's bit for bit."""
    D = 128
    cfg = _config((512,), D, "fp16")
    w = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.uint8).reshape(512, 2 * D)
    ids = np.arange(512, dtype=np.int64)
    lk = [(ids, np.arange(512, dtype=np.int64), None)]
    assert _all_forms_equal(cfg, w, lk, 512)[0] == 0
    lk = [(ids, np.arange(512, dtype=np.int64), np.full(512, 0.75, dtype=np.float32))]
    assert _all_forms_equal(cfg, w, lk, 512)[0] == 0


# --------------------------------------------------------------------------------------------
# Bad input: same status, same message


def _break(lk, what, t, rows):
    ids, off, psw = lk[t]
    ids, off = ids.copy(), off.copy()
    if what == "id past the table":
        ids[len(ids) // 2] = rows
    elif what == "negative id":
        ids[-1] = -3
    elif what == "first offset":
        off[0] = 1
    elif what == "negative offset":
        off[len(off) // 2] = -1
    elif what == "offset past the end":
        off[len(off) - 1] = len(ids) + 5
    elif what == "decreasing":
        off[len(off) // 2] = off[len(off) // 2 - 1] + 1 if len(ids) else 1
        off[len(off) // 2 + 1] = 0
    lk[t] = (ids, off, psw)


BAD = ["id past the table", "negative id", "first offset", "negative offset", "offset past the end", "decreasing"]


@pytest.mark.parametrize("what", BAD)
@pytest.mark.parametrize("index", ["int32", "int64"])
@pytest.mark.parametrize("dim", [16, 128, 12])
def test_bad_input_same_message(what, index, dim):
    rng = np.random.default_rng(len(what))
    tables = (60, 90, 40)
    cfg = _config(tables, dim, index=index)
    w = _weights(cfg, "fp32", rng)
    lk = _lookups(tables, 300, rng, lengths="fixed", max_len=5, index=index)
    _break(lk, what, 1, tables[1])
    rc, msg = _all_forms_equal(cfg, w, lk, 300, seed=len(what))
    assert rc == 2 and msg


def test_several_errors_lowest_table_and_bag_wins():
    """Errors in many bags of several tables: every form and every thread schedule reports the
    reference's (the lowest (table, bag); in a bag, its first bad id)."""
    rng = np.random.default_rng(21)
    tables = (60, 90, 40)
    cfg = _config(tables, 32)
    w = _weights(cfg, "fp32", rng)
    for trial in range(8):
        lk = _lookups(tables, 400, rng, lengths="fixed", max_len=4)
        for t in (1, 2):
            ids = lk[t][0].copy()
            bad = rng.choice(len(ids), 6, replace=False)
            ids[bad] = tables[t] + rng.integers(0, 5, 6)
            lk[t] = (ids, lk[t][1], None)
        if trial % 2:
            off = lk[2][1].copy()
            off[150] = off[149] - 1  # decreasing, in a later table than table 1's bad ids
            lk[2] = (lk[2][0], off, None)
        rc, msg = _all_forms_equal(cfg, w, lk, 400, seed=trial)
        assert rc == 2 and "of table 1" in msg


# --------------------------------------------------------------------------------------------
# Tables in transparent huge pages

HUGE_ROWS = 40_000  # x 128 fp32 = 20 MB: past the 16 MB from which the forward asks for huge pages
PAGE_2M = 2 << 20


def _anon_table(w: np.ndarray, offset: int = 64):
    """A copy of w in a private anonymous mapping (4 KB pages unless someone asks otherwise),
    `offset` bytes past a page boundary like a heap buffer. Returns (mapping, array)."""
    buf = mmap.mmap(-1, w.nbytes + offset, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    t = np.frombuffer(buf, dtype=np.uint8)[offset:offset + w.nbytes].reshape(w.shape)
    t[:] = w
    return buf, t


def _anon_huge_kb(t: np.ndarray) -> int:
    """AnonHugePages (kB) of the mappings under t (-1: no /proc/self/smaps)."""
    from dlrm_deploy.runtime.bench_memory import smaps_kb

    return smaps_kb("AnonHugePages", t.ctypes.data, t.ctypes.data + t.nbytes)


def _collapse_works() -> bool:
    """Whether this kernel turns an anonymous range into huge pages on MADV_COLLAPSE (Linux >= 6.1
    with transparent huge pages)."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    buf, t = _anon_table(np.ones(2 * PAGE_2M, dtype=np.uint8), offset=0)
    lo = (t.ctypes.data + PAGE_2M - 1) & ~(PAGE_2M - 1)
    return libc.madvise(lo, PAGE_2M, 25) == 0 and _anon_huge_kb(t) >= PAGE_2M // 1024


def _huge_case(seed: int, batch: int = 64):
    rng = np.random.default_rng(seed)
    tables = (HUGE_ROWS, 300)
    cfg = _config(tables, 128)
    w = _weights(cfg, "fp32", rng)
    return cfg, w, _lookups(tables, batch, rng, max_len=40, weighted=True), batch


def test_huge_page_table_same_bits():
    """A 20 MB table in 4 KB pages: the first fast call collapses it into huge pages in place; every
    form still equals the reference bit for bit, and the table's bytes are untouched."""
    cfg, w, lk, batch = _huge_case(31)
    buf, t = _anon_table(w)
    before = _anon_huge_kb(t)
    assert _all_forms_equal(cfg, t, lk, batch)[0] == 0
    assert np.array_equal(t, w)
    if before == 0 and _collapse_works():
        assert _anon_huge_kb(t) > 0, "the forward did not put the table in huge pages"
    assert _all_forms_equal(cfg, t, lk, batch, seed=1)[0] == 0  # again, on huge pages


def test_huge_pages_failing_madvise_is_harmless(tmp_path):
    """A table in a read-only file mapping: MADV_COLLAPSE refuses it (or does nothing useful);
    the forward runs as before, now and on later calls."""
    cfg, w, lk, batch = _huge_case(32)
    path = tmp_path / "table.bin"
    w.tofile(path)
    with open(path, "rb") as f:
        m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    t = np.frombuffer(m, dtype=np.uint8).reshape(w.shape)
    for seed in range(3):
        assert _all_forms_equal(cfg, t, lk, batch, seed=seed)[0] == 0


def test_huge_pages_concurrent_first_calls():
    """Several threads make the first call on one fresh table at once (one collapses, the others
    read it meanwhile): every output equals the reference."""
    cfg, w, lk, batch = _huge_case(33, batch=200)
    buf, t = _anon_table(w)
    ref = _run_tables(L.dd_forward_tables_cpu_reference, cfg, t, lk, batch)
    assert ref[0] == 0
    results = [None] * 4

    def call(k):
        results[k] = _run_tables(L.dd_forward_tables_cpu_parallel, cfg, t, lk, batch, _threaded_parallel_for(k), None)

    ts = [threading.Thread(target=call, args=(k,)) for k in range(len(results))]
    for th in ts:
        th.start()
    for th in ts:
        th.join()
    for rc, msg, out in results:
        assert rc == 0 and np.array_equal(out, ref[2])
    assert np.array_equal(t, w)


_CHILD = r"""
import ctypes, mmap, sys
import numpy as np
L = ctypes.CDLL(sys.argv[1])
cfg = ctypes.create_string_buffer(1 << 16)  # room for any dd_config
L.dd_config_init(cfg)
msg = ctypes.create_string_buffer(512)
rows, dim = 40_000, 128
assert L.dd_config_set_ints(cfg, b"table_rows", (ctypes.c_int64 * 1)(rows), ctypes.c_int64(1), msg, 512) == 0, msg.value
assert L.dd_config_set_int(cfg, b"dim", ctypes.c_int64(dim), msg, 512) == 0, msg.value
buf = mmap.mmap(-1, rows * dim * 4, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
w = np.frombuffer(buf, dtype=np.float32)
w[:] = 1.0
ids = np.arange(0, rows, 7, dtype=np.int64)
off = np.zeros(1, dtype=np.int64)
out = np.zeros(dim, dtype=np.float32)
rc = L.dd_forward_cpu(cfg, ctypes.c_void_p(w.ctypes.data), ctypes.c_void_p(ids.ctypes.data),
                      ctypes.c_void_p(off.ctypes.data), None, ctypes.c_int64(len(ids)), ctypes.c_int64(1),
                      ctypes.c_void_p(out.ctypes.data), msg, ctypes.c_size_t(512))
assert rc == 0 and out[0] == len(ids), (rc, msg.value)
lo, hi, kb, inside = w.ctypes.data, w.ctypes.data + w.nbytes, 0, False
for line in open("/proc/self/smaps"):
    head = line.split(None, 1)[0]
    if not head.endswith(":"):
        a, b = (int(x, 16) for x in head.split("-"))
        inside = a < hi and b > lo
    elif inside and head == "AnonHugePages:":
        kb += int(line.split()[1])
print(kb)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="transparent huge pages are Linux's")
def test_huge_pages_switch():
    """DD_CPU_HUGE_PAGES=0 leaves the table's pages alone; without it they become huge (where the
    kernel can collapse)."""
    lib_path = L._name

    def huge_kb(**env):
        e = {k: v for k, v in os.environ.items() if k != "DD_CPU_HUGE_PAGES"}
        e.update(env)
        r = subprocess.run([sys.executable, "-c", _CHILD, lib_path], env=e, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        return int(r.stdout.split()[-1])

    assert huge_kb(DD_CPU_HUGE_PAGES="0") == 0
    if _collapse_works():
        assert huge_kb() > 0
