"""The process-wide thread pools of the compiled kernels (stereograin._threads)."""

from __future__ import annotations

import multiprocessing
import threading

import pytest

from stereograin._threads import in_pool_thread, run_all, run_workers


def test_run_all_does_every_item_once_on_pool_threads() -> None:
    seen: list[tuple[int, bool]] = []
    lock = threading.Lock()

    def job(i: int) -> None:
        with lock:
            seen.append((i, in_pool_thread()))

    run_all(job, range(50), 2)
    assert sorted(i for i, _ in seen) == list(range(50))
    assert all(on_pool for _, on_pool in seen)
    seen.clear()
    run_all(job, range(5), 1)  # one worker: the calling thread, in order
    assert seen == [(i, False) for i in range(5)]


def test_run_workers_splits_by_worker_and_raises_the_jobs_error() -> None:
    got: dict[int, int] = {}
    run_workers(lambda w, k: got.__setitem__(w, k), 3)
    assert got == {0: 3, 1: 3, 2: 3}

    def bad(w: int, k: int) -> None:
        if w == 1:
            raise ValueError("worker 1 failed")

    with pytest.raises(ValueError, match="worker 1 failed"):
        run_workers(bad, 2)


def test_nested_calls_run_inline_instead_of_waiting_on_the_busy_pool() -> None:
    inner: list[int] = []

    def outer(w: int, k: int) -> None:
        run_workers(lambda v, m: inner.append(v), 2)  # would deadlock if it waited on the pool

    t = threading.Thread(target=run_workers, args=(outer, 2), daemon=True)
    t.start()
    t.join(timeout=30)
    assert not t.is_alive(), "nested run_workers deadlocked"
    assert sorted(inner) == [0, 0, 1, 1]


def _child(q) -> None:
    out: list[int] = []
    lock = threading.Lock()

    def job(i: int) -> None:
        with lock:
            out.append(i)

    run_all(job, range(10), 2)
    q.put(sorted(out))


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="no fork on this platform")
def test_a_forked_child_gets_its_own_pools() -> None:
    run_all(lambda i: None, range(4), 2)  # the parent's pool exists before the fork
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(q,))
    p.start()
    p.join(timeout=60)
    assert p.exitcode == 0
    assert q.get(timeout=5) == list(range(10))
