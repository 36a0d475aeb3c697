"""Conforming tetrahedral meshes of a particle's grains, with smoothed grain boundaries.

Method
------
Every nonzero voxel is split into six tetrahedra by the Kuhn (Freudenthal)
subdivision: each tetrahedron follows one monotone path from the voxel's low
corner to its high corner along the three axes in one of the 3! orders, so all
six share the main diagonal. Because every voxel is cut the same way, the
triangulations of the two voxels either side of a face agree, and the mesh is
conforming: every triangle is shared by exactly two tetrahedra or lies on the
particle's outer surface. The nodes are the voxel corners, shared, numbered as
in :func:`stereograin.export.hex_mesh`.

The voxel staircase is then smoothed on the grain boundaries only. A corner
whose eight surrounding voxels (outside the array counting as 0) hold exactly
two labels lies on the sheet between that pair of labels (one may be 0, the
outer surface); it is moved by Taubin lambda/mu smoothing (lambda 0.5, mu -0.53,
which does not shrink the enclosed volumes as plain Laplacian smoothing does),
averaging over its mesh-edge neighbours on the same sheet. Corners on triple
lines and at grain corners (three or more labels) stay fixed and act as anchors
for the sheets that meet there; corners inside one grain stay fixed. Each
corner moves at most half a voxel from its voxel position, and after every
iteration the moves of the nodes of any tetrahedron whose volume has fallen to
1% of its undisturbed volume or below are undone, so the result never holds
inverted or degenerate elements. Topology never changes: the tetrahedra of a
grain remain exactly those of its voxels.

Why not a Delaunay mesher
-------------------------
Meshing the grains' surface-nets surfaces with TetGen or Gmsh fails on real
label volumes: smoothing the surfaces can make them self-intersect, and grains
whose parts touch only along a voxel edge or corner give non-manifold surfaces
that the meshers reject (TetGen is also AGPL-licensed). A voxel-based conforming
mesh never fails, for any label volume, at the price of more (and, near the
boundaries, flatter) elements.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from .errors import StereograinError
from .export import (
    HEX_MESH_SUFFIXES,
    _check_origin,
    _check_output,
    _check_voxel_size,
    _nonempty,
    _write_fe_mesh,
    voxel_corners,
)
from .io import _check_labels

__all__ = ["TET_MESH_SUFFIXES", "tet_mesh", "write_tet_mesh"]

#: Suffixes :func:`write_tet_mesh` understands, with the meshio format each one is written in.
TET_MESH_SUFFIXES = HEX_MESH_SUFFIXES

_LAMBDA = 0.5
_MU = -0.53
_MAX_SHIFT = 0.5  # voxels, total displacement of a node
_MIN_VOLUME_FRACTION = 0.01  # of the undisturbed tet volume v^3 / 6

# Voxel corners numbered c = dx + 2 dy + 4 dz.
_AXIS_BIT = (1, 2, 4)  # x, y, z


def _kuhn_tets() -> np.ndarray:
    """The six Kuhn tetrahedra of the unit cube as corner numbers, (6, 4), each positively oriented."""
    tets = []
    for a, b, c, sign in ((0, 1, 2, 1), (1, 2, 0, 1), (2, 0, 1, 1), (0, 2, 1, -1), (2, 1, 0, -1), (1, 0, 2, -1)):
        p1 = _AXIS_BIT[a]
        p2 = p1 + _AXIS_BIT[b]
        # det(e_a, e_a + e_b, e_a + e_b + e_c) = det(e_a, e_b, e_c) = sign of the permutation
        tets.append([0, p1, p2, 7] if sign > 0 else [0, p2, p1, 7])
    return np.array(tets, dtype=np.int64)


_KUHN = _kuhn_tets()
# The 19 edges of the Kuhn subdivision of a cube: corner pairs (a, b) with a's bits a proper subset of b's.
_EDGES = np.array([(a, b) for a in range(8) for b in range(8) if a != b and a & b == a], dtype=np.int64)


def _check_smoothing(smoothing: object) -> int:
    if isinstance(smoothing, bool) or not isinstance(smoothing, (int, np.integer)):
        raise StereograinError(f"smoothing must be a whole number of iterations >= 0, got {smoothing!r}")
    if smoothing < 0:
        raise StereograinError(f"smoothing must be >= 0 iterations, got {smoothing}")
    return int(smoothing)


def _signed_volumes(x: np.ndarray, tets: np.ndarray) -> np.ndarray:
    """Signed volumes of tetrahedra (positive for the orientation used here)."""
    p0 = x[tets[:, 0]]
    return np.einsum("ij,ij->i", np.cross(x[tets[:, 1]] - p0, x[tets[:, 2]] - p0), x[tets[:, 3]] - p0) / 6.0


def _smooth(
    x: np.ndarray,
    tets: np.ndarray,
    node_voxels: np.ndarray,
    edges: np.ndarray,
    iterations: int,
    v: float,
) -> np.ndarray:
    """Taubin-smooth the two-label nodes of ``x`` (n, 3) in place and return it.

    ``node_voxels`` (n, 8): labels of the eight voxels around each node;
    ``edges`` (n_edges, 2): the mesh's undirected edges.
    """
    import scipy.sparse as sp

    n = len(x)
    s = np.sort(node_voxels, axis=1)
    n_labels = 1 + np.count_nonzero(np.diff(s, axis=1), axis=1)
    lo, hi = s[:, 0], s[:, -1]
    movable = n_labels == 2
    if not movable.any():
        return x
    pair = (lo.astype(np.uint64) << np.uint64(32)) | hi.astype(np.uint64)
    # directed edges i -> j from a movable node i
    i = np.concatenate([edges[:, 0], edges[:, 1]])
    j = np.concatenate([edges[:, 1], edges[:, 0]])
    keep = movable[i]
    i, j = i[keep], j[keep]
    same_sheet = movable[j] & (pair[j] == pair[i])
    # fixed nodes on a triple line or corner anchor the sheets of every pair of labels they touch
    anchor = (n_labels[j] >= 3) & ~same_sheet
    if anchor.any():
        lab_j = s[j[anchor]]
        anchor[anchor] = (lab_j == lo[i[anchor], None]).any(axis=1) & (lab_j == hi[i[anchor], None]).any(axis=1)
    use = same_sheet | anchor
    i, j = i[use], j[use]
    nodes = np.flatnonzero(movable)
    row = np.full(n, -1, dtype=np.int64)
    row[nodes] = np.arange(len(nodes))
    deg = np.bincount(row[i], minlength=len(nodes)).astype(np.float64)
    has = deg > 0
    nodes, deg = nodes[has], deg[has]
    row[:] = -1
    row[nodes] = np.arange(len(nodes))
    w = sp.csr_matrix((1.0 / deg[row[i]], (row[i], j)), shape=(len(nodes), n))
    # only tetrahedra with a moving node can change
    active = tets[np.isin(tets, nodes).any(axis=1)]
    threshold = _MIN_VOLUME_FRACTION * v**3 / 6.0
    x0 = x[nodes].copy()
    cap = _MAX_SHIFT * v
    for _ in range(iterations):
        before = x[nodes].copy()
        for factor in (_LAMBDA, _MU):
            x[nodes] += factor * (w @ x - x[nodes])
        d = x[nodes] - x0
        length = np.linalg.norm(d, axis=1)
        too_far = length > cap
        x[nodes[too_far]] = x0[too_far] + d[too_far] * (cap / length[too_far])[:, None]
        while True:  # undo the moves around collapsed tetrahedra until none is left (ends: all undone is valid)
            bad = _signed_volumes(x, active) <= threshold
            if not bad.any():
                break
            undo = row[np.unique(active[bad])]
            undo = undo[undo >= 0]
            x[nodes[undo]] = before[undo]
    return x


def tet_mesh(
    labels: np.ndarray,
    voxel_size_um: float,
    origin_um: Sequence[float] = (0.0, 0.0, 0.0),
    smoothing: int = 20,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Conforming tetrahedral mesh of a particle's grains (6 Kuhn tetrahedra per voxel), boundaries smoothed.

    See the module docstring for the method.

    Parameters
    ----------
    labels : array_like of int, shape (Z, Y, X)
        0 outside the particle, grains 1..k.
    voxel_size_um : float
        Voxel edge length in micrometres, > 0.
    origin_um : (3,) float, default (0, 0, 0)
        Centre of voxel ``[0, 0, 0]`` as ``(x, y, z)`` in micrometres.
    smoothing : int, default 20
        Taubin (lambda 0.5, mu -0.53) iterations applied to the nodes on grain
        boundaries and on the outer surface; 0 keeps the voxel corners (the
        staircase). Nodes move at most half a voxel; triple lines, grain
        corners and interior nodes stay fixed.

    Returns
    -------
    points : (n_nodes, 3) float64
        Node coordinates ``(x, y, z)`` in micrometres; with ``smoothing=0``
        the voxel corners, identical to the points of
        :func:`~stereograin.export.hex_mesh`.
    tets : (6 * n_voxels, 4) int64
        Node indices of each tetrahedron (Gmsh / VTK / Abaqus C3D4 order),
        positive volume (at least 1% of the undisturbed v^3 / 6). The six
        tetrahedra of a voxel are consecutive; voxels are sorted by grain, in
        C order within a grain.
    grain : (6 * n_voxels,) uint32
        Grain label of each tetrahedron.

    Raises
    ------
    StereograinError
        For bad labels, voxel size, origin or smoothing, or labels that are all 0.
    """
    arr = _check_labels(labels)
    v = _check_voxel_size(voxel_size_um)
    origin = _check_origin(origin_um)
    iterations = _check_smoothing(smoothing)
    _nonempty(arr, "mesh")
    nz, ny, nx = arr.shape
    points, corner_nodes, vox_grain, corner_index = voxel_corners(arr, v, origin)
    ck, cj, ci = corner_index.T
    tets = corner_nodes[:, _KUHN].reshape(-1, 4)
    grain = np.repeat(vox_grain, 6)
    if iterations:
        # labels of the 8 voxels around each node, outside the array = 0; in the padded array the
        # voxels around corner (k, j, i) are [k:k+2, j:j+2, i:i+2]
        c = np.arange(8)
        padded = np.pad(arr, 1).ravel()
        py, pz = nx + 2, (ny + 2) * (nx + 2)
        poff = (c & 1) + ((c >> 1) & 1) * py + ((c >> 2) & 1) * pz
        node_voxels = padded[(ck * pz + cj * py + ci)[:, None] + poff[None, :]]
        e = corner_nodes[:, _EDGES].reshape(-1, 2)
        e = np.unique(np.sort(e, axis=1) @ np.array([len(points), 1], dtype=np.int64))
        edges = np.stack(np.divmod(e, len(points)), axis=1)
        points = _smooth(points, tets, node_voxels, edges, iterations, v)
    return points, tets, grain


