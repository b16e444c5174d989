"""_core.common_prefix_lengths against its numpy reference and a plain-Python one."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rmbench_fast.scoring.plan import common_prefix_lengths_np

_core = pytest.importorskip("rmbench_fast._core", reason="the C++ core is not built")


def naive_lcp(seqs: list[list[int]]) -> int:
    n = 0
    while all(len(s) > n for s in seqs) and len({s[n] for s in seqs}) == 1:
        n += 1
    return n


@st.composite
def groups(draw: st.DrawFn) -> tuple[list[list[int]], int]:
    """Groups of sequences that share a random stem (sometimes cut), tiny vocabulary."""
    group_size = draw(st.integers(1, 7))
    out = []
    for _ in range(draw(st.integers(0, 10))):
        stem = draw(st.lists(st.integers(0, 3), max_size=10))
        for _ in range(group_size):
            cut = draw(st.integers(0, len(stem)))
            out.append(stem[:cut] + draw(st.lists(st.integers(0, 3), max_size=4)))
    return out, group_size


def to_flat(seqs: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
    np.cumsum([len(s) for s in seqs], out=offsets[1:])
    ids = np.array([t for s in seqs for t in s], dtype=np.int32)
    return ids, offsets


@settings(max_examples=200, deadline=None)
@given(groups())
def test_matches_references(case: tuple[list[list[int]], int]) -> None:
    seqs, g = case
    ids, offsets = to_flat(seqs)
    want = [naive_lcp(seqs[i : i + g]) for i in range(0, len(seqs), g)]
    got_np = common_prefix_lengths_np(ids, offsets, g)
    got_cpp = _core.common_prefix_lengths(ids, offsets, g)
    assert got_cpp.dtype == got_np.dtype == np.int32
    assert got_np.tolist() == want
    assert got_cpp.tolist() == want


def test_known_values() -> None:
    seqs = [[1, 2, 3], [1, 2, 4], [1, 2], [5], [5], [], [7, 7], [7, 7], [7, 7]]
    ids, offsets = to_flat(seqs)
    assert _core.common_prefix_lengths(ids, offsets, 3).tolist() == [2, 0, 2]
    assert common_prefix_lengths_np(ids, offsets, 3).tolist() == [2, 0, 2]
    assert _core.common_prefix_lengths(ids, offsets, 1).tolist() == [3, 3, 2, 1, 1, 0, 2, 2, 2]


@pytest.mark.parametrize("impl", ["cpp", "numpy"])
@pytest.mark.parametrize(
    ("ids", "offsets", "group_size", "message"),
    [
        ([1, 2, 3], [0, 1, 3], 0, "group_size must be >= 1"),
        ([1, 2, 3], [0, 1, 2, 3], 2, "n_groups \\* group_size \\+ 1"),
        ([1, 2, 3], [1, 2, 3], 1, "offsets"),
        ([1, 2, 3], [0, 2, 1], 1, "offsets"),
        ([1, 2, 3], [0, 1, 2], 1, "offsets"),
        ([1, 2, 3], [0, 1, 4], 1, "offsets"),
    ],
)
def test_bad_input(ids: list[int], offsets: list[int], group_size: int, message: str, impl: str) -> None:
    f = _core.common_prefix_lengths if impl == "cpp" else common_prefix_lengths_np
    with pytest.raises(ValueError, match=message):
        f(np.array(ids, dtype=np.int32), np.array(offsets, dtype=np.int64), group_size)
