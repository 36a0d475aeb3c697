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


def machine() -> dict[str, object]:
    """The machine, Python, and whether OPENBLAS_CORETYPE (older, slower BLAS kernels) is set."""
    coretype = os.environ.get("OPENBLAS_CORETYPE")
    print(f"OPENBLAS_CORETYPE is {'set to ' + coretype if coretype else 'not set'}", flush=True)
    return {
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}",
        "openblas_coretype": coretype or "unset",
    }


def print_figures(figures: dict[str, object]) -> None:
    """The last line of every benchmark: its figures as one JSON object (4 significant digits)."""
    print(json.dumps({k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in figures.items()}))