def write_tet_mesh(
    path: str | os.PathLike,
    labels: np.ndarray,
    voxel_size_um: float,
    origin_um: Sequence[float] = (0.0, 0.0, 0.0),
    smoothing: int = 20,
) -> None:
    """Write the tetrahedral mesh of :func:`tet_mesh` for finite elements, atomically (meshio).

    Parameters
    ----------
    path : path-like
        The output; its suffix picks the format:

        - ``.msh``: Gmsh 2.2 (binary). Each element's physical and
          elementary tag is its grain label, and ``$PhysicalNames`` names
          the volume group of grain ``g`` ``GRAIN_g``.
        - ``.inp``: Abaqus input, ``*NODE``, ``*ELEMENT, TYPE=C3D4`` and one
          ``*ELSET, ELSET=GRAIN_g`` per grain.
        - ``.vtu``: VTK XML UnstructuredGrid (tetra cells) with cell data ``grain``.

        Node coordinates are in micrometres.
    labels, voxel_size_um, origin_um, smoothing
        As for :func:`tet_mesh`.

    Raises
    ------
    StereograinError
        For an unknown suffix, an output that is an existing folder, bad
        input, labels that are all 0, or a failed write (no file is left behind).
    """
    path, _ = _check_output(path, tuple(TET_MESH_SUFFIXES), "tetrahedral mesh")
    points, tets, grain = tet_mesh(labels, voxel_size_um, origin_um, smoothing=smoothing)
    _write_fe_mesh(path, points, tets, "tetra", grain)
