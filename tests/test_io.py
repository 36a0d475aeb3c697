"""Tests for the volume readers and the label writer in stereograin.io."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import one_line_error as _one_line_error
import tifffile
import zarr

from stereograin import io
from stereograin.io import read_volume, write_labels


@pytest.fixture
def labels() -> np.ndarray:
    rng = np.random.default_rng(0)
    out = rng.integers(0, 50, size=(6, 17, 23)).astype(np.uint32)
    out[0, 0, 0] = 2**32 - 1  # the full uint32 range survives
    return out


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("name", ["l.tif", "l.TIFF", "l.npy", "l.h5", "l.hdf5", "l.zarr"])
def test_write_read_round_trip(tmp_path: Path, labels: np.ndarray, name: str) -> None:
    path = tmp_path / "sub" / name  # the parent folder is created
    write_labels(path, labels)
    back = read_volume(path)
    assert back.dtype == np.uint32 and back.shape == labels.shape
    np.testing.assert_array_equal(back, labels)
    assert sorted(p.name for p in path.parent.iterdir()) == [name]  # no temporary left


def test_round_trip_with_dataset_names(tmp_path: Path, labels: np.ndarray) -> None:
    write_labels(tmp_path / "l.h5", labels)
    write_labels(tmp_path / "l.zarr", labels)
    np.testing.assert_array_equal(read_volume(tmp_path / "l.h5", dataset="labels"), labels)
    np.testing.assert_array_equal(read_volume(tmp_path / "l.h5", dataset="/labels"), labels)
    np.testing.assert_array_equal(read_volume(tmp_path / "l.zarr", dataset="labels"), labels)


def test_write_accepts_other_integer_types(tmp_path: Path) -> None:
    small = np.arange(24, dtype=np.int64).reshape(2, 3, 4)
    write_labels(tmp_path / "s.tif", small)
    back = read_volume(tmp_path / "s.tif")
    assert back.dtype == np.uint32
    np.testing.assert_array_equal(back, small)


def test_single_slice_and_rgb_like_shapes_survive_tiff(tmp_path: Path) -> None:
    for shape in [(1, 5, 7), (4, 6, 3)]:  # a last axis of 3 must not turn into RGB
        lab = np.arange(np.prod(shape), dtype=np.uint32).reshape(shape)
        write_labels(tmp_path / "x.tif", lab)
        np.testing.assert_array_equal(read_volume(tmp_path / "x.tif"), lab)


def test_overwrite_replaces_existing(tmp_path: Path, labels: np.ndarray) -> None:
    for name in ["o.tif", "o.zarr"]:
        write_labels(tmp_path / name, np.zeros((2, 2, 2), np.uint8))
        write_labels(tmp_path / name, labels)
        np.testing.assert_array_equal(read_volume(tmp_path / name), labels)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.tif", "o.zarr"]


def test_read_grey_multipage_tiff(tmp_path: Path) -> None:
    grey = np.random.default_rng(1).random((5, 8, 9)).astype(np.float32)
    tifffile.imwrite(tmp_path / "g.tif", grey)
    np.testing.assert_array_equal(read_volume(tmp_path / "g.tif"), grey)


def test_read_folder_of_slices_in_natural_order(tmp_path: Path) -> None:
    stack = np.arange(12)[:, None, None] * np.ones((1, 6, 5), np.uint16)
    for k in range(12):  # slice_2 must come before slice_10
        tifffile.imwrite(tmp_path / f"slice_{k}.tif", stack[k])
    (tmp_path / "notes.txt").write_text("not a slice")
    np.testing.assert_array_equal(read_volume(tmp_path), stack)


def test_read_zarr_plain_array_and_nested_group(tmp_path: Path) -> None:
    data = np.arange(60, dtype=np.int16).reshape(3, 4, 5)
    arr = zarr.open_array(str(tmp_path / "a.zarr"), mode="w", shape=data.shape, dtype=data.dtype)
    arr[:] = data
    np.testing.assert_array_equal(read_volume(tmp_path / "a.zarr"), data)
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_group("scan").create_array("raw", data=data)
    group.create_array("mask", data=data > 10)
    np.testing.assert_array_equal(read_volume(tmp_path / "g.zarr", dataset="scan/raw"), data)


def test_read_h5_single_dataset_and_nested(tmp_path: Path) -> None:
    data = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    with h5py.File(tmp_path / "one.h5", "w") as fh:
        fh.create_dataset("deep/volume", data=data)
    np.testing.assert_array_equal(read_volume(tmp_path / "one.h5"), data)
    np.testing.assert_array_equal(read_volume(tmp_path / "one.h5", dataset="deep/volume"), data)


def test_read_npy(tmp_path: Path) -> None:
    data = np.arange(60, dtype=np.uint8).reshape(3, 4, 5)
    np.save(tmp_path / "v.npy", data)
    np.testing.assert_array_equal(read_volume(tmp_path / "v.npy"), data)


# --------------------------------------------------------------------------- bad input to read_volume


def test_missing_and_unknown(tmp_path: Path) -> None:
    assert "does not exist" in _one_line_error(read_volume, tmp_path / "nope.tif")
    (tmp_path / "v.raw").write_bytes(b"\0" * 10)
    msg = _one_line_error(read_volume, tmp_path / "v.raw")
    assert "unknown suffix" in msg and ".tif" in msg


def test_corrupt_files(tmp_path: Path) -> None:
    (tmp_path / "bad.tif").write_bytes(np.random.default_rng(0).bytes(2000))
    assert "valid" in _one_line_error(read_volume, tmp_path / "bad.tif")
    (tmp_path / "empty.tif").write_bytes(b"")
    assert "cannot read TIFF" in _one_line_error(read_volume, tmp_path / "empty.tif")
    stack = np.random.default_rng(1).integers(0, 255, (10, 64, 64), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "full.tif", stack, compression="zlib")
    data = (tmp_path / "full.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[: len(data) // 2])  # later pages lost
    assert "truncated" in _one_line_error(read_volume, tmp_path / "cut.tif")
    folder = tmp_path / "slices"
    folder.mkdir()
    tifffile.imwrite(folder / "s0.tif", stack[0])
    (folder / "s1.tif").write_bytes(b"II*\0garbage")
    assert "s1.tif" in _one_line_error(read_volume, folder)
    (tmp_path / "bad.h5").write_bytes(b"garbage")
    assert "HDF5" in _one_line_error(read_volume, tmp_path / "bad.h5")
    (tmp_path / "bad.npy").write_bytes(b"garbage")
    assert "NumPy" in _one_line_error(read_volume, tmp_path / "bad.npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert "cannot read" in _one_line_error(read_volume, tmp_path / "obj.npy")
    (tmp_path / "bad.zarr").mkdir()
    assert "Zarr" in _one_line_error(read_volume, tmp_path / "bad.zarr")


def test_wrong_dimensions_and_values(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "flat.tif", np.zeros((8, 9), np.uint8))
    msg = _one_line_error(read_volume, tmp_path / "flat.tif")
    assert "got a 2D image of shape (8, 9)" in msg and "multi-page TIFF or a folder of slices" in msg
    np.save(tmp_path / "4d.npy", np.zeros((2, 3, 4, 5)))
    assert "4D" in _one_line_error(read_volume, tmp_path / "4d.npy")
    np.save(tmp_path / "empty.npy", np.zeros((0, 4, 5)))
    assert "empty" in _one_line_error(read_volume, tmp_path / "empty.npy")
    nan = np.ones((3, 4, 5), np.float32)
    nan[1, 2, 3] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    assert "NaN/inf" in _one_line_error(read_volume, tmp_path / "nan.npy")
    np.save(tmp_path / "inf.npy", np.full((3, 4, 5), np.inf))
    assert "NaN/inf" in _one_line_error(read_volume, tmp_path / "inf.npy")
    np.save(tmp_path / "cplx.npy", np.zeros((3, 4, 5), complex))
    assert "dtype" in _one_line_error(read_volume, tmp_path / "cplx.npy")
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((8, 9, 3), np.uint8), photometric="rgb")
    assert "RGB" in _one_line_error(read_volume, tmp_path / "rgb.tif")


def test_bad_slice_folders(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no .tif/.tiff slices" in _one_line_error(read_volume, empty)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    tifffile.imwrite(mixed / "s1.tif", np.zeros((6, 5), np.uint8))
    tifffile.imwrite(mixed / "s2.tif", np.zeros((6, 4), np.uint8))
    assert "same shape" in _one_line_error(read_volume, mixed)


def test_dataset_choice_errors_list_what_exists(tmp_path: Path) -> None:
    data = np.zeros((2, 3, 4), np.uint8)
    with h5py.File(tmp_path / "two.h5", "w") as fh:
        fh.create_dataset("a", data=data)
        fh.create_dataset("grp/b", data=data)
    msg = _one_line_error(read_volume, tmp_path / "two.h5")
    assert "a, grp/b" in msg and "dataset=" in msg
    msg = _one_line_error(read_volume, tmp_path / "two.h5", dataset="c")
    assert "no dataset 'c'" in msg and "a, grp/b" in msg
    assert "grp/b" in _one_line_error(read_volume, tmp_path / "two.h5", dataset="grp")  # a group
    group = zarr.open_group(str(tmp_path / "two.zarr"), mode="w")
    group.create_array("x", data=data)
    group.create_array("y", data=data)
    assert "x, y" in _one_line_error(read_volume, tmp_path / "two.zarr")
    assert "no array 'z'" in _one_line_error(read_volume, tmp_path / "two.zarr", dataset="z")
    np.save(tmp_path / "v.npy", data)
    assert "single array" in _one_line_error(read_volume, tmp_path / "v.npy", dataset="x")


# --------------------------------------------------------------------------- bad input to write_labels


@pytest.mark.parametrize(
    "bad, word",
    [
        (np.zeros((4, 5), np.uint8), "3D"),
        (np.zeros((2, 4, 5, 1), np.uint8), "3D"),
        (np.zeros((0, 4, 5), np.uint8), "empty"),
        (np.zeros((2, 4, 5), np.float32), "integers"),
        (np.zeros((2, 4, 5), bool), "integers"),
        (-np.ones((2, 4, 5), np.int16), "negative"),
        (np.full((2, 4, 5), 2**32, np.int64), "uint32"),
    ],
)
def test_write_refuses_bad_labels(tmp_path: Path, bad: np.ndarray, word: str) -> None:
    assert word in _one_line_error(write_labels, tmp_path / "l.tif", bad)
    assert list(tmp_path.iterdir()) == []


def test_write_refuses_unknown_suffix(tmp_path: Path, labels: np.ndarray) -> None:
    assert "unknown suffix" in _one_line_error(write_labels, tmp_path / "l.png", labels)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["l.tif", "l.npy", "l.h5", "l.zarr"])
def test_failed_write_leaves_nothing(
    tmp_path: Path, labels: np.ndarray, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(tifffile, "imwrite", boom)
    monkeypatch.setattr(np, "save", boom)
    monkeypatch.setattr(h5py.File, "create_dataset", boom)
    monkeypatch.setattr(zarr.Group, "create_array", boom)
    msg = _one_line_error(write_labels, tmp_path / name, labels)
    assert "disk full" in msg and "cannot write" in msg
    assert list(tmp_path.iterdir()) == []


def test_failed_overwrite_keeps_old_file(tmp_path: Path, labels: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    old = np.ones((2, 2, 2), np.uint32)
    write_labels(tmp_path / "l.zarr", old)
    write_labels(tmp_path / "l.tif", old)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(tifffile, "imwrite", boom)
    monkeypatch.setattr(zarr.Group, "create_array", boom)
    for name in ["l.zarr", "l.tif"]:
        _one_line_error(write_labels, tmp_path / name, labels)
        np.testing.assert_array_equal(read_volume(tmp_path / name), old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l.tif", "l.zarr"]


def test_existing_io_helpers_untouched(tmp_path: Path) -> None:
    io.write_table(tmp_path / "t.csv", ["a", "b"], np.array([[1.0, 2.0]]))
    cols, data = io.read_table(tmp_path / "t.csv")
    assert cols == ["a", "b"] and data.tolist() == [[1.0, 2.0]]


def test_json_ready_writes_undefined_statistics_as_null(tmp_path):
    import json

    from stereograin.io import json_ready, write_json

    report = {"ks": np.float64(np.nan), "n": np.int64(3), "w": [1.5, np.inf], "ok": np.bool_(True), "a": np.arange(2.0)}
    write_json(tmp_path / "r.json", json_ready(report))
    assert json.loads((tmp_path / "r.json").read_text()) == {"ks": None, "n": 3, "w": [1.5, None], "ok": True, "a": [0.0, 1.0]}


def test_table_has_ten_significant_digits_non_finite_values_and_no_rows(tmp_path):
    from stereograin.errors import StereograinError
    from stereograin.io import read_table, write_table

    x = np.random.default_rng(0).normal(size=(50, 4)) * 10.0 ** np.arange(-3, 5, 2)
    x[3, 2], x[5, 1], x[5, 3] = np.nan, np.inf, -np.inf
    x[7] = [1, 2, 3, 1e-300]
    x[8] = [0.17700000000000005, 4500.0, -0.0, 1.0000000001]
    write_table(tmp_path / "t.csv", ["a", "b", "c", "d"], x)
    cols, y = read_table(tmp_path / "t.csv")
    assert cols == ["a", "b", "c", "d"]
    ten = np.vectorize(lambda v: float("%.10g" % v))(x)  # what printf's %.10g keeps
    np.testing.assert_array_equal(y, ten)  # NaN in place
    lines = (tmp_path / "t.csv").read_text().splitlines()
    assert lines[0] == "a,b,c,d" and lines[6].split(",")[1] == "inf" and lines[6].split(",")[3] == "-inf"
    assert lines[4].split(",")[2] == "nan" and lines[6].split(",")[2] != "nan"
    write_table(tmp_path / "n.csv", ["a", "b"], np.array([[1.5, np.nan], [np.nan, -np.inf]]))  # NaN columns: analytic grain tables
    assert (tmp_path / "n.csv").read_text() == "a,b\n1.5,nan\nnan,-inf\n"
    assert lines[9] == "0.177,4500,-0,1" and lines[8].startswith("1,2,3,")  # short, whole numbers bare
    write_table(tmp_path / "e.csv", ["a", "b"], np.zeros((0, 2)))
    assert (tmp_path / "e.csv").read_text() == "a,b\n" and read_table(tmp_path / "e.csv")[1].shape == (0, 2)
    with pytest.raises(StereograinError, match="column names"):
        write_table(tmp_path / "x.csv", ["a"], x)
