"""Tests of stereograin.tetmesh: conforming Kuhn tetrahedra of the voxels, smoothed boundaries, writers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stereograin.errors import StereograinError
from stereograin.export import hex_mesh
from stereograin.tetmesh import tet_mesh, write_tet_mesh
from conftest import ball

V = 0.25  # um per voxel
ORIGIN = (1.5, -2.0, 10.0)  # um, centre of voxel [0, 0, 0] as (x, y, z)
_FACES = np.array([[0, 1, 2], [0, 1, 3], [0, 2, 3], [1, 2, 3]])


@pytest.fixture(scope="module")
def particle() -> np.ndarray:
    """A voxelised ball (R = 7, 17^3 voxels) cut into 4 grains by an axis-aligned and an oblique plane,
    touching the volume's edge on one side, plus a grain (5) touching grain 1 only along a voxel edge."""
    n = 17
    inside = ball(7.0, n)
    z, y, x = np.indices((n, n, n))
    c = (n - 1) / 2
    grains = 1 + (x > c + 1).astype(np.uint32) + 2 * (y + 0.5 * z > 1.5 * c).astype(np.uint32)
    lab = np.where(inside, grains, 0).astype(np.uint32)
    lab[8, 8, 0] = 1  # on the edge of the array
    lab[:3, :3, :3] = 0
    lab[0, 0, 0] = 5
    lab[1, 1, 0] = 1  # shares only the edge x in [0, 1] at y = z = 1 with grain 5
    return lab


def _volumes(points: np.ndarray, tets: np.ndarray) -> np.ndarray:
    p0 = points[tets[:, 0]]
    e1, e2, e3 = (points[tets[:, k]] - p0 for k in (1, 2, 3))
    return np.einsum("ij,ij->i", np.cross(e1, e2), e3) / 6


