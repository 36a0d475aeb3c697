"""Per-thread scratch buffers (stereograin._scratch)."""

from __future__ import annotations

import threading

import numpy as np

from stereograin._scratch import scratch


def test_scratch_reuses_and_grows_one_buffer_per_name() -> None:
    a = scratch("test.a", (4, 5))
    assert a.shape == (4, 5) and a.dtype == np.float64 and a.flags.c_contiguous
    a[:] = 3.0
    b = scratch("test.a", (2, 3))  # smaller: a view of the same memory
    assert np.shares_memory(a, b) and np.all(b == 3.0)
    c = scratch("test.a", (10, 10))  # larger: a new, larger buffer
    assert c.shape == (10, 10) and not np.shares_memory(a, c)
    assert np.shares_memory(scratch("test.a", (7,)), c)
    d = scratch("test.a", (3,), np.int32)  # another dtype: its own buffer
    assert d.dtype == np.int32 and not np.shares_memory(c, d)
    assert not np.shares_memory(scratch("test.b", (3,)), scratch("test.a", (3,)))


def test_scratch_keep_bytes_makes_large_arrays_fresh() -> None:
    small = scratch("test.k", (100,), np.int32, keep_bytes=1000)
    big = scratch("test.k", (1000,), np.int32, keep_bytes=1000)  # 4000 bytes: not kept
    assert not np.shares_memory(small, big)
    assert np.shares_memory(small, scratch("test.k", (50,), np.int32, keep_bytes=1000))


def test_scratch_buffers_are_per_thread() -> None:
    mine = scratch("test.t", (16,))
    theirs: list[np.ndarray] = []
    t = threading.Thread(target=lambda: theirs.append(scratch("test.t", (16,))))
    t.start()
    t.join()
    assert not np.shares_memory(mine, theirs[0])
