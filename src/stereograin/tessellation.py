"""Generalised balanced power diagrams (GBPDs) in 2D and 3D (Eq. 8, 11, 12).

A GBPD with seeds ``s_i``, positive definite matrices ``M_i`` and offsets
``r_i`` assigns a point ``x`` to the cell

    argmin_i  |x - s_i|_{M_i} - r_i,   |v|_M = sqrt(v^T M v)

(the reading notes' metric: a square root, not the squared form). Ties go to
the lowest index. The *restricted* form (Algorithm 1) has
``M_i = Q_i^T diag(D_i) Q_i`` where ``Q_i`` maps world vectors into the
grain's radial frame, whose first axis is ``s_i / |s_i|`` (Eq. 12).

Conventions: points are ``(n, d)`` float64 in ``(x, y[, z])`` order. A grid
of shape ``(H, W)`` or ``(Z, Y, X)`` has its point ``[k, j, i]`` at
``origin + spacing * (i, j, k)``. Labels are ``1..n`` (cell index + 1), so 0
stays free for background / unindexed pixels. Units are those of the seeds
(pixels / voxels).

What is here:

* exact labelling: :meth:`GBPD.label_points`, :meth:`GBPD.label_grid`
  (2D image, 3D volume) and :meth:`GBPD.label_plane` (a plane through a 3D
  diagram), equal to the brute-force :meth:`GBPD.label_points_bruteforce`.
  A block tree prunes candidate cells with bounds that are provably safe for
  any positive definite markers (see "Exact labelling engine" below); compiled
  numba kernels evaluate the survivors on threads;
* the soft map (Eq. 11) ``softmax_i((-|x - s_i|_{M_i} + r_i) / temperature)``,
  :func:`soft_map`, differentiable in torch with respect to points, seeds,
  matrices and offsets, batched, on CPU or CUDA, optionally restricted to
  per-point candidates (:func:`nearest_candidates`);
* per-cell size, centroid and principal axes of a label image or volume,
  :func:`cell_geometry`.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numba
import numpy as np

from ._scratch import scratch
from ._threads import default_workers, run_workers
from .errors import StereograinError

__all__ = [
    "radial_frames",
    "restricted_metrics",
    "frame_metrics",
    "GBPD",
    "soft_map",
    "nearest_candidates",
    "grid_points",
    "plane_points",
    "CellGeometry",
    "cell_geometry",
]


def radial_frames(seeds: np.ndarray, gamma: np.ndarray | None = None, eps: float = 1e-9) -> np.ndarray:
    """Basis changes ``Q_i`` into each seed's radial frame (Eq. 12).

    3D: ``Q = R(e1, gamma) R(s~ + e1, pi)``: the half-turn about the bisector of
    ``s~ = s/|s|`` and ``e1`` maps ``s~`` to ``e1``, then the spin ``gamma``
    turns the tangential axes about ``e1``. The first row of ``Q`` is ``s~``.
    Degenerate cases: ``s = 0`` takes ``s~ = e1`` (no half-turn); ``s~ = -e1``
    (no bisector) takes the half-turn about ``e3``.

    2D: the rotation taking ``s~`` to ``e1`` (no spin: the tangential axis is
    unique; ``gamma`` is ignored). ``s = 0`` gives the identity.

    Parameters
    ----------
    seeds : (n, d) array, d in {2, 3}
        Seed positions relative to the particle centre.
    gamma : (n,) array, optional
        Spin angles in radians (3D only); default 0.
    eps : float
        Below this norm a vector counts as zero.

    Returns
    -------
    (n, d, d) float64
        ``Q_i``; ``Q_i @ v`` expresses world vector ``v`` in the grain frame.
    """
    s = np.asarray(seeds, dtype=np.float64)
    if s.ndim != 2 or s.shape[1] not in (2, 3):
        raise StereograinError(f"seeds must have shape (n, 2) or (n, 3), got {s.shape}")
    n, d = s.shape
    norm = np.linalg.norm(s, axis=1)
    st = np.where(norm[:, None] > eps, s / np.where(norm > eps, norm, 1.0)[:, None], np.eye(d)[0])
    if d == 2:
        c, sn = st[:, 0], st[:, 1]
        return np.stack([np.stack([c, sn], -1), np.stack([-sn, c], -1)], axis=1)
    g = np.zeros(n) if gamma is None else np.asarray(gamma, dtype=np.float64).reshape(n)
    Q = np.empty((n, 3, 3))
    _frames3(s, g, float(eps), Q)
    return Q


@numba.njit(cache=True, nogil=True)
def _frames3(s, g, eps, Q):  # pragma: no cover - compiled
    for i in range(s.shape[0]):
        _frame(s[i, 0], s[i, 1], s[i, 2], g[i], Q, i, eps)


@numba.njit(cache=True, nogil=True, inline="always")
def _frame(x, y, z, g, Q, row, eps=1e-9):  # pragma: no cover - compiled
    """``Q[row] = R(e1, g) R(s~ + e1, pi)`` of seed ``(x, y, z)`` with spin ``g`` (:func:`radial_frames`).

    One compiled frame: the marker network's feature pass builds its frames
    with it too, so both agree bit for bit.
    """
    nrm = math.sqrt(x * x + y * y + z * z)
    if nrm > eps:
        sx, sy, sz = x / nrm, y / nrm, z / nrm
    else:
        sx, sy, sz = 1.0, 0.0, 0.0
    bx = sx + 1.0
    bn = math.sqrt(bx * bx + sy * sy + sz * sz)
    if bn > eps:
        ax, ay, az = bx / bn, sy / bn, sz / bn
    else:
        ax, ay, az = 0.0, 0.0, 1.0
    # half turn H = 2 a a^T - I
    h00 = 2.0 * ax * ax - 1.0
    h01 = 2.0 * ax * ay
    h02 = 2.0 * ax * az
    h10 = 2.0 * ay * ax
    h11 = 2.0 * ay * ay - 1.0
    h12 = 2.0 * ay * az
    h20 = 2.0 * az * ax
    h21 = 2.0 * az * ay
    h22 = 2.0 * az * az - 1.0
    # spin about e1: rows (1, 0, 0), (0, c, -s), (0, s, c) with c = 1 - (1 - cos g) as in Rodrigues
    sn = math.sin(g)
    cc = 1.0 - (1.0 - math.cos(g))
    Q[row, 0, 0] = h00
    Q[row, 0, 1] = h01
    Q[row, 0, 2] = h02
    Q[row, 1, 0] = cc * h10 - sn * h20
    Q[row, 1, 1] = cc * h11 - sn * h21
    Q[row, 1, 2] = cc * h12 - sn * h22
    Q[row, 2, 0] = sn * h10 + cc * h20
    Q[row, 2, 1] = sn * h11 + cc * h21
    Q[row, 2, 2] = sn * h12 + cc * h22


def restricted_metrics(seeds: np.ndarray, D: np.ndarray, gamma: np.ndarray | None = None) -> np.ndarray:
    """``M_i = Q_i^T diag(D_i) Q_i`` with the radial frames of :func:`radial_frames`.

    Parameters
    ----------
    seeds : (n, d) array
    D : (n, d) array of positive entries
        ``D[:, 0]`` weighs the radial direction, the others the tangential ones.
    gamma : (n,) array, optional
        Spin angles (3D).

    Returns
    -------
    (n, d, d) float64, symmetric positive definite
    """
    Dm = np.asarray(D, dtype=np.float64)
    s = np.asarray(seeds, dtype=np.float64)
    if Dm.shape != s.shape:
        raise StereograinError(f"D must have the seeds' shape {s.shape}, got {Dm.shape}")
    if not np.all(np.isfinite(Dm)) or np.any(Dm <= 0):
        raise StereograinError("every entry of D must be positive and finite (M must be positive definite)")
    return frame_metrics(radial_frames(s, gamma), Dm)


def frame_metrics(Q: np.ndarray, D: np.ndarray) -> np.ndarray:
    """``M_i = Q_i^T diag(D_i) Q_i`` from frames ``Q`` (n, d, d) and diagonals ``D`` (n, d), float64.

    A compiled loop, bit for bit ``np.einsum("nki,nk,nkj->nij", Q, D, Q)``
    (same products, same order) and about 8 times faster.
    """
    Q = np.ascontiguousarray(Q, dtype=np.float64)
    D = np.ascontiguousarray(D, dtype=np.float64)
    if Q.ndim != 3 or D.ndim != 2 or Q.shape != (len(D), D.shape[1], D.shape[1]):
        raise StereograinError(f"frames (n, d, d) and diagonals (n, d) must match, got {Q.shape} and {D.shape}")
    out = np.empty_like(Q)
    _frame_metrics(Q, D, out)
    return out


@numba.njit(cache=True, nogil=True)
def _frame_metrics(Q, D, out):  # pragma: no cover - compiled
    n, d = D.shape
    for t in range(n):
        for i in range(d):
            for j in range(d):
                acc = 0.0
                for k in range(d):
                    acc += Q[t, k, i] * D[t, k] * Q[t, k, j]
                out[t, i, j] = acc


def grid_points(shape: tuple[int, ...], origin: np.ndarray | float = 0.0, spacing: float = 1.0) -> np.ndarray:
    """Points of a regular grid, ``(prod(shape), d)`` in ``(x, y[, z])`` order (C order of ``shape``)."""
    d = len(shape)
    axes = [np.arange(m) * float(spacing) for m in shape]
    mesh = np.meshgrid(*axes, indexing="ij")  # (k, j, i) order
    pts = np.stack([m.ravel() for m in mesh[::-1]], axis=1)
    return pts + np.broadcast_to(np.asarray(origin, dtype=np.float64), (d,))


def plane_points(
    origin: np.ndarray, e_u: np.ndarray, e_v: np.ndarray, shape: tuple[int, int], spacing: float = 1.0
) -> np.ndarray:
    """3D points of a planar ``(H, W)`` grid: pixel ``[j, i]`` at ``origin + spacing (i e_u + j e_v)``.

    Returns
    -------
    (H * W, 3) float64
    """
    o = np.asarray(origin, dtype=np.float64).reshape(3)
    u = np.asarray(e_u, dtype=np.float64).reshape(3)
    v = np.asarray(e_v, dtype=np.float64).reshape(3)
    uv = grid_points(tuple(shape), 0.0, spacing)  # (H*W, 2): (i*spacing, j*spacing)
    return o + uv[:, :1] * u + uv[:, 1:] * v


# ---------------------------------------------------------------------------
# Exact labelling engine
#
# Hand-written numba kernels: the work is a pruned argmin over cells with a
# per-block candidate set that shrinks down a block tree. No library offers a
# nearest-site query for per-site anisotropic norms with additive weights, and
# a per-voxel k-nearest query is ~150 times too slow (and not exact).
#
# Geometry. Everything is padded to 3D (a 2D point gets z = 0 and a 2D metric
# gets M_zz = 1, which adds exact zeros to every quadratic form). The points to
# label are a *lattice* ``x(i, j, k) = o + i A[0] + j A[1] + k A[2]`` (a grid,
# a plane section, or the centres of the point buckets of ``label_points``).
# Blocks are boxes of lattice indices, split into 8 (or 4 in a 2D index space)
# children level by level down to leaves of 4 x 4 x 4 (or 16 x 16) lattice sites.
#
# Safety of the pruning (why a cell that is dropped can never win). Let B be a
# block with world centre c, and write x = c + u for x in B, u in the box
# U_B = {sum_k t_k A[k] : |t_k| <= h_k}. For cell j let d = c - s_j,
# w = M_j d, q = d^T M_j d, p_k = A[k] . w and R_j = max_{u in U_B} |u|_{M_j}
# (a convex function: its maximum over the box is at a vertex). Then
#   q(x) = q + 2 u.w + u^T M_j u   with   |u.w| <= L := sum_k h_k |p_k|,
# so for every x in B (|.| the M_j norm, a norm since M_j is SPD):
#   |x - s_j| >= max(sqrt(q) - R_j, sqrt(max(q - 2L, 0)))   =: lo_j
#   |x - s_j| <= min(sqrt(q) + R_j, sqrt(q + 2L + R_j^2))   =: up_j
# (triangle inequality, and u^T M u in [0, R_j^2]; as L <= sqrt(q) R_j the
# second term is always the smaller one). U = min_j (up_j - r_j)
# bounds min_i f_i(x) from above at every x in B, and cell j can only win at x
# if f_j(x) <= min_i f_i(x) <= U, which needs lo_j - r_j <= U. Cells with
# lo_j - r_j > U are dropped; by induction the survivors of every block contain
# all cells that win anywhere in it (ties included: "<=" keeps them). Each
# bound carries a slack of 1e-8 of its scale, far above rounding error; the
# test lo_j - r_j <= U is done in squared form (no square root, _block_keep).
# Long lists (coarse blocks, >= _OCTANT_MIN cells) also get a second U: every site of B lies
# in one of its 8 octants, whose boxes are half B's (metric radius R_j / 2), so with U_o =
# min over a few cells (the 8 smallest up_j - r_j of B) of their up_j - r_j on octant o,
# max_o U_o bounds min_i f_i on B too, and is often much smaller than U for coarse blocks
# (12-23 % fewer cell-block tests; _octant_bound). U = min of the two.
# Leaf hints (3D lattices, _hint_pyramid). At coarse blocks both bounds above are loose: up_j
# carries the block's whole metric radius, so U is about R plus the distance to the nearest
# seed (~380 on a 64-voxel block of a particle's 2 px grid, where max_x min_i f_i is ~65),
# and the kept lists hold every cell within about 2 R. So before the tree, every leaf gets
# its own U_leaf = min_j (up_j - r_j + slack) over the seeds binned in the leaf's bin and its
# 6 face neighbours (bins of one leaf; all 27 bins if those 7 are empty): up_j on the small
# leaf box is tight. A leaf with no seed in its 27 bins takes a face neighbour's U plus the
# largest metric length of the step between them (f_j(x + d) <= f_j(x) + |d|_{M_j}; _fill_hints).
# On grids much finer than the seeds (under a quarter of a seed per labelled leaf, as on the
# dense 256^3 benchmark) the hints are looser than the tree's own U and are not made.
# Every site of a block lies in one of its leaves, so the max of U_leaf over
# the block's unmasked leaves bounds min_i f_i at every site that is labelled (masked leaves
# are never labelled: -inf). A pyramid of these maxima gives every block its bound in O(1);
# the blocks above the leaves use it alone (_block_keep_given: one pass, no square root; the
# octant bound is not needed), the leaves' parents the min of it and the computed U.
# The hints cut the task blocks' lists from about 4,100 cells to 1,000 on library particles,
# and the work of the breadth-first levels above them about 6 times. (A lower bound from the
# box's distance in lattice coordinates times sqrt(lambda_min(A M_j A^T)) was tried with them:
# 10-40 % shorter coarse lists, but no faster overall, so it was left out.)
# Cell order (_spatial_order). On 3D lattices (label_grid of a 3D diagram) the engine numbers
# the cells in z-order (Morton order) of their seeds' lattice bins of two leaves, so cells near
# each other in space are near each other in its tables (seeds, metrics, radii, G): the
# candidate lists of a block then read a few cache lines instead of one per cell. On library
# particles (23,000 cells in input order) this makes labelling about 8 % faster (11 % with the
# input already in that order, GBPD.in_grid_order: no gathers, and label lookups in order; the
# particle assembly labels that way). Output labels and ties are those of the input numbering
# (orig[c] + 1; a tie goes to the lowest input index), so the order changes nothing but speed.
# Planes, 2D grids and points keep the input order: a plane through a 3D diagram reads few of
# its cells, and sorting them all made a 1024^2 section of 20,000 cells 20 % slower.
# A block (at any level) with a single survivor is filled with it: every dropped cell has
# lo_j - r_j > U >= that cell's value everywhere in the block, so it wins every site there.
# At a leaf the candidates are evaluated in increasing lo_j; once lo_j - r_j
# exceeds the largest current best value over the leaf (plus the float32 error
# bound below), no later candidate can win. Nothing depends on a fixed candidate
# count, so very anisotropic markers only make the lists longer.
#
# Exactness: the leaf evaluates q(x) through the expansion above (a quadratic
# in the lattice offsets). A float32 pass (8 sites per AVX2 instruction) keeps
# each site's best and second-best value; every float32 value is within a
# proven bound e of the real one (``_lower``), so a site whose two best values
# differ by more than 2 max e has its winner decided exactly. The remaining
# near-tie sites (about 1e-3 of them) are evaluated again in float64
# (``_site_exact``), which can differ from the brute force only when two cells'
# values agree to ~1e-12, which random diagrams do not produce. Identical cells
# (same seed and marker) give identical values, and ties go to the lowest index
# as in ``label_points_bruteforce``.
# ---------------------------------------------------------------------------

_FM = {"contract"}  # fused multiply-adds only: no reassociation, results are deterministic
# gathered fields per candidate: sx sy sz m00 m01 m02 m11 m12 m22 r R(child level); the leaves read G and C
# (see _lower) from the table Gl by cell: copying them down every level costs more than those few reads
_NF = 11
_NO_LABEL = 0x7FFFFFFF
_OCTANT_MIN = 256  # candidate lists at least this long get the octant bound (_octant_bound): ~5-13 % faster
_OCTANT_K = 8  # cells it tries per octant


@numba.njit(cache=True, nogil=True)
def _gather(ids, off, n, S, Mu, r, Rl, soa):  # pragma: no cover - compiled
    """Fields of cells ``ids[off:off + n]`` into ``soa[:, :n]`` (see ``_NF``)."""
    for t in range(n):
        j = ids[off + t]
        soa[0, t] = S[j, 0]
        soa[1, t] = S[j, 1]
        soa[2, t] = S[j, 2]
        for f in range(6):
            soa[3 + f, t] = Mu[j, f]
        soa[9, t] = r[j]
        soa[10, t] = Rl[j]


@numba.njit(cache=True, nogil=True)
def _vmin(a, n):  # pragma: no cover - compiled
    """Smallest of ``a[:n]`` (4 independent chains: one chain is latency-bound)."""
    m0 = m1 = m2 = m3 = np.inf
    t = 0
    while t + 4 <= n:
        m0 = min(m0, a[t])
        m1 = min(m1, a[t + 1])
        m2 = min(m2, a[t + 2])
        m3 = min(m3, a[t + 3])
        t += 4
    while t < n:
        m0 = min(m0, a[t])
        t += 1
    return min(min(m0, m1), min(m2, m3))


@numba.njit(cache=True, nogil=True, inline="always")
def _metric_times(soa, lev, t, dx, dy, dz):  # pragma: no cover - compiled
    """``M_t d`` for the gathered cell ``t`` (its unique metric entries are ``soa[lev, 3:9, t]``)."""
    return (
        soa[lev, 3, t] * dx + soa[lev, 4, t] * dy + soa[lev, 5, t] * dz,
        soa[lev, 4, t] * dx + soa[lev, 6, t] * dy + soa[lev, 7, t] * dz,
        soa[lev, 5, t] * dx + soa[lev, 7, t] * dy + soa[lev, 8, t] * dz,
    )


@numba.njit(cache=True, nogil=True)
def _octant_bound(soa, lev, n, cx, cy, cz, hx, hy, hz, A, hi):  # pragma: no cover - compiled
    """A second upper bound of ``min_i f_i`` on a block, from its 8 octants (engine notes).

    The ``_OCTANT_K`` cells with the smallest ``hi`` (:func:`_block_keep`'s
    pass 1) give, per octant ``o`` (centre ``c + sum_k +-h_k / 2 A[k]``, half
    the extents, so the metric radius ``R / 2``), ``U_o = min_i up_i(o) - r_i
    + slack``; every site of the block lies in an octant, so ``max_o U_o``
    bounds ``min_i f_i`` on the whole block.
    """
    K = _OCTANT_K
    best = np.empty(K, np.int64)
    bv = np.full(K, np.inf)
    cnt = 0
    for t in range(n):  # the K smallest hi, by insertion into a sorted buffer
        v = hi[t]
        if cnt < K or v < bv[K - 1]:
            p = min(cnt, K - 1)
            while p > 0 and bv[p - 1] > v:
                bv[p] = bv[p - 1]
                best[p] = best[p - 1]
                p -= 1
            bv[p] = v
            best[p] = t
            cnt = min(cnt + 1, K)
    gx, gy, gz = 0.5 * hx, 0.5 * hy, 0.5 * hz
    Uo = -np.inf
    for o in range(8):
        sx = gx if o & 1 else -gx
        sy = gy if o & 2 else -gy
        sz = gz if o & 4 else -gz
        ox = cx + sx * A[0, 0] + sy * A[1, 0] + sz * A[2, 0]
        oy = cy + sx * A[0, 1] + sy * A[1, 1] + sz * A[2, 1]
        oz = cz + sx * A[0, 2] + sy * A[1, 2] + sz * A[2, 2]
        Ug = np.inf
        for b in range(cnt):
            t = best[b]
            q, L = _centre_terms(soa, lev, t, ox, oy, oz, gx, gy, gz, A)
            Rj = 0.5 * soa[lev, 10, t]  # the octant's box is half the block's: its metric radius is half
            rj = soa[lev, 9, t]
            up = np.sqrt(q + 2.0 * L + Rj * Rj)
            Ug = min(Ug, up - rj + 1e-8 * (up + Rj + abs(rj) + 1.0))
        Uo = max(Uo, Ug)
    return Uo


@numba.njit(cache=True, nogil=True, inline="always", fastmath=_FM)
def _q_and_l(dx, dy, dz, m00, m01, m02, m11, m12, m22, hx, hy, hz, A):  # pragma: no cover - compiled
    """``q = d^T M d`` (clipped at 0) and ``L = sum_k h_k |A[k] . M d|`` (engine notes; ``M`` by its unique entries)."""
    wx = m00 * dx + m01 * dy + m02 * dz
    wy = m01 * dx + m11 * dy + m12 * dz
    wz = m02 * dx + m12 * dy + m22 * dz
    q = dx * wx + dy * wy + dz * wz
    q = q if q > 0.0 else 0.0
    L = (
        hx * abs(A[0, 0] * wx + A[0, 1] * wy + A[0, 2] * wz)
        + hy * abs(A[1, 0] * wx + A[1, 1] * wy + A[1, 2] * wz)
        + hz * abs(A[2, 0] * wx + A[2, 1] * wy + A[2, 2] * wz)
    )
    return q, L


@numba.njit(cache=True, nogil=True, inline="always", fastmath=_FM)
def _centre_terms(soa, lev, t, cx, cy, cz, hx, hy, hz, A):  # pragma: no cover - compiled
    """:func:`_q_and_l` for ``d = c - s_t`` and the gathered cell ``t``."""
    return _q_and_l(
        cx - soa[lev, 0, t], cy - soa[lev, 1, t], cz - soa[lev, 2, t],
        soa[lev, 3, t], soa[lev, 4, t], soa[lev, 5, t], soa[lev, 6, t], soa[lev, 7, t], soa[lev, 8, t], hx, hy, hz, A,
    )


@numba.njit(cache=True, nogil=True, fastmath=_FM)
def _block_keep_given(soa, lev, n, npad, cx, cy, cz, hx, hy, hz, A, flag, keep, U):  # pragma: no cover - compiled
    """:func:`_block_keep` with ``U`` given (the leaf hints'): one pass, no square roots.

    The test is pass 2 of :func:`_block_keep` with the slack
    ``1e-8 (|U| + 3 R + 2 |r| + 1)``: where the test is close (``lo ~ U + r``)
    it is at least :func:`_block_keep`'s ``1e-8 (up + R + |r| + 1)``, as ``up <=
    sqrt(q) + R <= lo + 2 R``, and like it far above the rounding of the values
    compared. (The leaves' parents take the two-pass test: :func:`_lower` reads its ``q`` and ``L``.)
    """
    for t in range(npad):
        q, L = _centre_terms(soa, lev, t, cx, cy, cz, hx, hy, hz, A)
        Rj = soa[lev, 10, t]
        rj = soa[lev, 9, t]
        tau = U + rj + 1e-8 * (abs(U) + 3.0 * Rj + 2.0 * abs(rj) + 1.0)
        tr = tau + Rj
        flag[t] = 1.0 if (tau >= 0.0) & (q - 2.0 * L <= tau * tau) & (q <= tr * tr) else 0.0
    return _kept_positions(flag, n, keep)


@numba.njit(cache=True, nogil=True, fastmath=_FM)
def _block_keep(soa, lev, n, cx, cy, cz, hx, hy, hz, A, qc, lin, sl, hi, keep, uh, fast):  # pragma: no cover - compiled
    """Positions ``t`` (increasing) of the gathered cells that may win somewhere in a block; returns their count.

    Pass 1 (one contiguous loop, vectorised): ``q`` and ``L`` at the block
    centre and ``hi_t = up_t - r_t + slack_t`` with one square root per cell;
    ``U = min hi``. Pass 2 keeps ``t`` if ``lo_t - r_t - slack_t <= U`` in a
    squared form that needs no square root. ``q``, ``L`` and the slack stay in
    ``qc``, ``lin``, ``sl`` for :func:`_lower`. (A loop that writes more than
    about 6 arrays is not vectorised at all: LLVM's runtime alias checks exceed
    their budget; so ``p`` is left to :func:`_lower`.)
    """
    # The vector loops run to a multiple of 16 (LLVM's vectorised body) so that no scalar
    # remainder loop is left; the padding columns of the scratch hold finite stale values whose
    # results are never read (U and the kept list only look at t < n).
    npad = (n + 15) & -16
    if fast and uh < np.inf:
        return _block_keep_given(soa, lev, n, npad, cx, cy, cz, hx, hy, hz, A, hi, keep, uh)
    for t in range(npad):
        q, L = _centre_terms(soa, lev, t, cx, cy, cz, hx, hy, hz, A)
        Rj = soa[lev, 10, t]
        rj = soa[lev, 9, t]
        # up = sqrt(q + 2L + R^2) >= |x - s_j| on the block (engine notes). It is also <= sqrt(q) + R
        # (L <= sqrt(q) R by Cauchy-Schwarz in the M_j inner product), so the notes' min with
        # sqrt(q) + R is not needed. The slack (>= the notes' 1e-8 (sqrt(q) + R + |r| + 1)) covers
        # the rounding of this whole pass (~1e-13 relative even for condition numbers ~1e4).
        up = np.sqrt(q + 2.0 * L + Rj * Rj)
        s_ = 1e-8 * (up + Rj + abs(rj) + 1.0)
        hi[t] = up - rj + s_
        sl[t] = s_
        qc[t] = q
        lin[t] = L
    U = min(_vmin(hi, n), uh)
    if n >= _OCTANT_MIN:
        U = min(U, _octant_bound(soa, lev, n, cx, cy, cz, hx, hy, hz, A, hi))
    for t in range(npad):
        # lo_t - r_t - slack_t <= U  <=>  lo_t <= tau := U + r_t + slack_t, and lo_t is the max of
        # sqrt(q) - R and sqrt(max(q - 2L, 0)) (notes), both compared without square roots:
        #   sqrt(max(q - 2L, 0)) <= tau  <=>  tau >= 0 and q - 2L <= tau^2
        #   sqrt(q) - R <= tau           <=>  q <= (tau + R)^2          (given tau >= 0, R >= 0)
        # Squaring changes the rounding by ~1e-16 relative, far below the slack: every cell that
        # the square-root form keeps is kept here too (the slack only ever keeps more).
        tau = U + soa[lev, 9, t] + sl[t]
        tr = tau + soa[lev, 10, t]
        q = qc[t]
        hi[t] = 1.0 if (tau >= 0.0) & (q - 2.0 * lin[t] <= tau * tau) & (q <= tr * tr) else 0.0
    return _kept_positions(hi, n, keep)


@numba.njit(cache=True, nogil=True, inline="always")
def _kept_positions(flag, n, keep):  # pragma: no cover - compiled
    """``keep[:m]`` = the positions ``t < n`` with ``flag[t] != 0``, increasing; returns ``m``."""
    m = 0
    for t in range(n):
        keep[m] = t
        m += flag[t] != 0.0
    return m


@numba.njit(cache=True, nogil=True)
def _lower(soa, ids, Gl, lev, keep, m, cx, cy, cz, A, qc, p, lin, sl, low, err):  # pragma: no cover - compiled
    """For the kept positions ``t = keep[:m]`` of a leaf (centre ``c``): ``low[t]``, ``p[:, t]`` and ``err[t]``.

    ``low[t] = lo_t - r_t - slack_t`` (engine notes) bounds f_t from below on the
    leaf; ``p[k, t] = A[k] . M_t (c - s_t)``, as in :func:`_block_keep` (two-pass:
    its ``q``, ``L`` and slack are read from ``qc``, ``lin``, ``sl``).
    ``err[t]`` bounds |f~ - f| for the float32 value f~ that
    :func:`_leaf_lattice` computes at any site of the leaf (inf: float32 could
    overflow, use float64). Why it is safe: q = q0 + sum_k coef_k T[k, v] is
    evaluated from coefficients rounded to float32 (T is exact in float32: small
    multiples of 1/4) as a sum of 10 terms; any evaluation order, with or without
    fused multiply-adds, rounds each term at most 11 times (coefficient, product,
    9 sums) by a factor (1 + d), |d| <= u = 2^-24, so |q~ - q| <= 11.01 u S with
    S = sum_k |coef_k| max_v |T[k, v]| >= the sum of |terms| (Higham's gamma_n).
    E = 20 u S leaves room for the float64 errors of q0, p, G (~1e-13 S); + 1e-37
    covers float32 underflow. The square root: |sqrt(a) - sqrt(b)| = |a - b| /
    (sqrt(a) + sqrt(b)) <= min(sqrt(E), E / sqrt(q)) and sqrt(q) >= lo_t on the
    leaf, so that error is <= E / max(lo_t, sqrt(E)). Rounding the square root, r
    and the difference adds <= u (sqrt(q~) + 2 |r| + |f~|) <= 2 u (1 + u)
    (sqrt(S) + sqrt(E) + |r|), as q~ <= S + E. ``err`` doubles the sum and adds
    1e-12 of the scale, so that a site decided in float32 has a real gap above
    the brute force's own float64 rounding too.
    """
    for u in range(m):
        t = keep[u]
        dx = cx - soa[lev, 0, t]
        dy = cy - soa[lev, 1, t]
        dz = cz - soa[lev, 2, t]
        wx, wy, wz = _metric_times(soa, lev, t, dx, dy, dz)
        p0 = A[0, 0] * wx + A[0, 1] * wy + A[0, 2] * wz
        p1 = A[1, 0] * wx + A[1, 1] * wy + A[1, 2] * wz
        p2 = A[2, 0] * wx + A[2, 1] * wy + A[2, 2] * wz
        p[0, t] = p0
        p[1, t] = p1
        p[2, t] = p2
        q = qc[t]
        l2 = q - 2.0 * lin[t]
        l2 = l2 if l2 > 0.0 else 0.0
        Rt = soa[lev, 10, t]
        rt = soa[lev, 9, t]
        lo = max(np.sqrt(q) - Rt, np.sqrt(l2))
        low[t] = lo - rt - sl[t]
        # S = |q| + sum_k |p_k| Tmax[k] + C_t with Tmax[k] = max_v |T[k, v]| and C_t = sum of
        # |G entries| Tmax (column 6 of Gl, from _run_tree); sum_k |p_k| Tmax[k] = 2 L, as the
        # leaf's half-extents (lattice mode) are Tmax[k] / 2 (L's rounding,
        # ~1e-16 relative, is covered by E's margin)
        S = q + 2.0 * lin[t] + Gl[ids[lev, t], 6]
        E = 20.0 * _U32 * S + 1e-37
        sS = np.sqrt(S)
        sE = 0.0011 * sS + 1e-18  # >= sqrt(E), as sqrt(20 u) = 0.001092...
        e = 2.0 * (E / max(low[t] + rt, sE) + 2.0 * _U32 * (1.0 + _U32) * (sS + sE + abs(rt)))
        e += 1e-12 * (sS + abs(rt) + 1.0)
        err[t] = e if (S <= _MAX_S32 and abs(rt) <= _MAX_S32) else np.inf


@numba.njit(cache=True, nogil=True)
def _take(soa, ids, lev, keep, m, Rtab):  # pragma: no cover - compiled
    """The kept cells' fields from level ``lev`` to ``lev + 1`` (with the radii ``R`` of the level below)."""
    for u in range(m):
        t = keep[u]
        j = ids[lev, t]
        ids[lev + 1, u] = j
        for f in range(10):
            soa[lev + 1, f, u] = soa[lev, f, t]
        soa[lev + 1, 10, u] = Rtab[lev + 2, j]


@numba.njit(cache=True, nogil=True)
def _sort_by(low, keep, m, order):  # pragma: no cover - compiled
    """``order[:m]`` = ``keep[:m]`` sorted by ``low`` (insertion sort: lists are short)."""
    for u in range(m):
        x = keep[u]
        lx = low[x]
        v = u - 1
        while v >= 0 and low[order[v]] > lx:
            order[v + 1] = order[v]
            v -= 1
        order[v + 1] = x


_U32 = 2.0**-24  # unit roundoff of float32
_MAX_S32 = 1e30  # a leaf whose float32 terms could exceed this (overflow) is evaluated in float64 only


@numba.njit(cache=True, nogil=True, inline="always")
def _input_index(orig, c):  # pragma: no cover - compiled
    """The input index of the engine's cell ``c`` (``orig`` empty: the input is in the engine's order)."""
    return orig[c] if orig.shape[0] else c


@numba.njit(cache=True, nogil=True)
def _site_exact(v, ids, soa, lev, order, m, work, T, Gl, orig):  # pragma: no cover - compiled
    """Exact (float64) cell of leaf site ``v``: candidates in increasing ``low``, ties to the lowest input index ``orig``."""
    best = np.inf
    lab = _NO_LABEL
    lab_o = _NO_LABEL
    for u in range(m):
        t = order[u]
        if work[0, t] > best:  # work[0, t] <= f_t on the whole leaf: t (and every later one) can neither win nor tie
            break
        c = ids[lev, t]
        q = (
            work[2, t] + work[3, t] * T[0, v] + work[4, t] * T[1, v] + work[5, t] * T[2, v] + Gl[c, 0] * T[3, v]
            + Gl[c, 3] * T[4, v] + Gl[c, 5] * T[5, v] + Gl[c, 1] * T[6, v] + Gl[c, 2] * T[7, v] + Gl[c, 4] * T[8, v]
        )
        q = q if q > 0.0 else 0.0
        f = np.sqrt(q) - soa[lev, 9, t]
        oc = _input_index(orig, c)
        if f < best or (f == best and oc < lab_o):
            best = f
            lab = c
            lab_o = oc
    return lab


@numba.njit(cache=True, nogil=True, fastmath=_FM)
def _leaf_lattice(
    slab, base, sj, sk, lx, ly, lz, ids, soa, lev, order, m, work, T, T32, Gl, b1A, b2A, b1B, b2B, qv, lA, lB, screen, orig
):  # pragma: no cover - compiled
    """Exact labels of the ``lx * ly * lz`` sites of a leaf: site ``(i, j, k)`` gets ``slab[base + k sk + j sj + i] = orig[c] + 1``
    (``c + 1`` where ``orig`` is empty).

    The float32 screen (see the engine notes): every candidate, in increasing
    lower bound, is evaluated in float32 (8 sites per AVX2 instruction), keeping
    per site the best value ``b1``, its cell, and the second best ``b2``. Each
    float32 value is within ``work[1, t]`` (see :func:`_lower`) of the real one; a site
    with ``b2 - b1 > 2 max err`` has a unique winner by more than all the rounding
    (ours and the brute force's), so its float32 label is exact. The others
    (near ties, ~1e-3 of the sites) are evaluated again in float64 by
    :func:`_site_exact`, as is every site when ``screen`` is off or when float32
    could overflow. ``work`` rows: low, err, q, p (3) as :func:`_lower` left
    them. Scratch (one array each: LLVM does not vectorise a loop that writes
    two rows of one array): ``b1A``, ``b2A``, ``b1B``, ``b2B``, ``qv`` float32,
    ``lA``, ``lB`` int32; updates go to the B buffers, which then swap roles with
    the A buffers (an in-place update makes LLVM emit masked stores). ``G`` comes
    from ``Gl`` by cell.
    """
    nv = T.shape[1]
    inf32 = np.float32(np.inf)
    zero32 = np.float32(0.0)
    pad32 = np.float32(1.0 + 1e-5)
    tiny32 = np.float32(1e-30)
    emax = 0.0
    exact = not screen
    for u in range(0 if exact else m):
        t = order[u]
        e = work[1, t]
        if u > 0:
            # Stop once work[0, t] > max_v b1(v) + emax: work[0, t] <= f_t(x) on the whole leaf and
            # b1(v) + emax >= the real value of the current best at v, so t (and every later one)
            # is strictly worse than the current best everywhere and changes neither a label nor a
            # near-tie test. Tested as "no site has b1 >= thr32" with thr32 <= work[0, t] - emax (the
            # pad exceeds the rounding of the float32 conversion).
            thr32 = np.float32(work[0, t] - emax)
            thr32 = thr32 - abs(thr32) * np.float32(1e-6) - np.float32(1e-30)
            above = np.int32(0)
            for v in range(nv):
                above = np.int32(above + np.int32(b1A[v] >= thr32))
            if above == 0:
                break
        if not e < np.inf:  # float32 could overflow: float64 for every site
            exact = True
            break
        emax = max(emax, e)
        c = ids[lev, t]
        q0 = work[2, t]
        p0 = work[3, t]
        p1 = work[4, t]
        p2 = work[5, t]
        g00 = Gl[c, 0]
        g01 = Gl[c, 1]
        g02 = Gl[c, 2]
        g11 = Gl[c, 3]
        g12 = Gl[c, 4]
        g22 = Gl[c, 5]
        rc = soa[lev, 9, t]
        cq = np.float32(q0)
        c0 = np.float32(p0)
        c1 = np.float32(p1)
        c2 = np.float32(p2)
        c3 = np.float32(g00)
        c4 = np.float32(g11)
        c5 = np.float32(g22)
        c6 = np.float32(g01)
        c7 = np.float32(g02)
        c8 = np.float32(g12)
        r32 = np.float32(rc)
        c32 = np.int32(c)
        if u == 0:
            for v in range(nv):
                # the sum as a tree (shorter dependency chains than one chain of 9 multiply-adds)
                q = ((cq + c0 * T32[0, v]) + (c1 * T32[1, v] + c2 * T32[2, v])) + (
                    (c3 * T32[3, v] + c4 * T32[4, v]) + (c5 * T32[5, v] + c6 * T32[6, v])
                    + (c7 * T32[7, v] + c8 * T32[8, v])
                )
                q = q if q > zero32 else zero32
                qv[v] = q
            for v in range(nv):  # two loops: LLVM vectorises these, not the fused one
                b1A[v] = np.sqrt(qv[v]) - r32
                b2A[v] = inf32
                lA[v] = c32
        else:
            # Screen without square roots: with tau = fl(b2 + r~), a site where tau < 0 or
            # q~ > tau^2 (1 + 1e-5) + 1e-30 has sqrt(q~) rounded > the real b2 + r~ (the pad exceeds
            # the roundings of tau, tau^2 and the square root), so f~ >= b2 there (rounding is
            # monotonic and b2 is a float32): t changes neither b1, b2 nor the label. Only
            # candidates that pass somewhere go through the square roots.
            cnt = np.int32(0)
            for v in range(nv):
                q = ((cq + c0 * T32[0, v]) + (c1 * T32[1, v] + c2 * T32[2, v])) + (
                    (c3 * T32[3, v] + c4 * T32[4, v]) + (c5 * T32[5, v] + c6 * T32[6, v])
                    + (c7 * T32[7, v] + c8 * T32[8, v])
                )
                q = q if q > zero32 else zero32
                qv[v] = q
                tau = b2A[v] + r32
                cnt = np.int32(cnt + np.int32((tau >= zero32) & (q <= tau * tau * pad32 + tiny32)))
            if cnt == 0:
                continue
            for v in range(nv):
                f = np.sqrt(qv[v]) - r32
                b = b1A[v]
                lv = lA[v]
                b1B[v] = min(f, b)
                b2B[v] = min(b2A[v], max(f, b))
                lB[v] = c32 if f < b else lv
            b1A, b1B = b1B, b1A
            b2A, b2B = b2B, b2A
            lA, lB = lB, lA
    if exact:
        for v in range(nv):
            lA[v] = _site_exact(v, ids, soa, lev, order, m, work, T, Gl, orig)
    else:
        # decided: fl(b2 - b1) > mth32 >= 2 emax (1 + 1e-4) implies b2 - b1 > 2 emax (relative rounding <= u)
        mth32 = np.float32(2.0 * emax * 1.0001)
        namb = np.int32(0)
        for v in range(nv):
            namb = np.int32(namb + np.int32((b2A[v] - b1A[v]) <= mth32))
        if namb:
            for v in range(nv):
                if (b2A[v] - b1A[v]) <= mth32:
                    lA[v] = _site_exact(v, ids, soa, lev, order, m, work, T, Gl, orig)
    for kk in range(lz):
        for jj in range(ly):
            row = np.uint64(base + kk * sk + jj * sj)  # unsigned: no wraparound test, so plain stores
            v0 = np.uint64((kk * ly + jj) * lx)
            for ii in range(lx):
                slab[row + np.uint64(ii)] = _input_index(orig, lA[v0 + np.uint64(ii)]) + 1


@numba.njit(cache=True, nogil=True)
def _leaf_points(out, b, X, bstart, ids, soa, order, m, low):  # pragma: no cover - compiled
    """Exact labels of the points of bucket ``b`` (rows ``bstart[b]:bstart[b+1]`` of ``X``; cells in the input order)."""
    for a in range(bstart[b], bstart[b + 1]):
        x0, x1, x2 = X[a, 0], X[a, 1], X[a, 2]
        best = np.inf
        lab = _NO_LABEL
        for u in range(m):
            t = order[u]
            if low[t] > best:
                break
            dx = x0 - soa[0, t]
            dy = x1 - soa[1, t]
            dz = x2 - soa[2, t]
            q = (
                soa[3, t] * dx * dx + soa[6, t] * dy * dy + soa[8, t] * dz * dz
                + 2.0 * (soa[4, t] * dx * dy + soa[5, t] * dx * dz + soa[7, t] * dy * dz)
            )
            f = np.sqrt(max(q, 0.0)) - soa[9, t]
            c = ids[t]
            if f < best or (f == best and c < lab):
                best = f
                lab = c
        out[a] = lab + 1


@numba.njit(cache=True, nogil=True)
def _box_count(sat, dv, ix, iy, iz, sxy, sz):  # pragma: no cover - compiled
    """Count of the summed-volume table ``sat`` over sites ``[ix, ix+sxy) x [iy, iy+sxy) x [iz, iz+sz)``.

    ``sat`` counts per bucket of ``dv`` sites a side (points mode: points per
    bucket, ``dv = 1``; a masked lattice: masked leaves, ``dv`` = the leaf size).
    """
    nz, ny, nx = sat.shape[0] - 1, sat.shape[1] - 1, sat.shape[2] - 1
    x1, y1, z1 = min((ix + sxy + dv - 1) // dv, nx), min((iy + sxy + dv - 1) // dv, ny), min((iz + sz + dv - 1) // dv, nz)
    ix, iy, iz = ix // dv, iy // dv, iz // dv
    return (
        sat[z1, y1, x1] - sat[iz, y1, x1] - sat[z1, iy, x1] - sat[z1, y1, ix]
        + sat[iz, iy, x1] + sat[iz, y1, ix] + sat[z1, iy, ix] - sat[iz, iy, ix]
    )


@numba.njit(cache=True, nogil=True)
def _box_full(sat, dv, ix, iy, iz, sxy, sz):  # pragma: no cover - compiled
    """Whether every bucket of the block (as :func:`_box_count` clips it) is counted: a fully unmasked block."""
    nz, ny, nx = sat.shape[0] - 1, sat.shape[1] - 1, sat.shape[2] - 1
    x1, y1, z1 = min((ix + sxy + dv - 1) // dv, nx), min((iy + sxy + dv - 1) // dv, ny), min((iz + sz + dv - 1) // dv, nz)
    return _box_count(sat, dv, ix, iy, iz, sxy, sz) == (x1 - ix // dv) * (y1 - iy // dv) * (z1 - iz // dv)


@numba.njit(cache=True, nogil=True)
def _fill_block(slab, base, sj, sk, lx, ly, lz, label):  # pragma: no cover - compiled
    """``slab[base + k sk + j sj + i] = label`` for the block's ``lx * ly * lz`` sites."""
    lab = np.int32(label)
    for k in range(lz):
        for j in range(ly):
            row = np.uint64(base + k * sk + j * sj)
            for i in range(lx):
                slab[row + np.uint64(i)] = lab


@numba.njit(cache=True, nogil=True)
def _site(o, A, tx, ty, tz):  # pragma: no cover - compiled
    cx = o[0] + tx * A[0, 0] + ty * A[1, 0] + tz * A[2, 0]
    cy = o[1] + tx * A[0, 1] + ty * A[1, 1] + tz * A[2, 1]
    cz = o[2] + tx * A[0, 2] + ty * A[1, 2] + tz * A[2, 2]
    return cx, cy, cz


@numba.njit(cache=True, nogil=True, inline="always")
def _lattice_coords(S, j, o, Ainv):  # pragma: no cover - compiled
    """Seed ``j``'s lattice coordinates ``(s_j - o) A^-1`` (x y z, in sites)."""
    dx, dy, dz = S[j, 0] - o[0], S[j, 1] - o[1], S[j, 2] - o[2]
    return (
        dx * Ainv[0, 0] + dy * Ainv[1, 0] + dz * Ainv[2, 0],
        dx * Ainv[0, 1] + dy * Ainv[1, 1] + dz * Ainv[2, 1],
        dx * Ainv[0, 2] + dy * Ainv[1, 2] + dz * Ainv[2, 2],
    )


@numba.njit(cache=True, nogil=True)
def _bin_seeds(S, Mu, r, Rleaf, o, Ainv, leaf, nb):  # pragma: no cover - compiled
    """The seeds by leaf bin of the lattice, one bin of margin around it: ``(start (nbins + 1,), F (m, 12))``.

    Bin ``(kz, ky, kx)`` (stored at ``+1``) holds the seeds whose lattice
    coordinates ``(s - o) A^-1`` fall in leaf ``k``'s cells ``[k leaf - 1/2,
    (k + 1) leaf - 1/2)``; seeds beyond the margin are left out. Row ``u`` of
    ``F`` (bin order, bin ``b`` at ``start[b]:start[b + 1]``) holds a seed's
    ``sx sy sz m00 m01 m02 m11 m12 m22 r R bin_x``.
    """
    n = S.shape[0]
    bx, by, bz = nb[2] + 2, nb[1] + 2, nb[0] + 2
    key = np.empty(n, np.int64)
    kxs = np.empty(n, np.int64)
    count = np.zeros(bx * by * bz + 1, np.int64)
    for j in range(n):
        tx, ty, tz = _lattice_coords(S, j, o, Ainv)
        kx = np.floor((tx + 0.5) / leaf) + 1
        ky = np.floor((ty + 0.5) / leaf) + 1
        kz = np.floor((tz + 0.5) / leaf) + 1
        if 0 <= kx < bx and 0 <= ky < by and 0 <= kz < bz:
            key[j] = (int(kz) * by + int(ky)) * bx + int(kx)
            kxs[j] = int(kx)
            count[key[j] + 1] += 1
        else:
            key[j] = -1
    for b in range(bx * by * bz):
        count[b + 1] += count[b]
    F = np.empty((count[-1], 12))
    fill = count[:-1].copy()
    for j in range(n):
        if key[j] >= 0:
            u = fill[key[j]]
            fill[key[j]] += 1
            F[u, 0], F[u, 1], F[u, 2] = S[j, 0], S[j, 1], S[j, 2]
            for f in range(6):
                F[u, 3 + f] = Mu[j, f]
            F[u, 9] = r[j]
            F[u, 10] = Rleaf[j]
            F[u, 11] = kxs[j]
    return count, F


@numba.njit(cache=True, nogil=True, inline="always")
def _hint_row(orow, F, u0, u1, bxr, byr, bzr, stx, sty, stz, A, hx, hy, hz, span, x0, x1):  # pragma: no cover
    """:func:`_leaf_hints` for binned seeds ``u0:u1``: each lowers the hints of leaves ``bin - 1 +- span`` in ``[x0, x1)``."""
    for u in range(u0, u1):
        ex = bxr - F[u, 0]
        ey = byr - F[u, 1]
        ez = bzr - F[u, 2]
        m00, m01, m02, m11, m12, m22 = F[u, 3], F[u, 4], F[u, 5], F[u, 6], F[u, 7], F[u, 8]
        rj = F[u, 9]
        Rj = F[u, 10]
        k0 = int(F[u, 11]) - 1
        for kx in range(max(k0 - span, x0), min(k0 + span + 1, x1)):
            q, L = _q_and_l(ex + kx * stx, ey + kx * sty, ez + kx * stz, m00, m01, m02, m11, m12, m22, hx, hy, hz, A)
            v2 = q + 2.0 * L + Rj * Rj
            cur = orow[kx]
            b = cur + rj
            if b >= 0.0 and v2 >= b * b:  # up - r >= the current hint already (the slack only adds)
                continue
            up = np.sqrt(v2)
            v = up - rj + 1e-8 * (up + Rj + abs(rj) + 1.0)
            if v < cur:
                orow[kx] = v


@numba.njit(cache=True, nogil=True)
def _leaf_hints(w, nw, start, F, o, A, leaf, hx, hy, hz, lmask, out):  # pragma: no cover - compiled
    """Upper bounds of ``min_i f_i`` on the leaves of z rows ``w, w + nw, ...`` (engine notes: leaf hints).

    ``out[kz, ky, kx] = min_j up_j - r_j + slack_j`` over the seeds binned in the
    leaf's bin and its 6 face neighbours, or its 26 neighbours if those hold
    none (fields ``F`` from :func:`_bin_seeds`), with
    ``up_j`` the block bound of :func:`_block_keep` on the leaf's box; ``inf``
    if no seed is near (:func:`_fill_hints` then gives one), ``-inf`` for
    masked-out leaves (nothing there is labelled). A row of leaves takes the
    seeds of 5 rows of bins, one pass each (:func:`_hint_row`).
    """
    nlz, nly, nlx = out.shape
    bx, by = nlx + 2, nly + 2
    masked = lmask.size > 1
    c0 = 0.5 * (leaf - 1)
    # the step between neighbouring leaves along x
    stx, sty, stz = leaf * A[0, 0], leaf * A[0, 1], leaf * A[0, 2]
    for kz in range(w, nlz, nw):
        for ky in range(nly):
            # the row's leaves from the first to the last unmasked one; the others get -inf
            x0, x1 = 0, nlx
            if masked:
                while x0 < nlx and not lmask[kz, ky, x0]:
                    x0 += 1
                while x1 > x0 and not lmask[kz, ky, x1 - 1]:
                    x1 -= 1
            for kx in range(nlx):
                out[kz, ky, kx] = np.inf if x0 <= kx < x1 else -np.inf
            if x0 == x1:
                continue
            bxr, byr, bzr = _site(o, A, c0, ky * leaf + c0, kz * leaf + c0)  # centre of leaf kx = 0
            # the leaf's own bin and its 6 face neighbours: the row of bins through the leaves
            # (each seed gives 3 leaves), and the 4 rows beside it (each seed gives 1 leaf)
            for nb_ in range(5):
                bz_ = kz + 1 + (nb_ == 1) - (nb_ == 2)
                by_ = ky + 1 + (nb_ == 3) - (nb_ == 4)
                row = (bz_ * by + by_) * bx
                span = 1 if nb_ == 0 else 0
                _hint_row(out[kz, ky], F, start[row + x0 + 1 - span], start[row + x1 + 1 + span], bxr, byr, bzr,
                          stx, sty, stz, A, hx, hy, hz, span, x0, x1)
            for kx in range(x0, x1):  # no seed in the 7 bins (about 3 % of the leaves): the 27
                if out[kz, ky, kx] == np.inf:
                    for bz_ in range(kz, kz + 3):
                        for by_ in range(ky, ky + 3):
                            row = (bz_ * by + by_) * bx
                            _hint_row(out[kz, ky], F, start[row + kx], start[row + kx + 3], bxr, byr, bzr,
                                      stx, sty, stz, A, hx, hy, hz, 1, kx, kx + 1)
            if masked:
                for kx in range(x0 + 1, x1 - 1):
                    if not lmask[kz, ky, kx]:
                        out[kz, ky, kx] = -np.inf


@numba.njit(cache=True, nogil=True)
def _max_pool2(a):  # pragma: no cover - compiled
    """Max over 2 x 2 x 2 blocks of ``a`` (z, y, x), the last block of an odd axis being the one entry left."""
    nz, ny, nx = a.shape
    out = np.full(((nz + 1) // 2, (ny + 1) // 2, (nx + 1) // 2), -np.inf)
    for k in range(nz):
        for j in range(ny):
            for i in range(nx):
                v = a[k, j, i]
                if v > out[k // 2, j // 2, i // 2]:
                    out[k // 2, j // 2, i // 2] = v
    return out


@numba.njit(cache=True, nogil=True)
def _fill_hints(h, step):  # pragma: no cover - compiled
    """Give leaves without a hint (``inf``: no seed in the 27 bins, as on grids much finer than the seeds) one from a neighbour.

    ``f_j(x + d) <= f_j(x) + |d|_{M_j}`` (triangle inequality), and a step of one leaf along
    lattice axis ``k`` has ``|d|_{M_j} = leaf sqrt(G_j[k, k]) <= step[k]`` for every cell, so
    a face neighbour's hint plus ``step`` bounds ``min_i f_i`` on the leaf too. Sweeps go
    forwards and backwards in turn (each carries a bound across the whole grid in its
    direction) until no leaf changes; masked-out leaves (``-inf``) are no source.
    """
    nz, ny, nx = h.shape
    changed = True
    sweep = 0
    while changed:
        changed = False
        back = sweep % 2 == 1
        sweep += 1
        for k_ in range(nz):
            k = nz - 1 - k_ if back else k_
            for j_ in range(ny):
                j = ny - 1 - j_ if back else j_
                for i_ in range(nx):
                    i = nx - 1 - i_ if back else i_
                    if h[k, j, i] != np.inf:
                        continue
                    best = np.inf
                    for a in range(6):
                        dk = (a == 0) - (a == 1)
                        dj = (a == 2) - (a == 3)
                        di = (a == 4) - (a == 5)
                        kk, jj, ii = k + dk, j + dj, i + di
                        if 0 <= kk < nz and 0 <= jj < ny and 0 <= ii < nx:
                            v = h[kk, jj, ii]
                            if -np.inf < v < np.inf:
                                st = step[2] if a < 2 else (step[1] if a < 4 else step[0])
                                best = min(best, v + st)
                    if best < np.inf:
                        h[k, j, i] = best
                        changed = True


def _hint_pyramid(
    S: np.ndarray, Mu: np.ndarray, r: np.ndarray, o: np.ndarray, A: np.ndarray, shape3: tuple[int, int, int],
    sxy: np.ndarray, hleaf: float, Rleaf: np.ndarray, Gl: np.ndarray, leaf_mask: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Leaf hints (:func:`_leaf_hints`) max-pooled to every level of the block tree: ``(values, offsets, dims)``.

    Level ``l`` (block size ``sxy[l]`` sites) has ``dims[l]`` = (z, y, x) blocks
    at ``values[offsets[l]:offsets[l + 1]]``; a block's entry bounds ``min_i f_i``
    at every site of its unmasked leaves (:func:`_hint`). ``leaf_mask``: the
    leaves that are labelled (None: all). No hints
    (empty arrays) where the labelled leaves hold fewer than ``_HINT_MIN_SEEDS``
    seeds each on average.
    """
    leaf = int(sxy[-1])
    nl = np.array([-(-s // leaf) for s in shape3], np.int64)
    Ai = np.linalg.inv(A)
    start, F = _bin_seeds(S, Mu, r, Rleaf, o, Ai, leaf, nl)
    lmask = np.ones((1, 1, 1), bool) if leaf_mask is None else np.ascontiguousarray(leaf_mask, dtype=bool)
    per_bin = np.diff(start).reshape(tuple(nl + 2))[1:-1, 1:-1, 1:-1]
    if per_bin[slice(None) if leaf_mask is None else lmask].mean() < _HINT_MIN_SEEDS:
        # a grid much finer than the seeds: the tree's own U is better
        return np.zeros(0), np.zeros(len(sxy) + 1, np.int64), np.zeros((len(sxy), 3), np.int64)
    h = np.empty(tuple(nl), np.float64)
    nw = min(default_workers(), int(nl[0]))
    run_workers(lambda w, k: _leaf_hints(w, k, start, F, o, A, leaf, hleaf, hleaf, hleaf, lmask, h), nw)
    if np.isposinf(h).any():
        step = leaf * np.sqrt(Gl[:, [0, 3, 5]].max(axis=0)) * (1.0 + 1e-12) + 1e-12  # x y z
        _fill_hints(h, step)
    levels = [h]
    for _ in range(len(sxy) - 1):
        levels.append(_max_pool2(levels[-1]))
    levels = levels[::-1]  # root first, as sxy
    dims = np.array([a.shape for a in levels], np.int64)
    off = np.concatenate([[0], np.cumsum([a.size for a in levels])]).astype(np.int64)
    return np.concatenate([a.ravel() for a in levels]), off, dims


@numba.njit(cache=True, nogil=True, inline="always")
def _hint(uhv, uoff, udim, lev, size, ix, iy, iz):  # pragma: no cover - compiled
    """The leaf hints' bound on the block of level ``lev`` (``size`` sites) at sites ``(ix, iy, iz)``; inf without hints."""
    if uhv.shape[0] == 0:
        return np.inf
    return uhv[uoff[lev] + ((iz // size) * udim[lev, 1] + iy // size) * udim[lev, 2] + ix // size]


@numba.njit(cache=True, nogil=True)
def _refine_worker(w, nw, borig, boff, bidx, cxy, cz_, hxy, hz, nch, shape, sat, sdv, o, A, S, Mu, r, Rl, Gl, cnt, tmp, corig, uhv, uoff, udim, clev):  # pragma: no cover
    """One breadth-first level for parents ``w, w + nw, ...``: candidate lists of their children.

    Child ``ch`` of parent ``b`` writes its list to ``tmp[boff[b] * nch + ch * len_b:]``,
    its count to ``cnt[b * nch + ch]`` (-1: outside the lattice or empty) and
    its origin to ``corig``.
    """
    nb = borig.shape[0]
    nz, ny, nx = shape[0], shape[1], shape[2]
    use_sat = sat.shape[0] > 1
    cap = 1
    for b in range(w, nb, nw):
        cap = max(cap, boff[b + 1] - boff[b])
    soa = np.zeros((1, _NF, cap + 16))  # + 16: padding for _block_keep's vector loops
    work = np.empty((4, cap + 16))
    keep = np.empty(cap, np.int64)
    for b in range(w, nb, nw):
        p0 = boff[b]
        pn = boff[b + 1] - p0
        _gather(bidx, p0, pn, S, Mu, r, Rl, soa[0])
        for ch in range(nch):
            ix = borig[b, 0] + (ch & 1) * cxy
            iy = borig[b, 1] + ((ch >> 1) & 1) * cxy
            iz = borig[b, 2] + ((ch >> 2) & 1) * cz_
            slot = b * nch + ch
            corig[slot, 0] = ix
            corig[slot, 1] = iy
            corig[slot, 2] = iz
            cnt[slot] = -1
            if ix >= nx or iy >= ny or iz >= nz:
                continue
            if use_sat and _box_count(sat, sdv, ix, iy, iz, cxy, cz_) == 0:
                continue
            cx, cy, cz = _site(o, A, ix + 0.5 * (cxy - 1), iy + 0.5 * (cxy - 1), iz + 0.5 * (cz_ - 1))
            uh = _hint(uhv, uoff, udim, clev, cxy, ix, iy, iz)
            m = _block_keep(soa, 0, pn, cx, cy, cz, hxy, hxy, hz, A, work[0], work[1], work[2], work[3], keep, uh, True)
            base = p0 * nch + ch * pn
            for u in range(m):
                tmp[base + u] = bidx[p0 + keep[u]]
            cnt[slot] = m


@numba.njit(cache=True, nogil=True)
def _descend_worker(
    slabs, out_grid, out_pts, torig, toff, tidx, sstart, sizes, sizesz, hxy, hz, sat, sdv, X, bstart,
    o, A, S, Mu, r, Rtab, Gl, T, T32, ids, soa, work, iwork, b32, l32, slab, screen, slab_w, keep_out, uhv, uoff, udim, orig,
):  # pragma: no cover - compiled
    """Depth-first from the task blocks down to the leaves, for the slabs ``slabs``.

    A slab is a row of task blocks with the same (y, z) origin and the same
    ``x // slab_w`` (``slab_w`` a multiple of the task size), in increasing x
    (tasks ``sstart[s]:sstart[s + 1]``). Scratch (``ids`` (levels, cap), ``soa``
    (levels, _NF, cap + 16), ``work`` (8, cap + 16), ``iwork`` (2, cap), ``b32``
    (5, sites per leaf) float32, ``l32`` (2, sites per leaf) int32 and the slab
    label buffer) belongs to the calling thread. Leaves are labelled in
    ``out_grid`` (lattice mode) or ``out_pts`` (points mode, ``X`` non-empty);
    slabs are disjoint parts of the output. Cells are numbered in the
    engine's order (:func:`_spatial_order`); the output gets ``orig[c] + 1``
    (``orig`` empty: the input was in that order, ``c + 1``).
    """
    nl = sizes.shape[0]
    shape_z = sat.shape[0] - 1 if X.shape[0] > 0 else out_grid.shape[0]
    shape_y = sat.shape[1] - 1 if X.shape[0] > 0 else out_grid.shape[1]
    shape_x = sat.shape[2] - 1 if X.shape[0] > 0 else out_grid.shape[2]
    points_mode = X.shape[0] > 0
    use_sat = sat.shape[0] > 1  # points mode, or a lattice with masked-out leaves (left 0)
    cnt = np.zeros(nl, np.int64)
    nxt = np.zeros(nl, np.int64)
    org = np.zeros((nl, 3), np.int64)
    low = work[0]
    hi = work[1]  # _block_keep's bounds, then _lower's float32 error bounds
    qc = work[2]
    pp = work[3:6]
    lin = work[6]
    sl = work[7]
    keep = iwork[0]
    order = iwork[1]
    b1A, b2A, b1B, b2B, qv = b32[0], b32[1], b32[2], b32[3], b32[4]
    lA, lB = l32[0], l32[1]
    # The leaves write their labels into the slab buffer in the output's row order, which
    # stays in L2 (_SLAB_SITES); the slab is copied out in rows at the end. Writing 4-voxel
    # rows straight into a large volume costs several ns/voxel in cache misses; a slab larger
    # than L2 (a whole row of tasks, 1 MiB at 256^3) about 1.5 ns/voxel more; copying out
    # rows of one 32-voxel task about 0.5 ns/voxel more than rows of 256.
    lx_, lz_ = sizes[nl - 1], sizesz[nl - 1]  # leaf size
    ly_ = lx_
    sxp = slab_w  # slab row length
    sy = sizes[0]  # slab rows per z plane
    of = out_grid.reshape(out_grid.size)
    for si in range(slabs.shape[0]):
        sl_ = slabs[si]
        tx0 = (torig[sstart[sl_], 0] // sxp) * sxp
        ty0, tz0 = torig[sstart[sl_], 1], torig[sstart[sl_], 2]
        ex = min(sxp, shape_x - tx0)
        ey = min(sy, shape_y - ty0)
        ez = min(sizesz[0], shape_z - tz0)
        if use_sat and not points_mode:
            if keep_out:  # skipped (masked-out) leaves keep the output's values
                _slab_rows(slab, of, tz0, ty0, tx0, ez, ey, ex, sy, sxp, shape_y, shape_x, False)
            else:
                slab[:] = 0  # skipped (masked-out) leaves stay 0
        for t0 in range(sstart[sl_], sstart[sl_ + 1]):
            p0 = toff[t0]
            pn = toff[t0 + 1] - p0
            for u in range(pn):
                ids[0, u] = tidx[p0 + u]
            _gather(ids[0], 0, pn, S, Mu, r, Rtab[1], soa[0])
            cnt[0] = pn
            nxt[0] = 0
            org[0, 0] = torig[t0, 0]
            org[0, 1] = torig[t0, 1]
            org[0, 2] = torig[t0, 2]
            lev = 0
            while lev >= 0:
                nch = 8 if sizesz[lev] > sizesz[lev + 1] else 4
                if nxt[lev] == nch:
                    lev -= 1
                    continue
                ch = nxt[lev]
                nxt[lev] += 1
                cxy = sizes[lev + 1]
                czz = sizesz[lev + 1]
                ix = org[lev, 0] + (ch & 1) * cxy
                iy = org[lev, 1] + ((ch >> 1) & 1) * cxy
                iz = org[lev, 2] + ((ch >> 2) & 1) * czz
                if ix >= shape_x or iy >= shape_y or iz >= shape_z:
                    continue
                if use_sat and _box_count(sat, sdv, ix, iy, iz, cxy, czz) == 0:
                    continue
                cx, cy, cz = _site(o, A, ix + 0.5 * (cxy - 1), iy + 0.5 * (cxy - 1), iz + 0.5 * (czz - 1))
                n_par = cnt[lev]
                is_leaf = lev + 1 == nl - 1
                uh = _hint(uhv, uoff, udim, lev + 1, cxy, ix, iy, iz)
                m = _block_keep(soa, lev, n_par, cx, cy, cz, hxy[lev + 1], hxy[lev + 1], hz[lev + 1], A, qc, lin, sl, hi, keep, uh, not is_leaf)  # leaves' parents: two passes (_lower reads q, L)
                if m == 1 and not points_mode and (not use_sat or _box_full(sat, sdv, ix, iy, iz, cxy, czz)):
                    # One survivor: it is strictly better than every dropped cell everywhere in the
                    # block (engine notes), so it owns every site, ties included; no descent.
                    _fill_block(slab, ((iz - tz0) * sy + (iy - ty0)) * sxp + ix - tx0, sxp, sy * sxp, cxy, cxy, czz,
                                _input_index(orig, ids[lev, keep[0]]) + 1)
                    continue
                if is_leaf:
                    _lower(soa, ids, Gl, lev, keep, m, cx, cy, cz, A, qc, pp, lin, sl, low, hi)
                    _sort_by(low, keep, m, order)
                    if points_mode:
                        b = (iz * shape_y + iy) * shape_x + ix
                        _leaf_points(out_pts, b, X, bstart, ids[lev], soa[lev], order, m, low)
                    else:
                        base = ((iz - tz0) * sy + (iy - ty0)) * sxp + ix - tx0
                        _leaf_lattice(
                            slab, base, sxp, sy * sxp, lx_, ly_, lz_, ids, soa, lev, order, m, work, T, T32, Gl,
                            b1A, b2A, b1B, b2B, qv, lA, lB, screen, orig,
                        )
                else:
                    _take(soa, ids, lev, keep, m, Rtab)
                    lev += 1
                    cnt[lev] = m
                    nxt[lev] = 0
                    org[lev, 0] = ix
                    org[lev, 1] = iy
                    org[lev, 2] = iz
        if not points_mode:
            _slab_rows(slab, of, tz0, ty0, tx0, ez, ey, ex, sy, sxp, shape_y, shape_x, True)


@numba.njit(cache=True, nogil=True, inline="always")
def _slab_rows(slab, of, tz0, ty0, tx0, ez, ey, ex, sy, sxp, shape_y, shape_x, to_out):  # pragma: no cover - compiled
    """Copy a slab's ``ez x ey x ex`` sites to the flat output ``of`` (``to_out``) or from it."""
    for k in range(ez):
        for j in range(ey):
            dst = ((tz0 + k) * shape_y + ty0 + j) * shape_x + tx0
            src = (k * sy + j) * sxp
            if to_out:
                for i in range(ex):
                    of[np.uint64(dst + i)] = slab[np.uint64(src + i)]  # unsigned: no wraparound test
            else:
                for i in range(ex):
                    slab[np.uint64(src + i)] = of[np.uint64(dst + i)]


@numba.njit(cache=True, nogil=True)
def _compact_children(tmp, off, cnt, nch):  # pragma: no cover - compiled
    """The children's candidate lists (child ``ch`` of parent ``b`` at ``tmp[off[b] * nch + ch * len_b:]``,
    ``cnt[b * nch + ch]`` long, -1: dropped) in CSR form: ``(kept child slots, offsets, int32 cells)``.

    Compiled: the NumPy form (repeat, arange, a gather over every list entry) took about 5 % of a
    library particle.
    """
    total = 0
    nk = 0
    for slot in range(cnt.shape[0]):
        if cnt[slot] >= 0:
            total += cnt[slot]
            nk += 1
    keep = np.empty(nk, np.int64)
    noff = np.empty(nk + 1, np.int64)
    idx = np.empty(total, np.int32)
    noff[0] = 0
    p = 0
    k = 0
    for b in range(off.shape[0] - 1):
        lb = off[b + 1] - off[b]
        for ch in range(nch):
            c = cnt[b * nch + ch]
            if c < 0:
                continue
            src = off[b] * nch + ch * lb
            for u in range(c):
                idx[p + u] = tmp[src + u]
            p += c
            keep[k] = b * nch + ch
            k += 1
            noff[k] = p
    return keep, noff, idx


@numba.njit(cache=True, nogil=True)
def _reorder_lists(idx, off, order):  # pragma: no cover - compiled
    """CSR lists ``(off, idx)`` taken in the order ``order``: ``(new offsets, int32 cells)``."""
    n = order.shape[0]
    noff = np.empty(n + 1, np.int64)
    noff[0] = 0
    for t in range(n):
        noff[t + 1] = noff[t] + off[order[t] + 1] - off[order[t]]
    out = np.empty(noff[n], np.int32)
    for t in range(n):
        a = off[order[t]]
        b = noff[t]
        for u in range(noff[t + 1] - b):
            out[b + u] = idx[a + u]
    return noff, out


_MAX_SITES = 2**34  # ~17 G sites: beyond this the int32 output alone needs > 64 GiB
_LEAF_3D = 4  # 4 x 4 x 4 = 64 sites per leaf in a 3D index space
_LEAF_2D = 16  # 16 x 16 = 256 sites per leaf in a 2D index space (images, plane sections)
_TASK = 32  # blocks of this size (index units) are the parallel tasks
_SLAB_SITES = 2**16  # slab buffer: at most this many sites (int32: 256 KiB, half a 512 KiB L2) unless one task is larger
_HINTS = True  # 3D lattices: leaf hints bound every block's min_i f_i from above (engine notes)
_HINT_MIN_SEEDS = 0.25  # ... if the labelled leaves hold at least this many seeds each on average
_F32_SCREEN = True  # leaves: float32 screen + float64 near ties (tests switch it off to compare)


@numba.njit(cache=True, nogil=True)
def _cells3(seeds, metrics):  # pragma: no cover - compiled
    """Seeds padded to ``(n, 3)`` and the unique metric entries ``(n, 6)`` (a 2D metric gets ``M_zz = 1``).

    Returns the index of the first non-symmetric and of the first not positive
    definite metric (Sylvester's criterion with a relative tolerance), or -1.
    """
    n, d = seeds.shape
    S = np.zeros((n, 3))
    Mu = np.zeros((n, 6))
    bad_sym = -1
    bad_pd = -1
    M = np.zeros((3, 3))
    for i in range(n):
        for a in range(3):
            for b in range(3):
                M[a, b] = 0.0
        M[2, 2] = 1.0
        scale = 0.0
        for a in range(d):
            S[i, a] = seeds[i, a]
            for b in range(d):
                M[a, b] = metrics[i, a, b]
                scale = max(scale, abs(M[a, b]))
        for a in range(d):
            for b in range(a + 1, d):
                if abs(M[a, b] - M[b, a]) > 1e-10 * scale and bad_sym < 0:
                    bad_sym = i
                M[a, b] = M[b, a] = 0.5 * (M[a, b] + M[b, a])
        m1 = M[0, 0]
        m2 = M[0, 0] * M[1, 1] - M[0, 1] * M[1, 0]
        det = (
            M[0, 0] * (M[1, 1] * M[2, 2] - M[1, 2] * M[2, 1])
            - M[0, 1] * (M[1, 0] * M[2, 2] - M[1, 2] * M[2, 0])
            + M[0, 2] * (M[1, 0] * M[2, 1] - M[1, 1] * M[2, 0])
        )
        s3 = scale if d == 3 else scale * max(scale, 1.0)
        if not (m1 > 0 and m2 > 1e-14 * scale * scale and det > 1e-14 * scale * s3) and bad_pd < 0:
            bad_pd = i
        Mu[i, 0] = M[0, 0]
        Mu[i, 1] = M[0, 1]
        Mu[i, 2] = M[0, 2]
        Mu[i, 3] = M[1, 1]
        Mu[i, 4] = M[1, 2]
        Mu[i, 5] = M[2, 2]
    return S, Mu, bad_sym, bad_pd


@numba.njit(cache=True, nogil=True)
def _tables(Mu, A, H, R, Gl, j0, j1):  # pragma: no cover - compiled
    """Per-cell tables of a lattice ``A`` (3, 3) for cells ``j0:j1``: ``R`` for every level's half-extents ``H`` (L, 3), and ``Gl``.

    ``Gl[j]`` holds the unique entries of ``G = A M_j A^T`` and
    ``R[l, j] = max |sum_k +-H[l, k] A[k]|_{M_j}`` over the box vertices (the
    norm is convex, so the maximum over the box is at a vertex); the squared
    norm of a vertex is ``sum_kl s_k s_l H_k H_l G_kl``. Padded by 1e-12 relative.
    """
    L = H.shape[0]
    M = np.empty((3, 3))
    pairs = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))
    for j in range(j0, j1):
        M[0, 0], M[0, 1], M[0, 2] = Mu[j, 0], Mu[j, 1], Mu[j, 2]
        M[1, 0], M[1, 1], M[1, 2] = Mu[j, 1], Mu[j, 3], Mu[j, 4]
        M[2, 0], M[2, 1], M[2, 2] = Mu[j, 2], Mu[j, 4], Mu[j, 5]
        for e in range(6):
            k, l = pairs[e]
            acc = 0.0
            for a in range(3):
                for b in range(3):
                    acc += A[k, a] * M[a, b] * A[l, b]
            Gl[j, e] = acc
        g00, g01, g02, g11, g12, g22 = Gl[j, 0], Gl[j, 1], Gl[j, 2], Gl[j, 3], Gl[j, 4], Gl[j, 5]
        for lv in range(L):
            h0, h1, h2 = H[lv, 0], H[lv, 1], H[lv, 2]
            a_ = h0 * h0 * g00 + h1 * h1 * g11 + h2 * h2 * g22
            b_ = 2.0 * h0 * h1 * g01
            c_ = 2.0 * h0 * h2 * g02
            e_ = 2.0 * h1 * h2 * g12
            q = a_ + max(max(b_ + c_ + e_, -b_ + c_ - e_), max(b_ - c_ - e_, -b_ - c_ + e_))
            R[lv, j] = np.sqrt(max(q, 0.0)) * (1.0 + 1e-12)


def _padded(g: "GBPD") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeds ``(n, 3)``, unique metric entries ``(n, 6)`` and offsets, padded to 3D; checks the metrics."""
    S, Mu, bad_sym, bad_pd = _cells3(g.seeds, g.metrics)
    if bad_sym >= 0:
        raise StereograinError(f"metric of cell {bad_sym} is not symmetric; symmetrise the metrics with (M + M^T) / 2")
    if bad_pd >= 0:
        raise StereograinError(f"metric of cell {bad_pd} is not positive definite; every M_i must be SPD")
    return S, Mu, g.offsets


def _level_sizes(shape3: tuple[int, int, int], leaf_xy: int, flat: bool) -> tuple[np.ndarray, np.ndarray]:
    """Block sizes (index units) from the root down to the leaf: ``(xy sizes, z sizes)``."""
    nz, ny, nx = shape3
    root = 2 * leaf_xy
    while root < max(nx, ny, 1 if flat else nz):
        root *= 2
    sxy, sz = [], []
    s = root
    while s >= leaf_xy:
        sxy.append(s)
        sz.append(1 if flat else s)
        s //= 2
    return np.array(sxy, np.int64), np.array(sz, np.int64)


@numba.njit(cache=True, nogil=True)
def _morton_keys(S, o, Ainv, w):  # pragma: no cover - compiled
    """Morton (z-order) keys of the seeds' lattice coordinates ``(s - o) A^-1`` in bins of ``w`` sites (10 bits a side)."""
    n = S.shape[0]
    key = np.empty(n, np.int64)
    for j in range(n):
        t = _lattice_coords(S, j, o, Ainv)
        k = np.int64(0)
        for a in range(3):
            b = np.int64(min(max(t[a] / w + 1.0, 0.0), 1023.0))
            for bit in range(10):
                k |= ((b >> bit) & 1) << (3 * bit + a)
        key[j] = k
    return key


def _spatial_order(S: np.ndarray, o: np.ndarray, A: np.ndarray, leaf: int) -> np.ndarray | None:
    """The engine's cell order on a 3D lattice (engine notes): the seeds in z-order of bins of two leaves.

    Returns a permutation ``(n,)`` int32, or None where the seeds are in that
    order already. Any order gives the same labels (ties go by the input
    index), so the sort need not be stable.
    """
    key = _morton_keys(S, o, np.linalg.inv(A), 2.0 * leaf)
    if np.all(key[1:] >= key[:-1]):
        return None
    return np.argsort(key).astype(np.int32)


def _run_tree(
    S: np.ndarray,
    Mu: np.ndarray,
    r: np.ndarray,
    o: np.ndarray,
    A: np.ndarray,
    shape3: tuple[int, int, int],
    leaf_xy: int,
    hpad: float,
    out_grid: np.ndarray,
    out_pts: np.ndarray,
    X: np.ndarray,
    bstart: np.ndarray,
    sat: np.ndarray,
    sdv: int = 1,
    keep_out: bool = False,
    leaf_mask: np.ndarray | None = None,
) -> None:
    """Label the lattice ``o + i A[0] + j A[1] + k A[2]`` over ``shape3 = (nz, ny, nx)`` (see the engine notes).

    ``sat`` (a summed-volume table, or ``(1, 1, 1)`` for none) skips empty
    blocks: of points per bucket in points mode (``X`` non-empty), or of
    masked leaves (buckets of ``sdv`` sites a side) in lattice mode, where the
    skipped sites are left 0 (``keep_out``: as they are in ``out_grid``).
    ``leaf_mask``: the lattice's labelled leaves, as ``sat`` counts them (for
    the leaf hints; None: all).
    """
    flat = shape3[0] == 1
    sxy, sz = _level_sizes(shape3, leaf_xy, flat)
    # the engine's cell c is input cell perm[c]; planes, 2D grids and points keep the input
    # order (a plane through a 3D diagram reads a few of its cells: sorting them all costs more)
    perm = None if flat or X.shape[0] else _spatial_order(S, o, A, leaf_xy)
    if perm is None:  # in order already: no renumbering
        perm = np.zeros(0, np.int32)
    else:
        S, Mu, r = S[perm], Mu[perm], r[perm]
    hxy = 0.5 * (sxy - 1) + hpad
    hz = np.zeros(len(sz)) if flat else 0.5 * (sz - 1) + hpad
    H = np.stack([hxy, hxy, hz], axis=1)
    Rtab = np.empty((len(H), len(Mu)))
    Gl = np.empty((len(Mu), 6))
    nt = default_workers() if len(Mu) > 4096 else 1
    chunk = -(-len(Mu) // nt)
    run_workers(lambda w, k: _tables(Mu, A, H, Rtab, Gl, w * chunk, min(len(Mu), (w + 1) * chunk)), nt)
    if X.shape[0] == 0:
        lz = 1 if flat else leaf_xy
        # leaf site v = (k * leaf + j) * leaf + i at offsets t from the leaf centre; q = q_c + T . coefficients
        kk, jj, ii = np.meshgrid(np.arange(lz), np.arange(leaf_xy), np.arange(leaf_xy), indexing="ij")
        t0, t1, t2 = (a.ravel() - 0.5 * (m - 1) for a, m in ((ii, leaf_xy), (jj, leaf_xy), (kk, lz)))
        T = np.ascontiguousarray(np.stack([2 * t0, 2 * t1, 2 * t2, t0 * t0, t1 * t1, t2 * t2, 2 * t0 * t1, 2 * t0 * t2, 2 * t1 * t2]))
    else:
        T = np.zeros((9, 1))
    T32 = T.astype(np.float32)  # exact: half-integer offsets and their products
    Tmax = np.abs(T).max(axis=1)
    # column 6: C_j = sum |G_j entries| max|T| (the quadratic part of _lower's S)
    Gl = np.ascontiguousarray(np.concatenate([Gl, np.abs(Gl) @ Tmax[[3, 6, 7, 4, 8, 5]][:, None]], axis=1))
    screen = bool(_F32_SCREEN)
    if _HINTS and X.shape[0] == 0 and not flat:
        uhv, uoff, udim = _hint_pyramid(S, Mu, r, o, A, shape3, sxy, float(hxy[-1]), Rtab[-1], Gl, leaf_mask)
    else:
        uhv, uoff, udim = np.zeros(0), np.zeros(len(sxy) + 1, np.int64), np.zeros((len(sxy), 3), np.int64)
    shp = np.array(shape3, np.int64)
    orig = np.zeros((1, 3), np.int64)
    off = np.array([0, len(S)], np.int64)
    idx = np.arange(len(S), dtype=np.int32)
    nw = default_workers()
    lvl = 0
    while lvl + 2 < len(sxy) and (sxy[lvl] > _TASK or len(orig) < 4 * nw):
        nch = 8 if sz[lvl] > sz[lvl + 1] else 4
        nb = len(orig)
        cnt = np.empty(nb * nch, np.int64)
        tmp = np.empty(int(off[-1]) * nch, np.int32)
        corig = np.empty((nb * nch, 3), np.int64)
        args = (
            orig, off, idx, sxy[lvl + 1], sz[lvl + 1], hxy[lvl + 1], hz[lvl + 1], nch, shp, sat, sdv,
            o, A, S, Mu, r, Rtab[lvl + 1], Gl, cnt, tmp, corig, uhv, uoff, udim, lvl + 1,
        )
        run_workers(lambda w, k: _refine_worker(w, k, *args), min(nw, nb))
        keep, off, idx = _compact_children(tmp, off, cnt, nch)
        orig = corig[keep]
        lvl += 1
    if len(orig) == 0:  # every block masked out (out_grid is zeros)
        return
    # Group the task blocks into slabs (rows of blocks along x, same y and z, at most slab_w wide).
    tsz = int(sxy[lvl])
    slab_w = tsz * max(1, min(-(-shape3[2] // tsz), _SLAB_SITES // (tsz * tsz * int(sz[lvl]))))
    order_t = np.lexsort((orig[:, 0], orig[:, 1], orig[:, 2]))
    orig = orig[order_t]
    off, idx = _reorder_lists(idx, off, order_t)
    key = (orig[:, 1] * (shape3[0] + 1) + orig[:, 2]) * (shape3[2] // slab_w + 1) + orig[:, 0] // slab_w
    sstart = np.concatenate([[0], np.flatnonzero(np.diff(key)) + 1, [len(orig)]]).astype(np.int64)
    nslab = len(sstart) - 1
    # Slabs go to the threads one at a time, dynamically: the two cores of a shared
    # machine rarely run at the same speed, and a static split waits for the slower.
    cap = max(1, int(np.diff(off).max()))
    nv = T.shape[1]
    slab_len = 0 if X.shape[0] else int(sz[lvl] * sxy[lvl] * slab_w)
    nl = len(sxy) - lvl
    Rl = np.ascontiguousarray(Rtab[lvl:])
    counter = itertools.count()

    def job(w: int, k: int) -> None:
        # this thread's work arrays, kept between calls (stereograin._scratch: fresh pages are slow)
        soa = scratch("tessellation.soa", (nl, _NF, cap + 16))
        soa.fill(0.0)  # the vector loops' padding columns must hold finite values
        work = (
            scratch("tessellation.ids", (nl, cap), np.int32), soa, scratch("tessellation.work", (8, cap + 16)),
            scratch("tessellation.iwork", (2, cap), np.int64), scratch("tessellation.b32", (5, nv), np.float32),
            scratch("tessellation.l32", (2, nv), np.int32), scratch("tessellation.slab", (slab_len,), np.int32),
        )
        while (i := next(counter)) < nslab:
            _descend_worker(
                np.array([i], np.int64), out_grid, out_pts, orig, off, idx, sstart, sxy[lvl:], sz[lvl:], hxy[lvl:],
                hz[lvl:], sat, sdv, X, bstart, o, A, S, Mu, r, Rl, Gl, T, T32, *work, screen, slab_w, keep_out,
                uhv, uoff[lvl:], udim[lvl:], perm,
            )

    run_workers(job, min(nw, nslab))


def _leaf_mask(mask: np.ndarray, block: int, shape: tuple[int, ...], leaf: int) -> tuple[np.ndarray, np.ndarray | None]:
    """A :meth:`GBPD.label_grid` mask on the engine's 3D leaves: ``(any per leaf, per-voxel mask or None)``.

    The per-voxel mask is only built (for clearing afterwards) when the mask's
    blocks are not whole leaves.
    """
    if len(shape) != 3:
        raise StereograinError(f"a labelling mask needs a 3D grid, got shape {shape}; label the whole image")
    if isinstance(block, bool) or not isinstance(block, (int, np.integer)) or block < 1:
        raise StereograinError(f"mask_block must be a positive integer (voxels per mask entry), got {block!r}")
    b = int(block)
    m = np.asarray(mask)
    want = tuple(-(-s // b) for s in shape)
    if m.dtype != np.bool_:
        raise StereograinError(f"mask must be a boolean array, got dtype {m.dtype}")
    if m.shape != want:
        raise StereograinError(f"mask for grid {shape} in blocks of {b} must have shape {want}, got {m.shape}")
    nl = tuple(-(-s // leaf) for s in shape)
    if b % leaf == 0:
        f = b // leaf
        lm = m.repeat(f, 0).repeat(f, 1).repeat(f, 2)[: nl[0], : nl[1], : nl[2]]
        return np.ascontiguousarray(lm), None
    full = m.repeat(b, 0).repeat(b, 1).repeat(b, 2)[: shape[0], : shape[1], : shape[2]]
    pad = np.zeros(tuple(n * leaf for n in nl), bool)
    pad[: shape[0], : shape[1], : shape[2]] = full
    lm = pad.reshape(nl[0], leaf, nl[1], leaf, nl[2], leaf).any(axis=(1, 3, 5))
    return lm, full


def _check_shape(shape: tuple[int, ...], dims: tuple[int, ...], what: str) -> tuple[int, ...]:
    try:
        shp = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise StereograinError(f"{what} shape must be a tuple of ints, got {shape!r}") from None
    if len(shp) not in dims:
        raise StereograinError(f"{what} shape must have {' or '.join(map(str, dims))} entries, got {shp}")
    if any(s < 1 for s in shp):
        raise StereograinError(f"{what} shape must be positive (an empty grid has nothing to label), got {shp}")
    if math.prod(shp) > _MAX_SITES:
        raise StereograinError(f"{what} shape {shp} has {math.prod(shp):.3g} sites, more than the limit {_MAX_SITES:.3g}")
    return shp


def _check_spacing(spacing: float) -> float:
    sp = float(spacing)
    if not (math.isfinite(sp) and sp > 0):
        raise StereograinError(f"spacing must be positive and finite, got {spacing!r}")
    return sp


def _vector(v: np.ndarray | float, d: int, what: str) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64)
    if a.ndim == 0:
        a = np.full(d, float(a))
    if a.shape != (d,):
        raise StereograinError(f"{what} must be a scalar or have shape ({d},), got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise StereograinError(f"{what} must be finite, got {a}")
    return a


@dataclass(frozen=True)
class GBPD:
    """A generalised balanced power diagram.

    Exact labels: :meth:`label_points`, :meth:`label_grid`, :meth:`label_plane`
    (fast, equal to :meth:`label_points_bruteforce`; they check that every
    metric is symmetric positive definite). Threads: ``numba.get_num_threads()``.

    Attributes
    ----------
    seeds : (n, d) float64
    metrics : (n, d, d) float64, symmetric positive definite
    offsets : (n,) float64 -- ``r_i``
    """

    seeds: np.ndarray
    metrics: np.ndarray
    offsets: np.ndarray

    def __post_init__(self) -> None:
        s = np.ascontiguousarray(self.seeds, dtype=np.float64)
        M = np.ascontiguousarray(self.metrics, dtype=np.float64)
        r = np.ascontiguousarray(self.offsets, dtype=np.float64)
        if s.ndim != 2 or s.shape[1] not in (2, 3) or s.shape[0] < 1:
            raise StereograinError(f"seeds must have shape (n >= 1, 2 or 3), got {s.shape}")
        n, d = s.shape
        if M.shape != (n, d, d) or r.shape != (n,):
            raise StereograinError(f"metrics must be ({n}, {d}, {d}) and offsets ({n},), got {M.shape} and {r.shape}")
        if not (np.all(np.isfinite(s)) and np.all(np.isfinite(M)) and np.all(np.isfinite(r))):
            raise StereograinError("seeds, metrics and offsets must be finite")
        object.__setattr__(self, "seeds", s)
        object.__setattr__(self, "metrics", M)
        object.__setattr__(self, "offsets", r)

    @classmethod
    def restricted(
        cls, seeds: np.ndarray, D: np.ndarray, r: np.ndarray, gamma: np.ndarray | None = None
    ) -> "GBPD":
        """The restricted GBPD with ``M_i = Q_i^T diag(D_i) Q_i`` (Eq. 12)."""
        return cls(np.asarray(seeds, dtype=np.float64), restricted_metrics(seeds, D, gamma), np.asarray(r, dtype=np.float64))

    @property
    def dim(self) -> int:
        return self.seeds.shape[1]

    @property
    def n(self) -> int:
        return self.seeds.shape[0]

    def distances(self, points: np.ndarray) -> np.ndarray:
        """``|x - s_i|_{M_i} - r_i`` for every point and cell, shape ``(m, n)`` (brute force)."""
        x = np.asarray(points, dtype=np.float64)
        diff = x[:, None, :] - self.seeds[None, :, :]
        q = np.einsum("mni,nij,mnj->mn", diff, self.metrics, diff)
        return np.sqrt(np.maximum(q, 0.0)) - self.offsets

    def label_points_bruteforce(self, points: np.ndarray, chunk: int = 4096) -> np.ndarray:
        """Reference labelling: argmin over all cells, ``(m,)`` int64 labels ``1..n``.

        O(m n); the ground truth that fast labelling is tested against.
        """
        x = self._check_points(points)
        out = np.empty(len(x), dtype=np.int64)
        for a in range(0, len(x), chunk):
            out[a : a + chunk] = np.argmin(self.distances(x[a : a + chunk]), axis=1) + 1
        return out

    def label_points(self, points: np.ndarray) -> np.ndarray:
        """Exact labels of arbitrary points, equal to :meth:`label_points_bruteforce`.

        The points are bucketed on a regular grid (a few points per bucket) and
        the buckets are labelled by the pruned block tree (see the module's
        engine notes); cost about ``O(m k)`` for ``k`` local candidates.

        Parameters
        ----------
        points : (m, d) array
            Coordinates in the diagram's units (pixels / voxels), ``(x, y[, z])``.

        Returns
        -------
        (m,) int64
            Labels ``1..n`` (cell index + 1); ties go to the lowest index.
        """
        x = self._check_points(points)
        m, d = x.shape
        if m == 0:
            return np.empty(0, np.int64)
        S, Mu, r = _padded(self)
        lo, hi = x.min(axis=0), x.max(axis=0)
        ext = hi - lo
        span = max(float(ext.max()), 1e-12)
        vol = float(np.prod(np.maximum(ext, 1e-3 * span)))
        inside = np.all((self.seeds >= lo) & (self.seeds <= hi), axis=1).sum()
        # buckets: about 4 points each, but not much finer than half the local seed spacing
        w = max((4.0 * vol / m) ** (1.0 / d), 0.5 * (vol / max(int(inside), 1)) ** (1.0 / d), 1e-9 * span)
        while True:
            nb = (np.floor(ext / w) + 1).astype(np.int64)
            if math.prod(nb.tolist()) <= 4 * m + 64:
                break
            w *= 1.25
        b = np.minimum(np.floor((x - lo) / w).astype(np.int64), nb - 1)
        nb3 = np.ones(3, np.int64)
        nb3[:d] = nb
        b3 = np.zeros((m, 3), np.int64)
        b3[:, :d] = b
        lin = (b3[:, 2] * nb3[1] + b3[:, 1]) * nb3[0] + b3[:, 0]
        order = np.argsort(lin, kind="stable")
        counts = np.bincount(lin, minlength=int(nb3.prod()))
        bstart = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        sat = np.zeros((nb3[2] + 1, nb3[1] + 1, nb3[0] + 1), np.int64)
        sat[1:, 1:, 1:] = counts.reshape(nb3[2], nb3[1], nb3[0]).cumsum(0).cumsum(1).cumsum(2)
        X = np.zeros((m, 3))
        X[:, :d] = x[order]
        o = np.zeros(3)
        o[:d] = lo + 0.5 * w
        A = np.zeros((3, 3))
        A[np.arange(d), np.arange(d)] = w
        out_sorted = np.empty(m, np.int64)
        # hpad 0.5 (+ margin for floor rounding): a bucket's points fill its whole cell, not just its centre
        _run_tree(
            S, Mu, r, o, A, (int(nb3[2]), int(nb3[1]), int(nb3[0])), 1, 0.5 + 1e-6,
            np.zeros((1, 1, 1), np.int32), out_sorted, X, bstart, sat,
        )
        out = np.empty(m, np.int64)
        out[order] = out_sorted
        return out

    def label_grid(
        self,
        shape: tuple[int, ...],
        origin: np.ndarray | float = 0.0,
        spacing: float = 1.0,
        mask: np.ndarray | None = None,
        mask_block: int = 1,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """Exact labels of a regular grid, equal to ``label_points_bruteforce(grid_points(...))``.

        Parameters
        ----------
        shape : (H, W) for a 2D diagram or (Z, Y, X) for a 3D one
            Grid size in pixels / voxels.
        origin : float or (d,) array
            Position of pixel / voxel ``[0, 0(, 0)]``, ``(x, y[, z])`` order.
        spacing : float
            Distance between neighbouring grid points (diagram units).
        mask : bool array, optional
            3D grids only: label only where the mask is true, leave 0 elsewhere.
            Its shape is ``ceil(shape / mask_block)``: entry ``[c, b, a]``
            stands for the ``mask_block``-sided block of voxels from
            ``[c, b, a] * mask_block``. Blocks of whole leaves (``mask_block``
            a multiple of 4) are skipped at no cost; others are labelled and
            then cleared.
        mask_block : int
            Voxels per mask entry along each axis (>= 1).
        out : int32 array of ``shape``, optional
            C-contiguous array to write the labels into instead of a new one.
            With a mask, its values outside the mask are kept, so a grid can
            be labelled in disjoint parts (or a buffer reused without the cost
            of fresh memory).

        Returns
        -------
        int32 array of ``shape``
            Labels ``1..n`` (0 where masked out, or ``out``'s values); point
            ``[k, j, i]`` is at ``origin + spacing * (i, j, k)``. ``out`` if given.
        """
        d = self.dim
        shp = _check_shape(shape, (d,), "grid")
        sp = _check_spacing(spacing)
        o = np.zeros(3)
        o[:d] = _vector(origin, d, "origin")
        self._check_label_range()
        A = np.zeros((3, 3))
        A[np.arange(d), np.arange(d)] = sp
        shape3 = (1, *shp) if d == 2 else shp
        flat = shape3[0] == 1
        leaf = _LEAF_2D if flat else _LEAF_3D
        given = out
        if given is not None:
            if not (isinstance(given, np.ndarray) and given.dtype == np.int32 and given.shape == shp
                    and given.flags.c_contiguous and given.flags.writeable):
                what = f"{given.dtype} {given.shape}" if isinstance(given, np.ndarray) else type(given).__name__
                raise StereograinError(f"out must be a writeable C-contiguous int32 array of shape {shp}, got {what}")
        S, Mu, r = _padded(self)
        sat, sdv, full, leaf_mask = np.zeros((1, 1, 1), np.int64), 1, None, None
        if mask is not None:
            leaf_mask, full = _leaf_mask(mask, mask_block, shp, leaf)
            if full is not None and given is not None:  # partial leaves: label apart, then copy the voxels in the mask
                np.copyto(given, self.label_grid(shp, origin, spacing, mask, mask_block), where=full.reshape(shp))
                return given
            grid = np.zeros(shape3, np.int32) if given is None else given.reshape(shape3)
            if not leaf_mask.any():
                return grid.reshape(shp) if given is None else given
            sat = np.zeros(tuple(s + 1 for s in leaf_mask.shape), np.int64)
            sat[1:, 1:, 1:] = leaf_mask.cumsum(0).cumsum(1).cumsum(2)
            sdv = leaf
        else:
            grid = np.empty(shape3, np.int32) if given is None else given.reshape(shape3)
        _run_tree(
            S, Mu, r, o, A, shape3, leaf, 0.0,
            grid, np.zeros(0, np.int64), np.zeros((0, 3)), np.zeros(1, np.int64), sat, sdv, keep_out=given is not None,
            leaf_mask=leaf_mask,
        )
        if full is not None:
            grid[~full] = 0
        return grid.reshape(shp) if given is None else given

    def in_grid_order(self, origin: np.ndarray | float = 0.0, spacing: float = 1.0) -> tuple["GBPD", np.ndarray]:
        """This diagram with its cells in the order :meth:`label_grid` works in for a grid at ``origin`` and ``spacing``.

        The engine renumbers the cells by their seeds' position (engine notes:
        cell order) and maps its labels back; a diagram already in that order
        skips both (about 4 % of a library particle's labelling). Use it when
        labels in the new numbering serve as well.

        Returns
        -------
        gbpd : GBPD
            Cell ``c`` is this diagram's cell ``perm[c]``.
        perm : (n,) int64
        """
        if self.dim != 3:  # 2D grids are labelled in the input order
            return self, np.arange(self.n)
        o = _vector(origin, 3, "origin")
        A = np.eye(3) * _check_spacing(spacing)
        perm = _spatial_order(self.seeds, o, A, _LEAF_3D)
        if perm is None:
            return self, np.arange(self.n)
        perm = perm.astype(np.int64)
        return GBPD(self.seeds[perm], self.metrics[perm], self.offsets[perm]), perm

    def label_plane(
        self,
        origin: np.ndarray,
        e_u: np.ndarray,
        e_v: np.ndarray,
        shape: tuple[int, int],
        spacing: float = 1.0,
    ) -> np.ndarray:
        """Exact labels of a planar section of a 3D diagram (same points as :func:`plane_points`).

        Parameters
        ----------
        origin : (3,) array
            Position of pixel ``[0, 0]`` (diagram units).
        e_u, e_v : (3,) arrays
            In-plane steps of a pixel along ``i`` (columns) and ``j`` (rows),
            times ``spacing``; usually orthonormal, any non-zero vectors work.
        shape : (H, W)
            Section size in pixels.
        spacing : float

        Returns
        -------
        (H, W) int32
            Labels ``1..n``; pixel ``[j, i]`` is at ``origin + spacing * (i e_u + j e_v)``.
        """
        if self.dim != 3:
            raise StereograinError(f"label_plane needs a 3D diagram, this one is {self.dim}D; use label_grid")
        H, W = _check_shape(shape, (2,), "plane")
        sp = _check_spacing(spacing)
        o = _vector(origin, 3, "origin")
        u = _vector(e_u, 3, "e_u")
        v = _vector(e_v, 3, "e_v")
        if np.linalg.norm(u) == 0 or np.linalg.norm(v) == 0:
            raise StereograinError("e_u and e_v must be non-zero vectors")
        self._check_label_range()
        A = np.stack([sp * u, sp * v, np.zeros(3)])
        out = np.empty((1, H, W), np.int32)
        S, Mu, r = _padded(self)
        _run_tree(
            S, Mu, r, o, A, (1, H, W), _LEAF_2D, 0.0,
            out, np.zeros(0, np.int64), np.zeros((0, 3)), np.zeros(1, np.int64), np.zeros((1, 1, 1), np.int64),
        )
        return out[0]

    def _check_label_range(self) -> None:
        if self.n >= 2**31 - 1:
            raise StereograinError(f"{self.n} cells do not fit int32 labels; split the diagram")

    def _check_points(self, points: np.ndarray) -> np.ndarray:
        x = np.asarray(points, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise StereograinError(f"points must have shape (m, {self.dim}), got {x.shape}")
        if not np.all(np.isfinite(x)):
            raise StereograinError("points must be finite")
        return x


# Soft map over candidates on CPU: hand-written forward and backward. Torch autograd
# materialises the gathered (P, k, d*d) marker tensors and their gradients and
# scatters them back; this loop keeps one (point, candidate) pair in registers and
# accumulates the cell gradients directly (about 3x faster than the torch path for
# the benchmark's 64 cutouts of 32 x 32 px, see benchmarks/bench_tessellation.py).
_SOFT_MAP_KERNEL = True  # tests switch it off to check the torch path against it


@numba.njit(cache=True, nogil=True)
def _sm_pair(x, s, M, b, p, c, d, df, w):  # pragma: no cover - compiled
    """``q = (x_p - s_c)^T M_c (x_p - s_c)``; fills ``df = x_p - s_c`` and ``w = M_c df``."""
    if d == 3:
        d0 = x[b, p, 0] - s[b, c, 0]
        d1 = x[b, p, 1] - s[b, c, 1]
        d2 = x[b, p, 2] - s[b, c, 2]
        w0 = M[b, c, 0, 0] * d0 + M[b, c, 0, 1] * d1 + M[b, c, 0, 2] * d2
        w1 = M[b, c, 1, 0] * d0 + M[b, c, 1, 1] * d1 + M[b, c, 1, 2] * d2
        w2 = M[b, c, 2, 0] * d0 + M[b, c, 2, 1] * d1 + M[b, c, 2, 2] * d2
        df[0], df[1], df[2] = d0, d1, d2
        w[0], w[1], w[2] = w0, w1, w2
        return d0 * w0 + d1 * w1 + d2 * w2
    d0 = x[b, p, 0] - s[b, c, 0]
    d1 = x[b, p, 1] - s[b, c, 1]
    w0 = M[b, c, 0, 0] * d0 + M[b, c, 0, 1] * d1
    w1 = M[b, c, 1, 0] * d0 + M[b, c, 1, 1] * d1
    df[0], df[1] = d0, d1
    w[0], w[1] = w0, w1
    return d0 * w0 + d1 * w1


@numba.njit(cache=True, parallel=True, fastmath=_FM)
def _sm_forward(x, s, M, r, idx, temperature, y):  # pragma: no cover - compiled
    """``y[b, p, j] = softmax_j((r_c - |x_p - s_c|_{M_c}) / T)`` with ``c = idx[b, p, j]``."""
    B, P, d = x.shape
    k = idx.shape[2]
    inv_t = 1.0 / temperature
    for bp in numba.prange(B * P):
        b = bp // P
        p = bp - b * P
        df = np.empty(3)
        w = np.empty(3)
        mx = -np.inf
        for j in range(k):
            c = idx[b, p, j]
            q = _sm_pair(x, s, M, b, p, c, d, df, w)
            lg = (r[b, c] - np.sqrt(max(q, 1e-12))) * inv_t
            y[b, p, j] = lg
            mx = max(mx, lg)
        tot = 0.0
        for j in range(k):
            e = np.exp(y[b, p, j] - mx)
            y[b, p, j] = e
            tot += e
        inv = 1.0 / tot
        for j in range(k):
            y[b, p, j] *= inv


@numba.njit(cache=True, parallel=True, fastmath=_FM)
def _sm_backward(x, s, M, r, idx, temperature, y, gy, gx, gs, gM, gr):  # pragma: no cover - compiled
    """Gradients of the soft map; batch entries in parallel (cells are private to an entry)."""
    B, P, d = x.shape
    k = idx.shape[2]
    inv_t = 1.0 / temperature
    for b in numba.prange(B):
        df = np.empty(3)
        w = np.empty(3)
        for p in range(P):
            dot = 0.0
            for j in range(k):
                dot += y[b, p, j] * gy[b, p, j]
            for j in range(k):
                c = idx[b, p, j]
                gl = y[b, p, j] * (gy[b, p, j] - dot) * inv_t  # d loss / d logit
                gr[b, c] += gl
                q = _sm_pair(x, s, M, b, p, c, d, df, w)
                if q < 1e-12:  # the clamp: no gradient through the floor
                    continue
                gq = -gl / (2.0 * np.sqrt(q))
                for a in range(d):
                    ga = 2.0 * gq * w[a]
                    gx[b, p, a] += ga
                    gs[b, c, a] -= ga
                    gqa = gq * df[a]
                    for e in range(d):
                        gM[b, c, a, e] += gqa * df[e]


def _soft_map_function():
    import torch

    class _SoftMapCandidates(torch.autograd.Function):
        """Soft map over per-point candidates with the numba kernels above (CPU)."""

        @staticmethod
        def forward(ctx, x, s, M, r, idx, temperature):
            batch = torch.broadcast_shapes(x.shape[:-2], s.shape[:-2], M.shape[:-3], r.shape[:-1], idx.shape[:-2])
            P, d = x.shape[-2:]
            n, k = s.shape[-2], idx.shape[-1]
            if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
                raise StereograinError(f"candidates must be in [0, {n}), got values in [{int(idx.min())}, {int(idx.max())}]")
            # float64 inside whatever the input dtype: one compiled kernel pair, and no
            # float32 cancellation in the quadratic forms
            f8 = torch.float64
            xb = x.detach().to(f8).expand(*batch, P, d).reshape(-1, P, d).contiguous()
            sb = s.detach().to(f8).expand(*batch, n, d).reshape(-1, n, d).contiguous()
            Mb = M.detach().to(f8).expand(*batch, n, d, d).reshape(-1, n, d, d).contiguous()
            rb = r.detach().to(f8).expand(*batch, n).reshape(-1, n).contiguous()
            ib = idx.expand(*batch, P, k).reshape(-1, P, k).contiguous()
            y = torch.empty(ib.shape, dtype=f8)
            _sm_forward(xb.numpy(), sb.numpy(), Mb.numpy(), rb.numpy(), ib.numpy(), temperature, y.numpy())
            ctx.save_for_backward(xb, sb, Mb, rb, ib, y)
            ctx.meta = (batch, temperature, x.shape, s.shape, M.shape, r.shape, (x.dtype, s.dtype, M.dtype, r.dtype))
            return y.reshape(*batch, P, k).to(x.dtype)

        @staticmethod
        def backward(ctx, gy):
            xb, sb, Mb, rb, ib, y = ctx.saved_tensors
            batch, temperature, xs, ss, Ms, rs, dts = ctx.meta
            gyb = gy.to(y.dtype).reshape(y.shape).contiguous()
            gx, gs, gM, gr = (torch.zeros_like(t) for t in (xb, sb, Mb, rb))
            _sm_backward(
                xb.numpy(), sb.numpy(), Mb.numpy(), rb.numpy(), ib.numpy(), temperature,
                y.numpy(), gyb.numpy(), gx.numpy(), gs.numpy(), gM.numpy(), gr.numpy(),
            )

            def back(g, shape, tail, dt):
                return g.reshape(*batch, *tail).sum_to_size(shape).to(dt)

            P, d = xs[-2:]
            n = ss[-2]
            return (
                back(gx, xs, (P, d), dts[0]) if ctx.needs_input_grad[0] else None,
                back(gs, ss, (n, d), dts[1]) if ctx.needs_input_grad[1] else None,
                back(gM, Ms, (n, d, d), dts[2]) if ctx.needs_input_grad[2] else None,
                back(gr, rs, (n,), dts[3]) if ctx.needs_input_grad[3] else None,
                None,
                None,
            )

    return _SoftMapCandidates


class _LazySoftMapFunction:
    """Builds the autograd Function on first use, so that importing this module does not import torch."""

    _fn = None

    @classmethod
    def apply(cls, *args):
        if cls._fn is None:
            cls._fn = _soft_map_function()
        return cls._fn.apply(*args)


_SoftMapCandidates = _LazySoftMapFunction



def _quad_features(metrics, seeds):
    """Per-cell coefficients ``phi`` with ``q_i(x) = phi_i . psi(x)`` (torch), shape ``(..., n, u)``.

    ``psi(x) = [x_a x_b (a <= b), x, 1]`` and ``phi_i = [M_ab (x2 off the
    diagonal), -2 M_i s_i, s_i^T M_i s_i]``: the expanded quadratic form, so the
    soft map is one batched matrix product per point instead of a gathered
    ``d x d`` contraction (about 1.5x faster than that einsum on CPU here).
    """
    import torch

    d = seeds.shape[-1]
    ia, ib = torch.triu_indices(d, d, device=seeds.device)
    w = torch.where(ia == ib, 1.0, 2.0).to(seeds.dtype)
    sym = 0.5 * (metrics + metrics.transpose(-1, -2))  # gradients reach M_ab and M_ba alike
    Ms = torch.matmul(sym, seeds[..., None])[..., 0]  # (..., n, d)
    sMs = (seeds * Ms).sum(-1, keepdim=True)
    return torch.cat([sym[..., ia, ib] * w, -2.0 * Ms, sMs], dim=-1)


def _point_features(x):
    import torch

    d = x.shape[-1]
    ia, ib = torch.triu_indices(d, d, device=x.device)
    return torch.cat([x[..., ia] * x[..., ib], x, torch.ones_like(x[..., :1])], dim=-1)


def soft_map(
    points,
    seeds,
    metrics,
    offsets,
    temperature: float = 1.0,
    candidates=None,
):
    """Soft cell membership (Eq. 11), differentiable in torch.

    ``T_i(x) = softmax_i((-|x - s_i|_{M_i} + r_i) / temperature)``; with
    ``temperature -> 0`` it tends to the one-hot exact labelling. The squared
    distance is expanded as ``x^T M x - 2 x^T M s + s^T M s`` (coordinates are
    first shifted to the mean point of each batch entry, which keeps the
    cancellation small in float32), so the work is a few batched matrix
    products. With ``candidates`` on CPU, a compiled forward / backward pair
    (numba) replaces torch autograd, about 3x faster for GAN-sized batches.
    Runs on the device and in the dtype of its inputs (CPU or CUDA, float32 or
    float64); gradients flow to ``points``, ``seeds``, ``metrics`` and
    ``offsets``; ``metrics`` get symmetric gradients.

    Parameters
    ----------
    points : tensor (..., P, d)
        Evaluation points (pixels / voxels).
    seeds : tensor (..., n, d)
    metrics : tensor (..., n, d, d)
        Symmetric positive definite ``M_i``.
    offsets : tensor (..., n)
        ``r_i`` (pixels / voxels).
    temperature : float
        Softmax temperature in the units of the distances (the paper: 1 px).
    candidates : long tensor (..., P, k), optional
        Indices of the cells each point may belong to, e.g. from
        :func:`nearest_candidates`; memory is then ``O(P k)`` instead of
        ``O(P n)`` and the result is over those ``k`` candidates. Batch
        dimensions broadcast.

    Returns
    -------
    tensor (..., P, n), or (..., P, k) with ``candidates``
        Non-negative, summing to 1 over the last axis.
    """
    import torch

    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise StereograinError(f"temperature must be a positive number, got {temperature!r}")
    d = points.shape[-1]
    if seeds.shape[-1] != d or metrics.shape[-2:] != (d, d) or metrics.shape[-3] != seeds.shape[-2]:
        raise StereograinError(
            f"soft_map needs points (..., P, {d}), seeds (..., n, {d}), metrics (..., n, {d}, {d}); "
            f"got {tuple(points.shape)}, {tuple(seeds.shape)}, {tuple(metrics.shape)}"
        )
    if offsets.ndim < 1 or offsets.shape[-1] != seeds.shape[-2]:
        raise StereograinError(f"offsets must have shape (..., {seeds.shape[-2]}), got {tuple(offsets.shape)}")
    if candidates is not None and candidates.dtype != torch.long:
        raise StereograinError(f"candidates must be a long (int64) tensor, got {candidates.dtype}")
    if candidates is not None and _SOFT_MAP_KERNEL and points.device.type == "cpu" and points.dtype.is_floating_point:
        return _SoftMapCandidates.apply(points, seeds, metrics, offsets, candidates, float(temperature))
    # Centre each batch entry at its mean point (a constant shift leaves distances unchanged).
    c = points.detach().mean(dim=-2, keepdim=True)
    psi = _point_features(points - c)  # (..., P, u)
    phi = _quad_features(metrics, seeds - c)  # (..., n, u)
    if candidates is None:
        q = torch.matmul(psi, phi.transpose(-1, -2))  # (..., P, n)
        r = offsets[..., None, :]
    else:
        idx = candidates
        n, u = phi.shape[-2:]
        P = psi.shape[-2]
        k = idx.shape[-1]
        batch = torch.broadcast_shapes(idx.shape[:-2], phi.shape[:-2], psi.shape[:-2])
        nb = math.prod(batch)
        # Row lookups in flat (batch * n, .) tables: index_select's backward is an
        # index_add, several times faster on CPU than gather's scatter_add over an
        # index expanded to (P * k, u).
        flat = (idx.expand(*batch, P, k) + (torch.arange(nb, device=idx.device) * n).reshape(*batch, 1, 1)).reshape(-1)
        g = torch.index_select(phi.expand(*batch, n, u).reshape(nb * n, u), 0, flat).reshape(*batch, P, k, u)
        q = torch.linalg.vecdot(g, psi.expand(*batch, P, u)[..., None, :])  # (..., P, k)
        r = torch.index_select(offsets.expand(*batch, n).reshape(nb * n), 0, flat).reshape(*batch, P, k)
    # sqrt has an infinite derivative at 0: a floor keeps gradients finite at a seed.
    dist = torch.sqrt(torch.clamp(q, min=1e-12))
    return torch.softmax((r - dist) / temperature, dim=-1)


def nearest_candidates(points, seeds, k: int):
    """Indices of the ``k`` Euclidean-nearest seeds of every point, for :func:`soft_map`.

    A heuristic restriction (the paper's): with anisotropic metrics the true
    cell of a point is usually, not always, among its Euclidean neighbours, so
    choose ``k`` with a margin (12-32 for the paper's markers). Memory is
    ``O(P k)``: a k-d tree on CPU, chunked distance blocks on CUDA.

    Parameters
    ----------
    points : tensor or array (..., P, d)
    seeds : tensor or array (..., n, d), same batch shape as ``points`` (or none)
    k : int
        Number of candidates, ``1 <= k <= n``.

    Returns
    -------
    long tensor (..., P, k)
        On the device of ``points`` (CPU for arrays), nearest first.
    """
    import torch
    from scipy.spatial import cKDTree

    x = points if isinstance(points, torch.Tensor) else torch.as_tensor(np.asarray(points, dtype=np.float64))
    s = seeds if isinstance(seeds, torch.Tensor) else torch.as_tensor(np.asarray(seeds, dtype=np.float64))
    n = s.shape[-2] if s.ndim >= 2 else 0
    if x.ndim < 2 or s.ndim < 2 or x.shape[-1] != s.shape[-1]:
        raise StereograinError(f"points (..., P, d) and seeds (..., n, d) must share d, got {tuple(x.shape)} and {tuple(s.shape)}")
    if not (isinstance(k, (int, np.integer)) and 1 <= k <= n):
        raise StereograinError(f"k must be an integer in [1, n = {n}], got {k!r}")
    batch = torch.broadcast_shapes(x.shape[:-2], s.shape[:-2])
    xb = x.detach().expand(*batch, *x.shape[-2:]).reshape(-1, *x.shape[-2:])
    sb = s.detach().expand(*batch, *s.shape[-2:]).reshape(-1, *s.shape[-2:])
    if x.device.type == "cpu":
        xs, ss = xb.double().numpy(), sb.double().numpy()
        out = np.empty((xb.shape[0], xb.shape[1], int(k)), np.int64)
        for b in range(xb.shape[0]):  # one tree per batch entry (seed sets differ)
            _, ii = cKDTree(ss[b]).query(xs[b], k=int(k))
            out[b] = ii.reshape(xb.shape[1], int(k))
        res = torch.from_numpy(out)
    else:
        chunk = max(1, (1 << 24) // max(n, 1))
        parts = [
            torch.cdist(xb[:, a : a + chunk], sb).topk(int(k), dim=-1, largest=False).indices
            for a in range(0, xb.shape[1], chunk)
        ]
        res = torch.cat(parts, dim=1)
    return res.reshape(*batch, x.shape[-2], int(k)).to(x.device)


@dataclass(frozen=True)
class CellGeometry:
    """Per-cell size, centre of mass and principal axes of a label image / volume.

    Attributes
    ----------
    size : (n,) float64
        Area (2D) or volume (3D) in ``spacing`` units squared / cubed.
    centroid : (n, d) float64
        Centre of mass in ``(x, y[, z])`` order, ``spacing`` units (grid point
        ``[k, j, i]`` at ``spacing * (i, j, k)``). NaN for empty cells.
    eigenvalues : (n, d) float64
        Eigenvalues of the covariance matrix of the cell's points (units
        squared), descending. A uniform ellipse / ellipsoid with semi-axis
        ``a`` has eigenvalue ``a^2 / 4`` / ``a^2 / 5``.
    axes : (n, d, d) float64
        Unit principal axes as rows, in the order of ``eigenvalues`` (sign arbitrary).
    """

    size: np.ndarray
    centroid: np.ndarray
    eigenvalues: np.ndarray
    axes: np.ndarray


def cell_geometry(labels: np.ndarray, n: int | None = None, spacing: float = 1.0) -> CellGeometry:
    """Size, centroid and principal axes of every cell of a 2D or 3D label array.

    Vectorised: first and second moments of the pixel / voxel coordinates
    are summed per label with ``np.bincount``; no loop over cells.

    Parameters
    ----------
    labels : (H, W) or (Z, Y, X) integer array
        Cell labels ``1..n``; 0 (background) is ignored.
    n : int, optional
        Number of cells (default: the largest label). Cells without pixels get
        size 0 and NaN geometry.
    spacing : float
        Grid spacing (e.g. pixels -> nm).

    Returns
    -------
    CellGeometry
    """
    lab = np.asarray(labels)
    if lab.ndim not in (2, 3):
        raise StereograinError(f"labels must be a 2D (H, W) or 3D (Z, Y, X) array, got shape {lab.shape}")
    if lab.size == 0:
        raise StereograinError("labels is empty (a zero-length axis)")
    if not np.issubdtype(lab.dtype, np.integer):
        raise StereograinError(f"labels must be integers, got dtype {lab.dtype}")
    sp = _check_spacing(spacing)
    lo = int(lab.min())
    if lo < 0:
        raise StereograinError(f"labels must be >= 0 (0 = background), got {lo}")
    top = int(lab.max())
    n_cells = top if n is None else int(n)
    if n_cells < top:
        raise StereograinError(f"n = {n_cells} is smaller than the largest label {top}")
    d = lab.ndim
    flat = lab.ravel().astype(np.int64)
    size = np.bincount(flat, minlength=n_cells + 1)[1:].astype(np.float64)
    # coordinates in (x, y[, z]) order; moments from per-axis sums (no (m, d) coordinate array)
    grids = np.indices(lab.shape, dtype=np.float64)[::-1]  # x, y[, z]
    coords = [g.ravel() for g in grids]
    first = np.stack([np.bincount(flat, weights=c, minlength=n_cells + 1)[1:] for c in coords], axis=1)
    second = np.empty((n_cells, d, d))
    for a in range(d):
        for b in range(a, d):
            second[:, a, b] = second[:, b, a] = np.bincount(flat, weights=coords[a] * coords[b], minlength=n_cells + 1)[1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = first / size[:, None]
        cov = second / size[:, None, None] - mean[:, :, None] * mean[:, None, :]
    empty = size == 0
    cov[empty] = 0.0
    w, V = np.linalg.eigh(cov)  # ascending, columns
    w = np.maximum(w[:, ::-1], 0.0) * sp**2
    axes = np.swapaxes(V[:, :, ::-1], 1, 2)
    centroid = mean * sp
    w[empty] = np.nan
    axes = axes.copy()
    axes[empty] = np.nan
    return CellGeometry(size * sp**d, centroid, w, axes)
