"""Scratch arrays kept between calls, one set per thread.

Freshly mapped memory is slow to write the first time (a page fault per
page, worse from several threads at once and in a virtual machine; huge pages
are zeroed on the fault): with the assembly's grid and the labelling's work
arrays new for every particle, a 10 um particle took 0.24 s of CPU time over
two threads, 0.20 s with them kept here. So each thread keeps its arrays by
name and hands out views of them, grown when a call needs more. The contents
are whatever the last user left.
"""

from __future__ import annotations

import math
import threading

import numpy as np

__all__ = ["scratch"]

_TLS = threading.local()


def scratch(name: str, shape: tuple[int, ...], dtype: type | np.dtype = np.float64, keep_bytes: int | None = None) -> np.ndarray:
    """A C-contiguous array of ``shape`` on this thread's buffer ``name`` (uninitialised).

    Parameters
    ----------
    name : str
        The buffer's name, unique to its user (e.g. ``"tessellation.slab"``);
        one view of it must not outlive the next call with the same name.
    shape : tuple of int
    dtype : NumPy dtype
    keep_bytes : int, optional
        Arrays larger than this are made fresh and not kept (bounds the memory
        a thread holds on to).
    """
    dt = np.dtype(dtype)
    size = math.prod(shape)
    if keep_bytes is not None and size * dt.itemsize > keep_bytes:
        return np.empty(shape, dt)
    cache = getattr(_TLS, "bufs", None)
    if cache is None:
        cache = _TLS.bufs = {}
    a = cache.get(name)
    if a is None or a.dtype != dt or a.size < size:
        a = cache[name] = np.empty(max(size, 1), dt)
    return a[:size].reshape(shape)
