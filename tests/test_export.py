"""Tests of stereograin.export: particle volume, mesh and table writers, read back by their own readers."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from stereograin.errors import StereograinError
from stereograin.export import (
    GRAIN_TABLE_COLUMNS,
    grain_surfaces,
    grain_table,
    hex_mesh,
    particle_summary,
    write_grain_table,
    write_hex_mesh,
    write_surface_mesh,
    write_volume,
)
from stereograin.io import read_table, read_volume
from conftest import ball

V = 0.25  # um per voxel
ORIGIN = (1.5, -2.0, 10.0)  # um, centre of voxel [0, 0, 0] as (x, y, z)


@pytest.fixture(scope="module")
def particle() -> np.ndarray:
    """A voxelised ball (R = 11, 26^3 voxels) cut into 4 grains by one axis-aligned and one oblique plane."""
    n = 26
    inside = ball(11.0, n)
    z, y, x = np.indices((n, n, n))
    c = (n - 1) / 2
    grains = 1 + (x > c + 2).astype(np.uint32) + 2 * (y + 0.5 * z > 1.5 * c).astype(np.uint32)
    return np.where(inside, grains, 0).astype(np.uint32)


def _voxel_faces(labels: np.ndarray) -> dict[tuple[int, int], int]:
    """Count voxel faces between each pair of different labels (sorted pair; 0 = outside, volume padded)."""
    p = np.pad(labels, 1)
    out: dict[tuple[int, int], int] = {}
    for axis in range(3):
        a = np.moveaxis(p, axis, 0)[:-1].ravel()
        b = np.moveaxis(p, axis, 0)[1:].ravel()
        d = a != b
        pairs = np.sort(np.stack([a[d], b[d]], axis=1), axis=1)
        keys, counts = np.unique(pairs, axis=0, return_counts=True)
        for (lo, hi), cnt in zip(keys.tolist(), counts.tolist()):
            out[(lo, hi)] = out.get((lo, hi), 0) + cnt
    return out


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --------------------------------------------------------------------------- volumes


def test_tiff_round_trip_with_voxel_size(tmp_path, particle):
    import tifffile

    out = tmp_path / "p.tif"
    write_volume(out, particle, V, ORIGIN)
    with tifffile.TiffFile(out) as tif:
        arr = tif.series[0].asarray()
        meta = tif.shaped_metadata[0]
        page = tif.pages[0]
        assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        assert page.resolutionunit == tifffile.RESUNIT.CENTIMETER
        xres, yres = page.resolution
    assert arr.dtype == np.uint32
    np.testing.assert_array_equal(arr, particle)
    assert meta["voxel_size_um"] == V and meta["spacing"] == V and meta["unit"] == "um"
    assert meta["origin_um"] == list(ORIGIN) and meta["axes"] == "ZYX"
    # pixels per centimetre -> um per pixel
    assert 1e4 / xres == pytest.approx(V) and 1e4 / yres == pytest.approx(V)
    np.testing.assert_array_equal(read_volume(out), particle)


def test_zarr_round_trip_with_attrs(tmp_path, particle):
    import zarr

    out = tmp_path / "p.zarr"
    write_volume(out, particle, V, ORIGIN)
    write_volume(out, particle, V, ORIGIN)  # replacing an existing store works
    root = zarr.open_group(str(out), mode="r")
    arr = root["labels"]
    np.testing.assert_array_equal(arr[...], particle)
    assert arr.dtype == np.uint32 and arr.chunks == particle.shape  # chunks are min(shape, 64)
    for attrs in (root.attrs, arr.attrs):
        assert attrs["voxel_size_um"] == V and list(attrs["origin_um"]) == list(ORIGIN) and attrs["axes"] == "ZYX"
    assert _leftovers(tmp_path) == ["p.zarr"]


def test_h5_round_trip_with_attrs(tmp_path, particle):
    import h5py

    out = tmp_path / "p.h5"
    write_volume(out, particle, V, ORIGIN)
    with h5py.File(out, "r") as fh:
        ds = fh["labels"]
        np.testing.assert_array_equal(ds[()], particle)
        assert ds.compression == "gzip" and ds.dtype == np.uint32
        assert ds.attrs["voxel_size_um"] == V and list(ds.attrs["origin_um"]) == list(ORIGIN)
        assert ds.attrs["axes"] == "ZYX"


def test_vti_round_trip_spacing_origin_labels(tmp_path, particle):
    import pyvista as pv

    out = tmp_path / "p.vti"
    write_volume(out, particle, V, ORIGIN)
    grid = pv.read(out)
    assert isinstance(grid, pv.ImageData)
    assert tuple(grid.dimensions) == particle.shape[::-1]
    np.testing.assert_allclose(grid.spacing, (V, V, V))
    np.testing.assert_allclose(grid.origin, ORIGIN)
    back = np.asarray(grid.point_data["grain"]).reshape(particle.shape)
    np.testing.assert_array_equal(back, particle)
    # a point's coordinates are its voxel centre
    k, j, i = 3, 5, 7
    np.testing.assert_allclose(grid.points[(k * particle.shape[1] + j) * particle.shape[2] + i],
                               np.array(ORIGIN) + V * np.array([i, j, k]))
    assert _leftovers(tmp_path) == ["p.vti"]


# --------------------------------------------------------------------------- surface meshes


def _edge_counts(faces: np.ndarray) -> np.ndarray:
    """How many faces use each distinct edge; faces (n, m) of point ids."""
    edges = np.stack([faces, np.roll(faces, -1, axis=1)], axis=2).reshape(-1, 2)
    _, counts = np.unique(np.sort(edges, axis=1), axis=0, return_counts=True)
    return counts


@pytest.mark.parametrize("smoothing", [False, True])
def test_surfaces_closed_per_grain_and_shared(particle, smoothing):
    mesh = grain_surfaces(particle, V, ORIGIN, smoothing=smoothing)
    faces = mesh.regular_faces  # all quads (staircase) or all triangles (smoothed)
    bl = np.asarray(mesh.cell_data["boundary_labels"])
    assert bl.shape == (mesh.n_cells, 2)
    # every face once: no two faces on the same points; points are not duplicated
    assert len(np.unique(np.sort(faces, axis=1), axis=0)) == mesh.n_cells
    assert len(np.unique(mesh.points, axis=0)) == mesh.n_points
    for g in range(1, 5):
        own = faces[(bl == g).any(axis=1)]
        assert len(own) > 0
        counts = _edge_counts(own)
        assert np.all(counts == 2), f"grain {g} surface has {np.sum(counts != 2)} open/non-manifold edges"
    if not smoothing:
        # staircase faces are exactly the voxel faces: one quad per voxel face, per pair of labels
        pairs = np.sort(bl, axis=1)
        keys, counts = np.unique(pairs, axis=0, return_counts=True)
        got = {tuple(k): c for k, c in zip(keys.tolist(), counts.tolist())}
        assert got == _voxel_faces(particle)
        lo = np.array(ORIGIN) - V / 2
        hi = np.array(ORIGIN) + V * (np.array(particle.shape[::-1]) - 0.5)
        nz = np.argwhere(particle)
        np.testing.assert_allclose(mesh.bounds[0::2], lo + V * nz.min(axis=0)[::-1])
        np.testing.assert_allclose(mesh.bounds[1::2], hi - V * (np.array(particle.shape) - 1 - nz.max(axis=0))[::-1])


def test_surfaces_close_grains_on_the_volume_edge():
    labels = np.ones((4, 5, 6), np.uint32)
    labels[:, :, 3:] = 2
    mesh = grain_surfaces(labels, 1.0)
    bl = np.asarray(mesh.cell_data["boundary_labels"])
    assert np.sum((bl == [1, 2]).all(axis=1)) == 4 * 5
    assert np.sum((bl == [1, 0]).all(axis=1)) == 2 * (4 * 5 + 4 * 3 + 5 * 3) - 4 * 5
    np.testing.assert_allclose(mesh.bounds, (-0.5, 5.5, -0.5, 4.5, -0.5, 3.5))


def test_surface_files_read_back(tmp_path, particle):
    import pyvista as pv

    mesh = grain_surfaces(particle, V, ORIGIN)
    write_surface_mesh(tmp_path / "g.vtp", particle, V, ORIGIN)
    vtp = pv.read(tmp_path / "g.vtp")
    assert vtp.n_cells == mesh.n_cells and vtp.n_points == mesh.n_points
    np.testing.assert_array_equal(vtp.cell_data["boundary_labels"], mesh.cell_data["boundary_labels"])
    np.testing.assert_allclose(vtp.points, mesh.points)
    for suffix in (".stl", ".ply"):
        write_surface_mesh(tmp_path / f"g{suffix}", particle, V, ORIGIN)
        back = pv.read(tmp_path / f"g{suffix}")
        assert back.is_all_triangles and back.n_cells == 2 * mesh.n_cells
        np.testing.assert_allclose(back.bounds, mesh.bounds, atol=1e-5)
        assert back.area == pytest.approx(mesh.area, rel=1e-5)
    assert _leftovers(tmp_path) == ["g.ply", "g.stl", "g.vtp"]


# --------------------------------------------------------------------------- hexahedral meshes


def _check_cells_on_voxels(points: np.ndarray, cells: np.ndarray, grain: np.ndarray, labels: np.ndarray) -> None:
    centres = points[cells].mean(axis=1)  # (n, 3) x, y, z in um
    ijk = np.rint((centres - np.array(ORIGIN)) / V).astype(int)
    np.testing.assert_allclose(centres, np.array(ORIGIN) + V * ijk, atol=1e-9)
    np.testing.assert_array_equal(labels[ijk[:, 2], ijk[:, 1], ijk[:, 0]], grain)
    assert len(np.unique(ijk, axis=0)) == np.count_nonzero(labels)
    # every hexahedron is a cube of edge V with positive orientation (VTK order)
    e1, e2, e3 = (points[cells[:, k]] - points[cells[:, 0]] for k in (1, 3, 4))
    np.testing.assert_allclose(np.einsum("ij,ij->i", np.cross(e1, e2), e3), V**3)


def test_hex_mesh_shares_nodes(particle):
    points, cells, grain = hex_mesh(particle, V, ORIGIN)
    assert cells.shape == (np.count_nonzero(particle), 8)
    _check_cells_on_voxels(points, cells, grain, particle)
    corners = np.zeros(np.array(particle.shape) + 1, bool)
    for dz in (0, 1):
        for dy in (0, 1):
            for dx in (0, 1):
                corners[dz : dz + particle.shape[0], dy : dy + particle.shape[1], dx : dx + particle.shape[2]] |= (
                    particle > 0
                )
    assert len(points) == corners.sum() == len(np.unique(cells))


@pytest.mark.parametrize("suffix", [".msh", ".inp", ".vtu"])
def test_hex_mesh_files_read_back(tmp_path, particle, suffix):
    import meshio

    out = tmp_path / f"m{suffix}"
    write_hex_mesh(out, particle, V, ORIGIN)
    m = meshio.read(out)
    assert len(m.cells) == 1 and m.cells[0].type == "hexahedron"
    cells = m.cells[0].data
    counts = np.bincount(particle.ravel())
    if suffix == ".msh":
        tag = m.cell_data["gmsh:physical"][0]
        assert {n: v[0] for n, v in m.field_data.items()} == {f"GRAIN_{g}": g for g in range(1, 5)}
    elif suffix == ".inp":
        assert sorted(m.cell_sets) == [f"GRAIN_{g}" for g in range(1, 5)]
        tag = np.zeros(len(cells), int)
        for g in range(1, 5):
            (ids,) = m.cell_sets[f"GRAIN_{g}"]
            assert len(ids) == counts[g]
            tag[ids] = g
        assert np.all(tag > 0)
    else:
        tag = m.cell_data["grain"][0]
    np.testing.assert_array_equal(np.bincount(tag, minlength=5), counts[:5] * [0, 1, 1, 1, 1])
    _check_cells_on_voxels(m.points, cells, tag, particle)
    assert _leftovers(tmp_path) == [out.name]


# --------------------------------------------------------------------------- tables


def test_grain_table_volumes_centroids_areas(tmp_path, particle):
    columns, data = grain_table(particle, V, ORIGIN)
    assert columns == list(GRAIN_TABLE_COLUMNS) and data.shape == (4, 8)
    counts = np.bincount(particle.ravel())[1:]
    np.testing.assert_array_equal(data[:, 0], [1, 2, 3, 4])
    np.testing.assert_allclose(data[:, 1], counts * V**3)
    for row, g in zip(data, range(1, 5)):
        zyx = np.argwhere(particle == g).mean(axis=0)
        np.testing.assert_allclose(row[2:5], np.array(ORIGIN) + V * zyx[::-1])
    np.testing.assert_allclose(data[:, 5], np.cbrt(6 * counts * V**3 / np.pi))
    faces = _voxel_faces(particle)
    for row, g in zip(data, range(1, 5)):
        shared = sum(c for (a, b), c in faces.items() if a != 0 and g in (a, b))
        np.testing.assert_allclose(row[6], 2 / 3 * shared * V**2)
        np.testing.assert_allclose(row[7], 2 / 3 * faces[(0, g)] * V**2)
    write_grain_table(tmp_path / "grains.csv", particle, V, ORIGIN)
    cols, back = read_table(tmp_path / "grains.csv")
    assert cols == list(GRAIN_TABLE_COLUMNS)
    np.testing.assert_allclose(back, data, rtol=1e-9)


def test_grain_table_ball_area_and_gaps():
    r = 15
    blob = ball(r, 2 * r + 3).astype(np.uint32) * 7  # one grain, label 7 (labels 1..6 absent)
    _, data = grain_table(blob, 1.0)
    assert data.shape == (1, 8) and data[0, 0] == 7
    assert data[0, 7] == pytest.approx(4 * np.pi * r**2, rel=0.05)
    assert data[0, 6] == 0
    assert grain_table(np.zeros((3, 3, 3), np.uint32), 1.0)[1].shape == (0, 8)


def test_particle_summary(particle):
    r = 15
    blob = ball(r, 2 * r + 3).astype(np.uint32)
    s = particle_summary(blob, 0.5)
    assert s["volume_um3"] == pytest.approx(blob.sum() * 0.125)
    assert s["surface_area_um2"] == pytest.approx(4 * np.pi * (0.5 * r) ** 2, rel=0.05)
    assert abs(s["sphericity"] - 1) < 0.05
    assert s["grain_count"] == 1 and s["grain_boundary_area_per_volume_um_inv"] == 0
    assert s["mean_grain_diameter_um"] == pytest.approx(2 * 0.5 * r, rel=0.02)
    # the fast face-count estimate: the grain table's outer area, within 5% of the ball's
    f = particle_summary(blob, 0.5, surface="faces")
    assert f["surface_area_um2"] == pytest.approx(grain_table(blob, 0.5)[1][0, 7])
    assert abs(f["sphericity"] - 1) < 0.06 and f["volume_um3"] == s["volume_um3"]
    with pytest.raises(StereograinError, match="'mesh' or 'faces'"):
        particle_summary(blob, 0.5, surface="marching")

    s = particle_summary(particle, V)
    _, table = grain_table(particle, V)
    assert s["grain_count"] == 4
    assert s["volume_um3"] == pytest.approx(table[:, 1].sum())
    # each shared face once = half the sum of the grains' boundary areas
    assert s["grain_boundary_area_per_volume_um_inv"] == pytest.approx(table[:, 6].sum() / 2 / s["volume_um3"])
    assert s["mean_grain_volume_um3"] == pytest.approx(table[:, 1].mean())
    assert s["mean_grain_diameter_um"] == pytest.approx(table[:, 5].mean())
    assert 0.8 < s["sphericity"] <= 1.05


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda p, lab: write_volume(p / "a.tif", lab, -0.05), r"voxel size must be positive, got -0\.05 um"),
        (lambda p, lab: write_volume(p / "a.tif", lab, float("nan")), "voxel size must be a finite"),
        (lambda p, lab: write_hex_mesh(p / "a.msh", lab, 0), "voxel size must be positive"),
        (lambda p, lab: write_volume(p / "a.tif", lab[0], 1.0), r"labels must be a 3D \(Z, Y, X\) array"),
        (lambda p, lab: grain_table(lab.astype(float), 1.0), "labels must be integers"),
        (lambda p, lab: write_volume(p / "a.nii", lab, 1.0), r"unknown suffix '\.nii'; use one of \.tif"),
        (lambda p, lab: write_surface_mesh(p / "a.obj", lab, 1.0), r"use one of \.vtp, \.stl, \.ply"),
        (lambda p, lab: write_hex_mesh(p / "a.vtk", lab, 1.0), r"use one of \.msh, \.inp, \.vtu"),
        (lambda p, lab: write_volume(p / "a.tif", lab, 1.0, origin_um=(0, 0)), "origin must be three numbers"),
        (lambda p, lab: particle_summary(np.zeros_like(lab), 1.0), "particle is empty"),
        (lambda p, lab: write_hex_mesh(p / "a.vtu", np.zeros_like(lab), 1.0), "labels hold no grains"),
    ],
)
def test_bad_input_one_line_errors(tmp_path, particle, call, match):
    with pytest.raises(StereograinError, match=match) as info:
        call(tmp_path, particle)
    assert "\n" not in str(info.value)
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "writer", [write_volume, write_surface_mesh, write_hex_mesh, write_grain_table], ids=lambda f: f.__name__
)
def test_output_that_is_a_folder_is_refused(tmp_path, particle, writer):
    name = {write_volume: "out.h5", write_surface_mesh: "out.vtp", write_hex_mesh: "out.vtu"}.get(writer, "out.csv")
    (tmp_path / name).mkdir()
    with pytest.raises(StereograinError, match="is a folder; give a file name"):
        writer(tmp_path / name, particle, V)


def test_zarr_refuses_to_replace_a_foreign_folder(tmp_path, particle):
    target = tmp_path / "data.zarr"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(StereograinError, match="not a Zarr store"):
        write_volume(target, particle, V)
    assert (target / "notes.txt").read_text() == "keep me"


# --------------------------------------------------------------------------- failed writes leave nothing


def _half_then_fail(real_path_arg: int = 0):
    def fail(*args, **kwargs):
        target = args[real_path_arg]
        if hasattr(target, "write"):
            target.write(b"partial")
        else:
            Path(target).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    return fail


@pytest.mark.parametrize(
    "suffix, target",
    [
        (".tif", "tifffile.imwrite"),
        (".vti", "pyvista.ImageData.save"),
        (".vtp", "pyvista.PolyData.save"),
        (".stl", "pyvista.PolyData.save"),
        (".msh", "meshio.write"),
        (".inp", "meshio.write"),
    ],
)
def test_failed_write_leaves_no_file(tmp_path, monkeypatch, particle, suffix, target):
    import importlib

    mod_name, _, attr = target.rpartition(".")
    try:
        owner = importlib.import_module(mod_name)
    except ModuleNotFoundError:  # a class attribute, e.g. pyvista.PolyData.save
        pkg, _, cls = mod_name.rpartition(".")
        owner = getattr(importlib.import_module(pkg), cls)
    arg = 1 if isinstance(owner, type) else 0  # methods get self first
    monkeypatch.setattr(owner, attr, _half_then_fail(arg))
    out = tmp_path / f"p{suffix}"
    writer = {".tif": write_volume, ".vti": write_volume, ".vtp": write_surface_mesh, ".stl": write_surface_mesh}
    with pytest.raises(StereograinError, match=r"cannot write .*No space left on device"):
        writer.get(suffix, write_hex_mesh)(out, particle, V, ORIGIN)
    assert _leftovers(tmp_path) == []


def test_failed_zarr_write_leaves_no_store(tmp_path, monkeypatch, particle):
    import zarr

    def fail(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(zarr.Group, "create_array", fail)
    with pytest.raises(StereograinError, match="cannot write"):
        write_volume(tmp_path / "p.zarr", particle, V)
    assert _leftovers(tmp_path) == []


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch, particle):
    import meshio

    out = tmp_path / "m.vtu"
    write_hex_mesh(out, particle, V)
    before = out.read_bytes()
    monkeypatch.setattr(meshio, "write", _half_then_fail())
    with pytest.raises(StereograinError):
        write_hex_mesh(out, particle, V)
    assert out.read_bytes() == before and _leftovers(tmp_path) == ["m.vtu"]
    assert os.access(out, os.R_OK)
