"""Readers and writers: volumes, tables, JSON model files.

Every writer here is atomic: it writes to a temporary name in the target's
folder and renames it into place, so an interrupted run never leaves a
half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import StereograinError

__all__ = ["atomic_path", "write_json", "read_json", "write_table", "read_table"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    On an exception the temporary file is removed and ``path`` is untouched.
    The parent folder is created if missing.
    """
    path = Path(path)
    if path.is_dir():
        raise StereograinError(f"output {path} is a folder; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise StereograinError(f"cannot create folder {path.parent}: a file of that name is in the way") from None
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, allow_nan=False) + "\n", encoding="utf-8")


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """Read JSON; a missing or corrupt file raises a one-line :class:`StereograinError`."""
    path = Path(path)
    if not path.is_file():
        raise StereograinError(f"{what} {path} does not exist; check the path")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StereograinError(f"{what} {path} is not valid JSON ({exc}); was it written by stereograin?") from None


def write_table(path: str | os.PathLike, columns: Sequence[str], data: np.ndarray, fmt: str = "%.10g") -> None:
    """Write a numeric table as CSV with a header row, atomically.

    Parameters
    ----------
    columns : sequence of str
        Column names, one per column of ``data``.
    data : (n_rows, n_columns) array
    fmt : str
        printf-style format of every value.
    """
    data = np.asarray(data)
    if data.ndim != 2 or data.shape[1] != len(columns):
        raise StereograinError(f"table has shape {data.shape} but {len(columns)} column names")
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            fh.write(",".join(columns) + "\n")
            np.savetxt(fh, data, fmt=fmt, delimiter=",")


def read_table(path: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """Read a numeric CSV with a header row: ``(columns, (n_rows, n_columns) float64)``."""
    path = Path(path)
    if not path.is_file():
        raise StereograinError(f"table {path} does not exist; check the path")
    with open(path, newline="", encoding="utf-8") as fh:
        header = next(csv.reader(fh), None)
        if not header:
            raise StereograinError(f"table {path} is empty; expected a CSV with a header row")
        try:
            data = np.loadtxt(fh, delimiter=",", ndmin=2)
        except ValueError as exc:
            raise StereograinError(f"table {path} holds non-numeric values ({exc})") from None
    if data.size and data.shape[1] != len(header):
        raise StereograinError(f"table {path} has {len(header)} column names but {data.shape[1]} values per row")
    return [h.strip() for h in header], data.reshape(-1, len(header))