def _faces(tets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unique triangles (sorted node triples), how often each occurs, and for each triangle occurrence its tet."""
    f = np.sort(tets[:, _FACES].reshape(-1, 3), axis=1)
    uniq, inverse, counts = np.unique(f, axis=0, return_inverse=True, return_counts=True)
    return uniq, counts, inverse.ravel()


def _voxel_faces(labels: np.ndarray) -> tuple[int, int]:
    """(voxel faces between a grain and the outside, voxel faces between two different grains); volume padded."""
    p = np.pad(labels, 1)
    outer = inner = 0
    for axis in range(3):
        a = np.moveaxis(p, axis, 0)[:-1]
        b = np.moveaxis(p, axis, 0)[1:]
        d = a != b
        outer += int(np.count_nonzero(d & ((a == 0) | (b == 0))))
        inner += int(np.count_nonzero(d & (a != 0) & (b != 0)))
    return outer, inner


def _surface_area(points: np.ndarray, tets: np.ndarray) -> float:
    uniq, counts, _ = _faces(tets)
    t = uniq[counts == 1]
    p0 = points[t[:, 0]]
    return float(0.5 * np.linalg.norm(np.cross(points[t[:, 1]] - p0, points[t[:, 2]] - p0), axis=1).sum())


def _node_label_counts(labels: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Number of distinct labels among the 8 voxels around each (unsmoothed) node, outside = 0."""
    ijk = np.rint((points - np.array(ORIGIN)) / V + 0.5).astype(int)  # corner grid index (x, y, z)
    p = np.pad(labels, 1)
    around = np.stack(
        [p[ijk[:, 2] + dz, ijk[:, 1] + dy, ijk[:, 0] + dx] for dz in (0, 1) for dy in (0, 1) for dx in (0, 1)], axis=1
    )
    s = np.sort(around, axis=1)
    return 1 + np.count_nonzero(np.diff(s, axis=1), axis=1)


def test_plain_tets_fill_the_voxels_and_conform(particle):
    points, tets, grain = tet_mesh(particle, V, ORIGIN, smoothing=0)
    hp, hc, hg = hex_mesh(particle, V, ORIGIN)
    np.testing.assert_array_equal(points, hp)  # same nodes, same numbering
    assert tets.shape == (6 * len(hc), 4) and tets.dtype == np.int64 and grain.dtype == np.uint32
    np.testing.assert_array_equal(grain, np.repeat(hg, 6))
    vol = _volumes(points, tets)
    np.testing.assert_allclose(vol, V**3 / 6)  # all positive, all equal
    counts = np.bincount(particle.ravel())
    np.testing.assert_allclose(np.bincount(grain, weights=vol)[1:], counts[1:] * V**3)
    # the six tets of a voxel lie inside it: their centroid is the voxel's centre, of the right grain
    centre = points[tets.reshape(-1, 24)].mean(axis=1)
    np.testing.assert_allclose(centre, points[hc].mean(axis=1))
    # conformity: each triangle once (outer surface) or twice (inside); triangles between two grains
    # and on the outer surface are the voxel faces there, each split into two
    uniq, n_occ, inverse = _faces(tets)
    assert set(np.unique(n_occ).tolist()) == {1, 2}
    outer, inner = _voxel_faces(particle)
    assert np.count_nonzero(n_occ == 1) == 2 * outer
    owner = np.full((len(uniq), 2), -1)
    order = np.argsort(inverse, kind="stable")
    first = np.searchsorted(inverse[order], np.arange(len(uniq)))
    owner[:, 0] = order[first] // 4
    twice = n_occ == 2
    owner[twice, 1] = order[first[twice] + 1] // 4
    between = twice & (grain[owner[:, 0]] != grain[np.maximum(owner[:, 1], 0)])
    assert np.count_nonzero(between) == 2 * inner
    # total: every tet face is counted once or twice
    assert n_occ.sum() == 4 * len(tets)


def test_smoothing_keeps_tets_valid_and_volumes(particle):
    p0, tets0, grain0 = tet_mesh(particle, V, ORIGIN, smoothing=0)
    points, tets, grain = tet_mesh(particle, V, ORIGIN, smoothing=20)
    np.testing.assert_array_equal(tets, tets0)
    np.testing.assert_array_equal(grain, grain0)
    vol = _volumes(points, tets)
    assert vol.min() >= 0.01 * V**3 / 6 * (1 - 1e-9)
    # grains 1-4 (hundreds of voxels) keep their volumes; the one-voxel grain 5 may shrink (to a point at most)
    counts = np.bincount(particle.ravel())[1:5]
    per_grain = np.bincount(grain, weights=vol)[1:5]
    np.testing.assert_allclose(per_grain, counts * V**3, rtol=0.05)
    assert vol.sum() == pytest.approx(np.count_nonzero(particle) * V**3, rel=0.03)
    shift = np.linalg.norm(points - p0, axis=1)
    assert shift.max() <= 0.5 * V * (1 + 1e-9)
    n_labels = _node_label_counts(particle, p0)
    assert np.all(shift[n_labels != 2] == 0)  # interior, triple-line and corner nodes stay put
    assert np.count_nonzero(shift[n_labels == 2]) > 0.5 * np.count_nonzero(n_labels == 2)


def test_smoothing_brings_a_ball_towards_a_sphere():
    r = 8
    blob = ball(r, 2 * r + 3).astype(np.uint32) * 3
    p0, tets, _ = tet_mesh(blob, 1.0, smoothing=0)
    p, tets_s, _ = tet_mesh(blob, 1.0)
    sphere = 4 * np.pi * r**2
    staircase, smooth = _surface_area(p0, tets), _surface_area(p, tets_s)
    assert staircase > 1.4 * sphere
    assert smooth < 1.1 * sphere and smooth > 0.95 * sphere
    assert _volumes(p, tets_s).sum() == pytest.approx(blob.astype(bool).sum(), rel=0.02)


@pytest.mark.parametrize("suffix", [".msh", ".inp", ".vtu"])
def test_tet_mesh_files_read_back(tmp_path, particle, suffix):
    import meshio

    out = tmp_path / f"m{suffix}"
    write_tet_mesh(out, particle, V, ORIGIN, smoothing=5)
    points, tets, grain = tet_mesh(particle, V, ORIGIN, smoothing=5)
    m = meshio.read(out)
    assert len(m.cells) == 1 and m.cells[0].type == "tetra"
    cells = m.cells[0].data
    assert len(cells) == len(tets) == 6 * np.count_nonzero(particle)
    counts = np.bincount(particle.ravel())
    present = range(1, 6)
    if suffix == ".msh":
        tag = m.cell_data["gmsh:physical"][0]
        assert {n: v[0] for n, v in m.field_data.items()} == {f"GRAIN_{g}": g for g in present}
    elif suffix == ".inp":
        assert "TYPE=C3D4" in out.read_text().upper().replace(" ", "")
        assert sorted(m.cell_sets) == sorted(f"GRAIN_{g}" for g in present)
        tag = np.zeros(len(cells), int)
        for g in present:
            (ids,) = m.cell_sets[f"GRAIN_{g}"]
            assert len(ids) == 6 * counts[g]
            tag[ids] = g
        assert np.all(tag > 0)
    else:
        tag = m.cell_data["grain"][0]
    np.testing.assert_array_equal(tag, grain)
    np.testing.assert_allclose(m.points[cells], points[tets], atol=1e-6)  # micrometres
    assert _volumes(m.points, cells).min() > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda p, lab: tet_mesh(lab, 0), "voxel size must be positive"),
        (lambda p, lab: tet_mesh(lab[0], 1.0), r"labels must be a 3D \(Z, Y, X\) array"),
        (lambda p, lab: tet_mesh(lab.astype(float), 1.0), "labels must be integers"),
        (lambda p, lab: tet_mesh(lab, 1.0, origin_um=(0, 0)), "origin must be three numbers"),
        (lambda p, lab: tet_mesh(lab, 1.0, smoothing=-1), "smoothing must be >= 0"),
        (lambda p, lab: tet_mesh(lab, 1.0, smoothing=2.5), "smoothing must be a whole number"),
        (lambda p, lab: tet_mesh(lab, 1.0, smoothing=True), "smoothing must be a whole number"),
        (lambda p, lab: write_tet_mesh(p / "a.vtk", lab, 1.0), r"use one of \.msh, \.inp, \.vtu"),
        (lambda p, lab: write_tet_mesh(p / "a.vtu", np.zeros_like(lab), 1.0), "labels hold no grains"),
        (lambda p, lab: write_tet_mesh(p / "a.msh", lab, float("nan")), "voxel size must be a finite"),
    ],
)
def test_bad_input_one_line_errors(tmp_path, particle, call, match):
    with pytest.raises(StereograinError, match=match) as info:
        call(tmp_path, particle)
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_output_that_is_a_folder_is_refused(tmp_path, particle):
    out = tmp_path / "out.inp"
    out.mkdir()
    with pytest.raises(StereograinError, match="is a folder; give a file name"):
        write_tet_mesh(out, particle, V)
    assert [p.name for p in tmp_path.iterdir()] == ["out.inp"] and not any(out.iterdir())


def test_failed_write_leaves_no_file(tmp_path, particle):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StereograinError, match="cannot (write|create folder)"):
        write_tet_mesh(Path(blocker) / "m.vtu", particle, V)
    assert [p.name for p in tmp_path.iterdir()] == ["file"]
