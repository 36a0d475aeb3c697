"""Process-wide thread pools for the compiled kernels (they release the GIL).

Thread pools rather than ``numba.prange``: OpenMP workers spin for a while
after each parallel region, and the kernels alternate with torch's own OpenMP
pool; two spinning pools on 2 cores made the generator several times slower.
A pool per thread count is made once and kept (idle threads cost nothing;
starting two threads for every call cost about 0.15 ms, several times per
particle). A call from one of these threads runs its work in that thread, so
nested calls never wait on a pool that is busy with their caller. After a
``fork`` the child starts with no pools (the parent's threads do not exist
there).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numba

__all__ = ["default_workers", "in_pool_thread", "run_all", "run_workers"]

T = TypeVar("T")

_PREFIX = "stereograin-pool"
_POOLS: dict[int, ThreadPoolExecutor] = {}
_LOCK = threading.Lock()


def _forget_pools() -> None:
    global _LOCK
    _POOLS.clear()
    _LOCK = threading.Lock()  # it may have been held by a thread that does not exist in the child


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pools)


def default_workers() -> int:
    """Threads the compiled kernels use by default: numba's thread count (``NUMBA_NUM_THREADS``)."""
    try:
        return max(1, numba.get_num_threads())
    except Exception:  # pragma: no cover - numba without a threading layer
        return os.cpu_count() or 1


def _pool(workers: int) -> ThreadPoolExecutor:
    with _LOCK:
        pool = _POOLS.get(workers)
        if pool is None:
            pool = _POOLS[workers] = ThreadPoolExecutor(workers, thread_name_prefix=_PREFIX)
        return pool


def in_pool_thread() -> bool:
    """Whether the calling thread is one of these pools' threads."""
    return threading.current_thread().name.startswith(_PREFIX)


def run_all(job: Callable[[T], None], items: Iterable[T], workers: int) -> None:
    """``job(item)`` for every item on ``workers`` threads, handed out as threads free up.

    One worker, or a call from a pool thread: in the calling thread, in order.
    Exceptions of a job are raised here.
    """
    items = list(items)
    nw = max(1, min(int(workers), len(items)))
    if nw == 1 or in_pool_thread():
        for it in items:
            job(it)
        return
    list(_pool(nw).map(job, items))


def run_workers(job: Callable[[int, int], None], workers: int) -> None:
    """``job(w, workers)`` for ``w < workers``, each on its own thread (static split of the work by ``w``)."""
    nw = max(1, int(workers))
    if nw == 1:
        job(0, 1)
        return
    if in_pool_thread():  # nested: the same split, one worker after the other
        for w in range(nw):
            job(w, nw)
        return
    list(_pool(nw).map(lambda w: job(w, nw), range(nw)))
