"""scripts/movielens_trace.py: item ids in timestamp order, ties in file order; bad lines named."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from dlrm_deploy.export.index_sources import read_trace

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "movielens_trace.py"


def _run(tmp_path, text):
    f = tmp_path / "u.data"
    f.write_text(text)
    return subprocess.run([sys.executable, str(SCRIPT), str(f)], capture_output=True, text=True)


def test_items_in_timestamp_order_ties_in_file_order(tmp_path):
    r = _run(tmp_path, "196\t242\t3\t881250949\n186\t302\t3\t891717742\n\n22\t377\t1\t878887116\n"
                       "244\t51\t2\t881250949\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "377\n242\n51\n302\n"
    out = tmp_path / "trace.txt"
    out.write_text(r.stdout)
    assert np.array_equal(read_trace(out), [377, 242, 51, 302])  # what --indices trace: reads


def test_bad_line_is_one_line_error(tmp_path):
    r = _run(tmp_path, "196\t242\t3\t881250949\n186\tx\t3\t891717742\n")
    assert r.returncode == 2
    assert r.stderr.strip() == "movielens_trace: line 2: expected 'user item rating timestamp', got '186\\tx\\t3\\t891717742'"
    assert "Traceback" not in r.stderr
