"""Shared pieces of the benchmark scripts: timing, the machine line, the JSON figures line."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable


def best_of(fn: Callable[[], object], repeats: int) -> float:
    """Shortest wall-clock time (s) of ``repeats`` calls of ``fn``."""
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def host_reference_ms() -> float:
    """The host's speed now: median of 7 rounds of NumPy sorts of the same 2^20 doubles, one per core at once (ms).

    A shared host's speed drifts by tens of per cent within an hour, and a
    neighbour on the other core slows the parallel figures; two runs whose
    references differ by as much are not comparable figure by figure.
    """
    import statistics
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    x = np.random.default_rng(0).random(1 << 20)
    cores = os.cpu_count() or 1
    times = []
    with ThreadPoolExecutor(cores) as pool:  # NumPy's sort releases the GIL
        for _ in range(7):
            t = time.perf_counter()
            list(pool.map(lambda _: np.sort(x, kind="quicksort"), range(cores)))
            times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def machine() -> dict[str, object]:
    """The machine, Python, whether OPENBLAS_CORETYPE (older, slower BLAS kernels) is set, and the host's speed at the start."""
    coretype = os.environ.get("OPENBLAS_CORETYPE")
    print(f"OPENBLAS_CORETYPE is {'set to ' + coretype if coretype else 'not set'}", flush=True)
    return {
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}",
        "openblas_coretype": coretype or "unset",
        "host_ref_ms_start": host_reference_ms(),
    }


def print_figures(figures: dict[str, object]) -> None:
    """The last line of every benchmark: its figures as one JSON object (4 significant digits).

    Adds ``host_ref_ms_end`` (:func:`host_reference_ms` now) when the figures
    hold the start's reference.
    """
    if "host_ref_ms_start" in figures:
        figures = {**figures, "host_ref_ms_end": host_reference_ms()}
    print(json.dumps({k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in figures.items()}))
