"""Readers and writers: volumes, tables, JSON model files.

Every writer here is atomic: it writes to a temporary name in the target's
folder and renames it into place, so an interrupted run never leaves a
half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import StereograinError

__all__ = [
    "atomic_path",
    "write_json",
    "json_ready",
    "read_json",
    "write_table",
    "read_table",
    "VOLUME_SUFFIXES",
    "check_volume",
    "LABEL_SUFFIXES",
    "read_volume",
    "write_labels",
]


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
    # mkstemp makes the file private (0600); give it the mode a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def write_json(path: str | os.PathLike, obj: Any, compact: bool = False) -> None:
    """Write ``obj`` as JSON, atomically: indented, or ``compact`` for large arrays.

    Compact files are written by orjson, which also takes NumPy arrays (C-contiguous)
    and is about 10x faster than the standard library on large number arrays; both
    write the shortest decimal that reads back to the same float64. NaN is refused.
    """
    if compact:
        import orjson

        if _has_nan(obj):  # orjson would write null
            raise StereograinError(f"cannot write {path}: it holds NaN or infinite values")
        try:
            data = orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE)
        except orjson.JSONEncodeError as exc:
            raise StereograinError(f"cannot write {path} as JSON ({exc})") from None
    else:
        data = (json.dumps(obj, indent=2, allow_nan=False) + "\n").encode("utf-8")
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def json_ready(x: Any) -> Any:
    """``x`` with NumPy scalars made plain and every non-finite float made ``None``, recursively.

    JSON has no NaN; a report's undefined statistic (say a KS test on an empty
    sample) is written as ``null`` instead of failing the whole report.
    """
    if isinstance(x, Mapping):
        return {str(k): json_ready(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_ready(v) for v in x]
    if isinstance(x, np.ndarray):
        return json_ready(x.tolist())
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def _has_nan(obj: Any) -> bool:
    """Whether a nest of dicts, lists and arrays holds a NaN or an infinity."""
    if isinstance(obj, dict):
        return any(_has_nan(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return any(_has_nan(v) for v in obj)
    if isinstance(obj, np.ndarray):
        return obj.dtype.kind == "f" and not bool(np.isfinite(obj).all())
    return isinstance(obj, float) and not math.isfinite(obj)


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """Read JSON; a missing or corrupt file raises a one-line :class:`StereograinError`."""
    path = Path(path)
    if not path.is_file():
        raise StereograinError(f"{what} {path} does not exist; check the path")
    import orjson

    data = path.read_bytes()
    try:
        return orjson.loads(data)  # fast on large number arrays (particle.json)
    except orjson.JSONDecodeError:
        pass
    try:
        # the standard library also reads NaN / Infinity, which other tools write
        # and the callers' checks then name precisely
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StereograinError(f"{what} {path} is not valid JSON ({exc}); was it written by stereograin?") from None


def write_table(path: str | os.PathLike, columns: Sequence[str], data: np.ndarray) -> None:
    """Write a numeric table as CSV with a header row, atomically.

    Every value is written with 10 significant digits, as ``%.10g`` would
    (``nan`` for NaN, ``inf`` / ``-inf``; whole numbers without ``.0``), but
    formatted by orjson in one C call: ``np.savetxt`` formats value by value
    in Python, about 5 times slower (100 ms for a particle's grain table).

    Parameters
    ----------
    columns : sequence of str
        Column names, one per column of ``data``.
    data : (n_rows, n_columns) array
    """
    import orjson

    data = np.asarray(data)
    if data.ndim != 2 or data.shape[1] != len(columns):
        raise StereograinError(f"table has shape {data.shape} but {len(columns)} column names")
    body = b""
    if data.size:
        x = np.ascontiguousarray(data, dtype=np.float64)
        # orjson writes NaN and infinities as null (a token no number contains): nulls become
        # "nan" in one replace; only rows holding an infinity are rewritten one by one
        body = orjson.dumps(_ten_digits(x), option=orjson.OPT_SERIALIZE_NUMPY)
        body = _WHOLE.sub(b"", body[2:-2].replace(b"],[", b"\n")).replace(b"null", b"nan") + b"\n"
        inf = np.isinf(x)
        if inf.any():
            body = _put_back_infinities(body, x, inf)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write((",".join(columns) + "\n").encode("utf-8"))
            fh.write(body)


_WHOLE = re.compile(rb"\.0(?=,|$)", re.MULTILINE)  # "4500.0" -> "4500"


def _ten_digits(x: np.ndarray) -> np.ndarray:
    """``x`` rounded to 10 significant digits: the double nearest each ``%.10g`` decimal.

    ``round(x 10^k) / 10^k`` with an exact power of ten (``|k| <= 22``) is the
    correctly rounded quotient of two exact numbers, so its shortest repr is the
    10-digit decimal; values whose ``k`` is out of that range are kept as they are.
    """
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        k = 9 - np.floor(np.log10(np.abs(x)))
        k = np.where(np.isfinite(k), k, 0.0)
        ok = np.abs(k) <= 22
        p = 10.0 ** np.abs(np.where(ok, k, 0.0))
        up = np.round(x * p) / p  # k >= 0
        down = np.round(x / p) * p  # k < 0
        out = np.where(k >= 0, up, down)
    return np.where(ok & np.isfinite(out), out, x)


def _put_back_infinities(body: bytes, x: np.ndarray, inf: np.ndarray) -> bytes:
    """Rows of ``body`` that hold infinities of ``x``, rewritten with ``inf`` / ``-inf`` (written as ``nan``)."""
    lines = body.split(b"\n")
    for i in np.flatnonzero(inf.any(axis=1)):
        vals = lines[i].split(b",")
        for j in np.flatnonzero(inf[i]):
            vals[j] = b"inf" if x[i, j] > 0 else b"-inf"
        lines[i] = b",".join(vals)
    return b"\n".join(lines)


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
            with warnings.catch_warnings():  # a table with no rows is valid: no "input contained no data" warning
                warnings.simplefilter("ignore", UserWarning)
                data = np.loadtxt(fh, delimiter=",", ndmin=2)
        except ValueError as exc:
            raise StereograinError(f"table {path} holds non-numeric values ({exc})") from None
    if data.size and data.shape[1] != len(header):
        raise StereograinError(f"table {path} has {len(header)} column names but {data.shape[1]} values per row")
    return [h.strip() for h in header], data.reshape(-1, len(header))


# --------------------------------------------------------------------------- volumes

#: Suffixes :func:`read_volume` understands (a folder of 2D TIFF slices is read too).
VOLUME_SUFFIXES = (".tif", ".tiff", ".zarr", ".h5", ".hdf5", ".npy")
#: Suffixes :func:`write_labels` understands.
LABEL_SUFFIXES = (".tif", ".tiff", ".npy", ".zarr", ".h5", ".hdf5")

_TIFF_SUFFIXES = (".tif", ".tiff")
_H5_SUFFIXES = (".h5", ".hdf5")
_UINT32_MAX = np.iinfo(np.uint32).max


def _one_line(exc: BaseException) -> str:
    """The exception's message squeezed onto one line (library messages may span several)."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _natural_key(name: str) -> list[Any]:
    # "slice_2.tif" sorts before "slice_10.tif"
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def check_volume(volume: Any, source: str = "volume") -> np.ndarray:
    """Return ``volume`` as a 3D ``(Z, Y, X)`` real-valued array or raise a one-line error.

    Checks the number of axes (2D images and 4D stacks are refused), zero-size
    axes, the dtype (bool, integer or float) and, for floats, NaN / inf values.

    Parameters
    ----------
    volume : array_like, shape (Z, Y, X)
    source : str
        How the volume is named in error messages (e.g. the file it came from).
    """
    arr = np.asarray(volume)
    if arr.ndim == 2:
        raise StereograinError(
            f"{source}: got a 2D image of shape {arr.shape}; segmentation needs a 3D volume (Z, Y, X) "
            "— give a multi-page TIFF or a folder of slices"
        )
    if arr.ndim != 3:
        raise StereograinError(
            f"{source}: got a {arr.ndim}D array of shape {arr.shape}; a 3D volume (Z, Y, X) is needed "
            "— select one channel / time point first"
        )
    if arr.size == 0:
        raise StereograinError(f"{source} is empty (shape {arr.shape}); every axis needs at least one voxel")
    if arr.dtype.kind not in "buif":
        raise StereograinError(
            f"{source} has dtype {arr.dtype}; a grey-value volume of integers or floats is needed"
        )
    if arr.dtype.kind == "f":
        bad = arr.size - int(np.count_nonzero(np.isfinite(arr)))
        if bad:
            raise StereograinError(
                f"{source} holds {bad} NaN/inf value(s); replace them (e.g. with the background grey value) first"
            )
    return arr


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def _tifffile_warnings() -> Iterator[list[str]]:
    """Collect tifffile's logged warnings instead of printing them.

    tifffile reads a damaged file as far as it can and only logs what it
    skipped (e.g. pages past a truncation), so a cut-off stack would
    otherwise come back silently shorter.
    """
    logger = logging.getLogger("tifffile")
    handler = _Collect()
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


_TIFF_DAMAGE = ("invalid page offset", "failed to reshape", "truncat", "corrupt", "failed to read", "invalid tag")


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    try:
        with _tifffile_warnings() as warnings, tifffile.TiffFile(path) as tif:
            series = tif.series
            if not series:
                raise StereograinError(f"TIFF {path} holds no images; is it a valid TIFF?")
            if len(series) > 1:
                shapes = ", ".join(str(s.shape) for s in series[:4])
                raise StereograinError(
                    f"TIFF {path} holds {len(series)} image series of differing shape ({shapes}); "
                    "save the volume as one stack of equal-sized slices"
                )
            axes = series[0].axes
            if "S" in axes and series[0].shape[axes.index("S")] > 1:
                raise StereograinError(
                    f"TIFF {path} is an RGB/multi-sample image (axes {axes}, shape {series[0].shape}); "
                    "convert it to a grey-value stack"
                )
            arr = series[0].asarray()
            damage = [w for w in warnings if any(k in w.lower() for k in _TIFF_DAMAGE)]
            if damage:
                raise StereograinError(
                    f"TIFF {path} is damaged or truncated ({_one_line(Exception(damage[0]))}); "
                    "re-export or re-copy the file"
                )
    except StereograinError:
        raise
    except Exception as exc:  # tifffile raises many kinds on damaged files
        raise StereograinError(f"cannot read TIFF {path} ({_one_line(exc)}); is it a valid, complete TIFF?") from None
    if "S" in axes:  # a single sample axis of length 1
        arr = arr.squeeze(axis=axes.index("S"))
    return arr


def _read_tiff_folder(path: Path) -> np.ndarray:
    files = sorted(
        (p for p in path.iterdir() if p.is_file() and p.suffix.lower() in _TIFF_SUFFIXES and not p.name.startswith(".")),
        key=lambda p: _natural_key(p.name),
    )
    if not files:
        raise StereograinError(
            f"folder {path} holds no .tif/.tiff slices; give a folder of 2D TIFF slices, a multi-page TIFF, "
            f"or a file ending in {', '.join(VOLUME_SUFFIXES)}"
        )
    out: np.ndarray | None = None
    for k, f in enumerate(files):  # one iteration per slice file, not per voxel
        img = _read_tiff(f)
        img = np.squeeze(img) if img.ndim > 2 else img
        if img.ndim != 2:
            raise StereograinError(f"slice {f} has shape {img.shape}; every file in a slice folder must be a 2D image")
        if out is None:
            out = np.empty((len(files),) + img.shape, dtype=img.dtype)
        elif img.shape != out.shape[1:] or img.dtype != out.dtype:
            raise StereograinError(
                f"slices in {path} differ: {files[0].name} is {out.shape[1:]} {out.dtype} but {f.name} is "
                f"{img.shape} {img.dtype}; all slices must have the same shape and type"
            )
        out[k] = img
    assert out is not None
    return out


def _read_zarr(path: Path, dataset: str | None) -> np.ndarray:
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:
        raise StereograinError(f"cannot open Zarr store {path} ({_one_line(exc)}); is it a Zarr array or group?") from None
    if isinstance(node, zarr.Array):
        if dataset not in (None, "", "/"):
            raise StereograinError(f"Zarr store {path} is a single array, not a group; leave out dataset={dataset!r}")
        return np.asarray(node[...])
    arrays = sorted(name for name, member in node.members(max_depth=None) if isinstance(member, zarr.Array))
    if dataset is None:
        if len(arrays) != 1:
            listing = ", ".join(arrays[:20]) or "none"
            raise StereograinError(
                f"Zarr group {path} holds {len(arrays)} arrays ({listing}); choose one with dataset=..."
            )
        dataset = arrays[0]
    key = dataset.strip("/")
    if key not in arrays:
        listing = ", ".join(arrays[:20]) or "none"
        raise StereograinError(f"Zarr group {path} has no array {dataset!r}; available arrays: {listing}")
    return np.asarray(node[key][...])


def _read_h5(path: Path, dataset: str | None) -> np.ndarray:
    import h5py

    try:
        fh = h5py.File(path, "r")
    except Exception as exc:
        raise StereograinError(f"cannot open HDF5 file {path} ({_one_line(exc)}); is it a valid HDF5 file?") from None
    with fh:
        names: list[str] = []
        fh.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
        names.sort()
        listing = ", ".join(names[:20]) or "none"
        if dataset is None:
            if len(names) != 1:
                raise StereograinError(
                    f"HDF5 file {path} holds {len(names)} datasets ({listing}); choose one with dataset=..."
                )
            dataset = names[0]
        key = dataset.strip("/")
        if key not in names:
            raise StereograinError(f"HDF5 file {path} has no dataset {dataset!r}; available datasets: {listing}")
        try:
            return np.asarray(fh[key][()])
        except Exception as exc:
            raise StereograinError(f"cannot read dataset {key!r} of {path} ({_one_line(exc)})") from None


def _read_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except Exception as exc:
        raise StereograinError(f"cannot read NumPy file {path} ({_one_line(exc)}); is it a plain .npy array?") from None


def read_volume(path: str | os.PathLike, dataset: str | None = None) -> np.ndarray:
    """Read a 3D grey-value or label volume.

    Parameters
    ----------
    path : path-like
        One of: a multi-page TIFF (``.tif``/``.tiff``); a folder of 2D TIFF
        slices (sorted naturally by file name, so ``s2`` comes before ``s10``;
        all of the same shape); a Zarr store (``.zarr``, array or group); an
        HDF5 file (``.h5``/``.hdf5``); a NumPy ``.npy`` file (read without
        pickle).
    dataset : str, optional
        The array inside a Zarr group or HDF5 file, e.g. ``"labels"`` or
        ``"scan/volume"``. May be left out when the container holds exactly
        one array.

    Returns
    -------
    numpy.ndarray, shape (Z, Y, X)
        The volume in its stored dtype; the first axis is the slice index.

    Raises
    ------
    StereograinError
        With a one-line message for a missing path, an unknown suffix, an
        unreadable file, a dataset that does not exist (the message lists
        those that do), an array that is not 3D, an empty array, or NaN/inf
        values.
    """
    path = Path(path)
    if not path.exists():
        raise StereograinError(f"volume {path} does not exist; check the path")
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff", ".npy") and dataset is not None and not path.is_dir():
        raise StereograinError(f"{path} holds a single array; dataset={dataset!r} only applies to Zarr/HDF5")
    if suffix == ".zarr":
        arr = _read_zarr(path, dataset)
    elif path.is_dir():
        if dataset is not None:
            raise StereograinError(f"{path} is a folder of slices; dataset={dataset!r} only applies to Zarr/HDF5")
        arr = _read_tiff_folder(path)
    elif suffix in _TIFF_SUFFIXES:
        arr = _read_tiff(path)
    elif suffix in _H5_SUFFIXES:
        arr = _read_h5(path, dataset)
    elif suffix == ".npy":
        arr = _read_npy(path)
    else:
        raise StereograinError(
            f"volume {path} has unknown suffix {path.suffix!r}; use one of {', '.join(VOLUME_SUFFIXES)} "
            "or a folder of TIFF slices"
        )
    return check_volume(arr, f"volume {path}")


def _check_labels(labels: Any) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 3:
        raise StereograinError(f"labels must be a 3D (Z, Y, X) array, got shape {arr.shape}")
    if arr.size == 0:
        raise StereograinError(f"labels are empty (shape {arr.shape}); every axis needs at least one voxel")
    if arr.dtype.kind not in "ui":
        raise StereograinError(
            f"labels must be integers (0 = background, 1..n particles), got dtype {arr.dtype}; "
            "round or relabel them first"
        )
    if arr.dtype.kind == "i" and arr.min() < 0:
        raise StereograinError(f"labels hold negative values (min {arr.min()}); labels are 0 (background) or 1..n")
    if arr.dtype.itemsize > 4 and arr.max() > _UINT32_MAX:
        raise StereograinError(
            f"labels exceed the uint32 range (max {arr.max()}); relabel them consecutively "
            "(skimage.segmentation.relabel_sequential)"
        )
    return arr.astype(np.uint32, copy=False)


@contextlib.contextmanager
def _atomic_folder(path: Path) -> Iterator[Path]:
    """Like :func:`atomic_path` for outputs that are folders (Zarr stores)."""
    if path.exists() and not path.is_dir():
        raise StereograinError(f"output {path} exists and is a file; remove it or choose another name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise StereograinError(f"cannot create folder {path.parent}: a file of that name is in the way") from None
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private (0700); a store should not be
        yield tmp
        if path.exists():
            # a folder cannot be renamed onto a non-empty folder: move the old one aside first
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / "store")
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(old / "store", path)
                raise
            finally:
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_labels(path: str | os.PathLike, labels: np.ndarray) -> None:
    """Write a label volume as uint32, atomically.

    Parameters
    ----------
    path : path-like
        The output; its suffix picks the format: ``.tif``/``.tiff`` (multi-page,
        zlib-compressed, axes ZYX), ``.npy``, ``.zarr`` (a group with the array
        ``labels``), ``.h5``/``.hdf5`` (dataset ``labels``, gzip). An existing
        output is replaced only once the new one is complete.
    labels : array_like of int, shape (Z, Y, X)
        0 is background, particles are 1..n; values must fit in uint32.

    Raises
    ------
    StereograinError
        For labels that are not a non-empty 3D array of non-negative integers
        within the uint32 range, an unknown suffix, or a failed write (no file
        is left behind).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in LABEL_SUFFIXES:
        raise StereograinError(
            f"label output {path} has unknown suffix {path.suffix!r}; use one of {', '.join(LABEL_SUFFIXES)}"
        )
    arr = _check_labels(labels)
    try:
        if suffix == ".zarr":
            import zarr

            with _atomic_folder(path) as tmp:
                root = zarr.open_group(str(tmp), mode="w")
                chunks = tuple(min(s, 128) for s in arr.shape)
                root.create_array("labels", data=arr, chunks=chunks)
            return
        with atomic_path(path) as tmp:
            # Write through an open handle (tifffile / np.save) or an explicit path (h5py):
            # the format comes from the final suffix, never from the ".tmp" name.
            if suffix in _TIFF_SUFFIXES:
                import tifffile

                with open(tmp, "wb") as fh:
                    tifffile.imwrite(
                        fh,
                        arr,
                        compression="zlib",
                        photometric="minisblack",
                        metadata={"axes": "ZYX"},
                        bigtiff=arr.nbytes > 2**31,
                    )
            elif suffix == ".npy":
                with open(tmp, "wb") as fh:
                    np.save(fh, arr, allow_pickle=False)
            else:
                import h5py

                with h5py.File(tmp, "w") as fh:
                    fh.create_dataset("labels", data=arr, compression="gzip", chunks=True)
    except OSError as exc:
        raise StereograinError(f"cannot write {path} ({_one_line(exc)}); check the folder exists and is writable") from None
