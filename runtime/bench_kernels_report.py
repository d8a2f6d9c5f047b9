"""The results of ``dlrm-deploy bench kernels``: speed-ups against the baselines, the printed table
and the PNG plot."""

from __future__ import annotations


def add_ratios(result: dict) -> None:
    """Speed-ups of every row against torch fp32, torch of its dtype and FBGEMM of its dtype."""
    by = {(r["dtype"], r["kernel"]): r for r in result["rows"] if r.get("status") == "ok"}
    torch32 = by.get(("fp32", "torch"))
    for r in result["rows"]:
        if r.get("status") != "ok":
            continue
        for key, base in (("x_torch_fp32", torch32), ("x_torch_same_dtype", by.get((r["dtype"], "torch"))),
                          ("x_fbgemm_same_dtype", by.get((r["dtype"], "fbgemm")))):
            if base:
                r[key] = base["median_ms"] / r["median_ms"]


def print_table(result: dict) -> None:
    """The result rows as a fixed-width table."""
    print("\n| dtype | kernel | median ms | min | max | GB/s | x torch fp32 | x torch same dtype | x FBGEMM same dtype |")
    print("|---|---|---|---|---|---|---|---|---|")
    f = lambda r, k: f"{r[k]:.2f}" if k in r else "-"
    for r in result["rows"]:
        if r.get("status") != "ok":
            print(f"| {r['dtype']} | {r['kernel']} | {r.get('status')} | | | | | | |")
            continue
        print(f"| {r['dtype']} | {r['kernel']} | {r['median_ms']:.3f} | {r['min_ms']:.3f} | {r['max_ms']:.3f} | "
              f"{r['gbps']:.0f} | {f(r, 'x_torch_fp32')} | {f(r, 'x_torch_same_dtype')} | {f(r, 'x_fbgemm_same_dtype')} |")


def plot(result: dict, path: str) -> None:
    """Bar chart of median milliseconds per kernel, one group per dtype."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if r.get("status") == "ok"]
    dtypes = list(dict.fromkeys(r["dtype"] for r in rows))
    fig, axes = plt.subplots(1, max(1, len(dtypes)), figsize=(5 * max(1, len(dtypes)), 4.5), squeeze=False)
    for ax, dt in zip(axes[0], dtypes):
        rs = [r for r in rows if r["dtype"] == dt]
        names = [r["kernel"] for r in rs]
        ax.barh(names, [r["median_ms"] for r in rs],
                xerr=[[r["median_ms"] - r["min_ms"] for r in rs], [r["max_ms"] - r["median_ms"] for r in rs]],
                color=["tab:gray" if n in ("torch", "fbgemm") else "tab:blue" for n in names])
        ax.set_title(f"{dt}")
        ax.set_xlabel("ms (median, min-max)")
        ax.invert_yaxis()
    cfg = result["config"]
    fig.suptitle(f"{result['gpu']}: {cfg['tables']}x{cfg['rows']} rows, D={cfg['dim']}, B={cfg['batch']}, "
                 f"L={cfg['pooling']}, {cfg['indices']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
