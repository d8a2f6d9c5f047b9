#!/usr/bin/env python3
"""A lookup trace from MovieLens ratings, for `--indices trace:FILE`: the item ids of a ratings
file in timestamp order (ties in file order), one per line, on stdout.

    python scripts/movielens_trace.py u.data > ml100k_items.txt

The ratings file is MovieLens' own (`u.data` of MovieLens 100k: user, item, rating and timestamp
per line, tab-separated); it is not part of this repository. docs/benchmarks.md has the kernel
ablation measured on it."""

from __future__ import annotations

import argparse
import sys


def items_by_time(lines) -> list[int]:
    """Item ids of 'user item rating timestamp' lines (any whitespace), ordered by timestamp; lines
    in file order where timestamps tie. ValueError names the first bad line."""
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            if len(parts) != 4:
                raise ValueError
            rows.append((int(parts[3]), n, int(parts[1])))
        except ValueError:
            raise ValueError(f"line {n}: expected 'user item rating timestamp', got {line.strip()!r}") from None
    rows.sort()
    return [item for _, _, item in rows]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ratings", help="MovieLens ratings file (u.data)")
    args = p.parse_args(argv)
    try:
        with open(args.ratings) as f:
            items = items_by_time(f)
    except (OSError, ValueError) as e:
        print(f"movielens_trace: {e}", file=sys.stderr)
        return 2
    sys.stdout.write("".join(f"{i}\n" for i in items))
    return 0


if __name__ == "__main__":
    sys.exit(main())
