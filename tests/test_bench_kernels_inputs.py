"""bench kernels' input construction (no GPU needed): bag lengths from --pooling and the packed
offsets every kernel of the benchmark reads."""

from __future__ import annotations

import numpy as np
import pytest

from dlrm_deploy.runtime.bench_kernels import bag_lengths, make_indices, packed_offsets, parse_dims


def test_fixed_pooling_gives_every_bag_that_length():
    assert bag_lengths("150", 7, seed=0).tolist() == [150] * 7
    assert bag_lengths(3, 2, seed=0).tolist() == [3, 3]


@pytest.mark.parametrize("seed", range(5))
def test_var_pooling_is_uniform_in_0_to_2L_and_depends_on_the_seed(seed):
    lengths = bag_lengths("var:20", 4000, seed=seed)
    assert lengths.dtype == np.int64 and lengths.shape == (4000,)
    assert lengths.min() == 0 and lengths.max() == 40  # both ends reached at this size
    assert abs(lengths.mean() - 20) < 1.0
    assert not np.array_equal(lengths, bag_lengths("var:20", 4000, seed=seed + 1))
    assert np.array_equal(lengths, bag_lengths("var:20", 4000, seed=seed))


@pytest.mark.parametrize("bad", ["0", "-3", "var:0", "var:x", "var:", "abc", "1.5"])
def test_bad_pooling_is_one_line_error(bad):
    with pytest.raises(SystemExit, match="--pooling"):
        bag_lengths(bad, 4, seed=0)


@pytest.mark.parametrize("seed", range(5))
def test_packed_offsets_match_per_table_bags(seed):
    """Table t's bag b covers ids [t*N + start_b, t*N + start_b + len_b) of the packed indices,
    the last offset is T*N (include_last_offset), for random lengths with empty bags."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 5, size=int(rng.integers(1, 30)))
    tables = int(rng.integers(1, 6))
    off = packed_offsets(lengths, tables)
    n = int(lengths.sum())
    assert off.shape == (tables * len(lengths) + 1,) and off[-1] == tables * n and off[0] == 0
    assert np.all(np.diff(off) >= 0)
    bags = np.diff(off).reshape(tables, len(lengths))
    assert np.array_equal(bags, np.tile(lengths, (tables, 1)))


def test_indices_have_the_requested_count_per_table():
    ids = make_indices("uniform", 3, 100, 17, seed=1)
    assert ids.shape == (3, 17) and ids.min() >= 0 and ids.max() < 100


def test_dims_one_or_a_list():
    assert parse_dims("128") == [128]
    assert parse_dims(64) == [64]
    assert parse_dims("16,32,64,128") == [16, 32, 64, 128]


@pytest.mark.parametrize("bad", ["", "0", "16,", "a", "16,-8", "1.5"])
def test_bad_dims_is_one_line_error(bad):
    with pytest.raises(SystemExit, match="--dim"):
        parse_dims(bad)
