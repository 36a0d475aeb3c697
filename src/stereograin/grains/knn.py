"""Exact k nearest neighbours of a 3D point set on a uniform cell grid (numba).

Why hand-written: the generator needs, for every seed, its ``kappa = 12``
nearest other seeds (``k + 1 = 13`` with self). SciPy's ``cKDTree.query``
spends most of its time in per-query overhead at this small ``k`` (tree
descent, heap, result copies): 2.0e-6 s per point at 25,000 points and
5.4e-6 s at 1e6 points on 2 cores, more than the whole grain budget of
1e-6 s. A cell list fits the job better: Poisson seeds are nearly uniform,
so a query needs the points of a few cells next to its own.

The search (:func:`knn`)
------------------------
The points' bounding box is cut into cubic cells of side ``h``, about
``n / points_per_cell`` of them (fewer along thin axes). A counting sort
stores the points cell by cell, so a row of cells along x is contiguous in
memory. Cells are processed in that order; for cell ``c``, the ``3 x 3 x 3``
block of cells around it (9 contiguous rows) is copied once into buffers
(one row per coordinate) and serves all points of ``c``. For a point ``p``:

1. its squared distances to all block points (a vectorised loop);
2. ``T*``: the squared distance from ``p`` to the outside of the block
   (sides on the grid's faces have no outside): every point with
   ``d2 < T*`` is in the block. A few vectorised counts find a threshold
   ``T <= T*`` with ``k`` to ``k + 4`` block points at ``d2 <= T``, starting
   from the local density (the block's count) and rescaling by the law
   ``count ~ T^(3/2)``;
3. those candidates are ranked by the number of strictly smaller ``d2``
   (vectorised); equal distances are re-ranked by index;
4. if fewer than ``k`` block points lie within ``T*`` (a sparse
   neighbourhood: the ball's surface, clustered or isolated points), all
   cells meeting a ball are read instead, the ball growing until it holds
   ``k`` points, then steps 2-3 run on those.

Points not read are thus provably farther than the ``k``-th neighbour found:
the result is exact. Bounds are reduced by a slack of about ``1e-10`` cell and
a relative margin of ``1e-12`` on squared distances so that float rounding in
the cell assignment can never drop a true neighbour.

Order and ties. Neighbours are sorted by increasing squared Euclidean
distance ``(x_j - x_i)^2 + (y_j - y_i)^2 + (z_j - z_i)^2`` computed in float64
in that order; equal distances (duplicated points, lattices) are broken by the
lower index. The point itself is excluded by index, so a duplicate of ``p``
(distance 0) is a neighbour of ``p``. The result equals a brute-force
``lexsort((j, d2))`` over all ``j != i``.

Threads. The grid is built in the calling thread (a counting sort, a few
percent of the time); queries run in batches of whole cells on a thread pool
(:func:`stereograin._threads.run_all`, numba's thread count by default; the kernels release
the GIL). Not ``numba.prange``: OpenMP workers spin for a while after each
parallel region, and the generator alternates these kernels with torch's own
OpenMP pool. The result does not depend on the number of threads.

Cost. A block holds about ``27 points_per_cell`` points (twice that inside a
ball, whose bounding box is half empty): the work per point is fixed for
nearly uniform sets. A heavily clustered set (or many exact duplicates)
costs ``O(m)`` to ``O(m^2)`` per point for ``m`` points in one cell, as the
grid cannot split them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numba
import numpy as np

from .._threads import default_workers, run_all
from ..errors import StereograinError

__all__ = ["knn", "knn_grid", "CellGrid", "cell_grid", "POINTS_PER_CELL"]

#: Default mean occupancy over the bounding box (points per cell).
POINTS_PER_CELL = 2.5
#: Safety factor on the local-density guess of the k-th distance (speed only).
_GUESS = 1.0
#: Smallest batch of points handed to a thread (per-batch overhead ~50 us).
_MIN_BATCH = 2048
#: A threshold holding k to k + _SLOP candidates is accepted; at most _ITERS refinements.
_SLOP = 4
_ITERS = 6
#: Relative margin on squared-distance bounds (float rounding of ``d2``).
_REL_MARGIN = 1e-12
#: 4/3 pi
_BALL = 4.0 * math.pi / 3.0


@dataclass(frozen=True)
class CellGrid:
    """Points sorted into a uniform grid of cubic cells (input of the query kernels).

    Attributes
    ----------
    origin : (3,) float64
        Lower corner of the grid (the points' minimum), px.
    h : float
        Cell side, px.
    dims : (3,) int64
        Cells per axis ``(gx, gy, gz)``; cell ``(ix, iy, iz)`` has id ``(iz gy + iy) gx + ix``.
    start : (gx gy gz + 1,) int64
        Points of cell ``c`` are the sorted positions ``start[c]:start[c + 1]``.
    order : (n,) int64
        Original index of each sorted position (increasing within a cell).
    points : (n, 3) float64
        Coordinates in sorted order.
    cell : (n,) int64
        Cell id of each sorted position.
    slack : float
        Safety margin (cells) subtracted from every distance bound.
    """

    origin: np.ndarray
    h: float
    dims: np.ndarray
    start: np.ndarray
    order: np.ndarray
    points: np.ndarray
    cell: np.ndarray
    slack: float

    def __len__(self) -> int:
        return len(self.order)


def _check_points(points: np.ndarray, k: int) -> np.ndarray:
    p = np.asarray(points)
    if p.ndim != 2 or p.shape[1] != 3:
        raise StereograinError(f"points must have shape (n, 3), got {p.shape}")
    if not np.issubdtype(p.dtype, np.number) or np.issubdtype(p.dtype, np.complexfloating):
        raise StereograinError(f"points must be real numbers, got dtype {p.dtype}")
    p = np.ascontiguousarray(p, dtype=np.float64)
    if int(k) < 1:
        raise StereograinError(f"k must be at least 1, got {k}")
    if len(p) <= int(k):
        raise StereograinError(f"need more than k = {int(k)} points to find k nearest other points, got {len(p)}")
    return p


# ----------------------------------------------------------------------------- grid


@numba.njit(cache=True, nogil=True)
def _bbox(p):  # pragma: no cover - compiled
    """Bounds ``lo``, ``hi`` (3,) and the number of rows with a NaN / infinite coordinate."""
    lo = np.full(3, np.inf)
    hi = np.full(3, -np.inf)
    bad = 0
    for i in range(p.shape[0]):
        ok = True
        for a in range(3):
            v = p[i, a]
            ok &= np.isfinite(v)
            lo[a] = min(lo[a], v)
            hi[a] = max(hi[a], v)
        bad += not ok
    return lo, hi, bad


@numba.njit(cache=True, nogil=True)
def _build(p, origin, inv_h, gx, gy, gz):  # pragma: no cover - compiled
    """Counting sort by cell (stable: increasing index within a cell)."""
    n = p.shape[0]
    ncell = gx * gy * gz
    cid = np.empty(n, np.int64)
    fill = np.zeros(ncell + 1, np.int64)
    for i in range(n):
        ix = min(int((p[i, 0] - origin[0]) * inv_h), gx - 1)
        iy = min(int((p[i, 1] - origin[1]) * inv_h), gy - 1)
        iz = min(int((p[i, 2] - origin[2]) * inv_h), gz - 1)
        c = (iz * gy + iy) * gx + ix
        cid[i] = c
        fill[c + 1] += 1
    for c in range(ncell):
        fill[c + 1] += fill[c]
    start = fill.copy()
    order = np.empty(n, np.int64)
    sp = np.empty((n, 3), np.float64)
    scell = np.empty(n, np.int64)
    for i in range(n):
        c = cid[i]
        j = fill[c]
        fill[c] = j + 1
        order[j] = i
        sp[j, 0] = p[i, 0]
        sp[j, 1] = p[i, 1]
        sp[j, 2] = p[i, 2]
        scell[j] = c
    return start, order, sp, scell


def _cell_side(extent: np.ndarray, n_cells: float) -> float:
    """Side ``h`` with ``prod(max(extent / h, 1)) ~ n_cells`` (thin axes get one cell)."""
    e = np.maximum(extent, 0.0)
    top = float(e.max())
    if top <= 0.0:
        return 1.0  # all points equal: one cell
    lo, hi = top / (8.0 * n_cells + 8.0), top  # at hi: one cell; at lo: more than n_cells
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        if float(np.prod(np.maximum(e / mid, 1.0))) > n_cells:
            lo = mid
        else:
            hi = mid
        if hi / lo < 1.0 + 1e-3:
            break
    return hi


def cell_grid(points: np.ndarray, points_per_cell: float = POINTS_PER_CELL) -> CellGrid:
    """Sort points into a uniform cell grid (see the module notes).

    Parameters
    ----------
    points : (n, 3) array
        Finite coordinates (px), ``n >= 1``.
    points_per_cell : float
        Target mean occupancy over the bounding box: about
        ``n / points_per_cell`` cells (fewer along thin axes).

    Returns
    -------
    CellGrid

    Raises
    ------
    StereograinError
        Wrong shape, no points, NaN or infinite coordinates.
    """
    p = np.asarray(points)
    if p.ndim != 2 or p.shape[1] != 3 or len(p) == 0:
        raise StereograinError(f"points must have shape (n, 3) with n >= 1, got {p.shape}")
    p = np.ascontiguousarray(p, dtype=np.float64)
    if not (points_per_cell > 0 and math.isfinite(points_per_cell)):
        raise StereograinError(f"points_per_cell must be positive and finite, got {points_per_cell!r}")
    n = len(p)
    lo, hi, bad = _bbox(p)
    if bad:
        raise StereograinError(f"{bad} points have NaN or infinite coordinates; drop or fix them first")
    extent = hi - lo
    h = _cell_side(extent, max(n / float(points_per_cell), 1.0))
    dims = np.floor(extent / h).astype(np.int64) + 1
    start, order, sp, scell = _build(p, lo, 1.0 / h, int(dims[0]), int(dims[1]), int(dims[2]))
    span = float(np.abs(np.concatenate([lo, hi])).max()) + h
    slack = 1e-10 * (1.0 + span / h)
    return CellGrid(lo, float(h), dims, start, order, sp, scell, float(slack))


# ----------------------------------------------------------------------------- queries
#
# Buffers (one pair per parallel chunk, grown when a block does not fit):
#   fb (5, cap) float64: block x, y, z, squared distances dd, candidate distances cd
#   ib (5, cap) int64:   block sorted positions, candidate sorted positions cj,
#                        candidate original indices co, ranks rk, equal counts eq
# Structure-of-arrays rows keep the distance and count loops vectorised.

_FX, _FY, _FZ, _FD, _FC = 0, 1, 2, 3, 4
_IB, _IC, _IO, _IR, _IE = 0, 1, 2, 3, 4


@numba.njit(cache=True, nogil=True, inline="always")
def _gap(d, f, slack):  # pragma: no cover - compiled
    """Gap (cells) from a point at fraction ``f`` of its cell to the cell ``d`` steps away."""
    if d > 0:
        g = d - f - slack
    elif d < 0:
        g = -d - 1.0 + f - slack
    else:
        return 0.0
    return g if g > 0.0 else 0.0


@numba.njit(cache=True, nogil=True, inline="always")
def _reach(s, f, slack):  # pragma: no cover - compiled
    """Cells reachable below / above along one axis within ``s`` cells (``s`` finite)."""
    return int(s + 1.0 - f + slack), int(s + f + slack)


@numba.njit(cache=True, nogil=True)
def _ball_scan(q, px, py, pz, ix, iy, iz, fx, fy, fz, T, gp, start, gx, gy, gz, slack, inv_hm, fb, ib):  # pragma: no cover - compiled
    """Candidates ``(d2, j)``, ``j != q``, ``d2 <= T`` into ``fb[_FC]`` / ``ib[_IC]`` (every cell meeting that ball).

    Returns their count, or ``-needed`` when the buffers are too small.
    """
    Tc = T * inv_hm
    cap = fb.shape[1]
    m = 0
    sz = min(math.sqrt(Tc), 1e9)
    a, b = _reach(sz, fz, slack)
    for jz in range(max(iz - a, 0), min(iz + b, gz - 1) + 1):
        g = _gap(jz - iz, fz, slack)
        by = Tc - g * g
        if by < 0.0:
            continue
        a, b = _reach(min(math.sqrt(by), 1e9), fy, slack)
        for jy in range(max(iy - a, 0), min(iy + b, gy - 1) + 1):
            g = _gap(jy - iy, fy, slack)
            bx = by - g * g
            if bx < 0.0:
                continue
            a, b = _reach(min(math.sqrt(bx), 1e9), fx, slack)
            c0 = (jz * gy + jy) * gx
            lo = start[c0 + max(ix - a, 0)]
            hi = start[c0 + min(ix + b, gx - 1) + 1]
            if m + hi - lo > cap:
                return -(m + hi - lo)
            for j in range(lo, hi):
                ex = gp[j, 0] - px
                ey = gp[j, 1] - py
                ez = gp[j, 2] - pz
                d2 = ex * ex + ey * ey + ez * ez
                fb[_FC, m] = d2
                ib[_IC, m] = j
                m += (d2 <= T) & (j != q)
    return m


@numba.njit(cache=True, nogil=True, inline="always")
def _block_range(c, gx, gy, gz):  # pragma: no cover - compiled
    """Cell ``c``'s indices and its clipped 3 x 3 x 3 block ``(ix, iy, iz, x0, x1, y0, y1, z0, z1)``."""
    ix = c % gx
    t = c // gx
    iy = t % gy
    iz = t // gy
    return ix, iy, iz, max(ix - 1, 0), min(ix + 1, gx - 1), max(iy - 1, 0), min(iy + 1, gy - 1), max(iz - 1, 0), min(iz + 1, gz - 1)


@numba.njit(cache=True, nogil=True, inline="always")
def _block_count(start, gx, gy, x0, x1, y0, y1, z0, z1):  # pragma: no cover - compiled
    nb = 0
    for jz in range(z0, z1 + 1):
        for jy in range(y0, y1 + 1):
            c0 = (jz * gy + jy) * gx
            nb += start[c0 + x1 + 1] - start[c0 + x0]
    return nb


@numba.njit(cache=True, nogil=True, inline="always")
def _block_load(gp, start, gx, gy, iy, iz, x0, x1, y0, y1, z0, z1, s0, fb, ib):  # pragma: no cover - compiled
    """Copy the block (9 contiguous rows) into the buffers; return where the cell's first point sits."""
    m = 0
    home = 0
    for jz in range(z0, z1 + 1):
        for jy in range(y0, y1 + 1):
            c0 = (jz * gy + jy) * gx
            lo = start[c0 + x0]
            if jz == iz and jy == iy:
                home = m + s0 - lo
            for j in range(lo, start[c0 + x1 + 1]):
                fb[_FX, m] = gp[j, 0]
                fb[_FY, m] = gp[j, 1]
                fb[_FZ, m] = gp[j, 2]
                ib[_IB, m] = j
                m += 1
    return home


@numba.njit(cache=True, nogil=True, inline="always")
def _block_guess(nb, k, h2m):  # pragma: no cover - compiled
    """Density guess of the k-th squared distance (px^2) from the block count."""
    return _GUESS * (k * 27.0 / (_BALL * max(nb - 1, 1))) ** (2.0 / 3.0) * h2m


@numba.njit(cache=True, nogil=True, inline="always")
def _threshold(fb, row, n, T, tmax, k, scale):  # pragma: no cover - compiled
    """A ``T <= tmax`` with ``k <= #{fb[row, :n] <= T} <= k + _SLOP`` if found in ``_ITERS`` counts.

    Counts are vectorised; ``T`` is rescaled by the density law
    ``T ~ count^(2/3)`` (``scale``) and kept inside the bracket found so far.
    Returns the smallest ``T`` seen holding at least ``k`` (maybe more than
    ``k + _SLOP``: ties), or -1 if none (then ``#{<= tmax} < k`` or the
    iterations ran out below ``k``).
    """
    nscale = scale.shape[0]
    lo_t = 0.0
    hi_t = np.inf
    best = -1.0
    T = min(T, tmax)
    for _ in range(_ITERS):
        cnt = 0
        for b in range(n):
            cnt += fb[row, b] <= T
        if cnt >= k:
            best = T
            hi_t = T
            if cnt <= k + _SLOP:
                return best
        else:
            lo_t = T
            if T >= tmax:
                return best
        Tn = T * scale[min(cnt, nscale - 1)]
        if not (lo_t < Tn < hi_t):
            Tn = 0.5 * (lo_t + hi_t) if hi_t < np.inf else 2.0 * T
        T = min(Tn, tmax)
    if best < 0.0 and lo_t < tmax:
        cnt = 0
        for b in range(n):
            cnt += fb[row, b] <= tmax
        if cnt >= k:
            best = tmax
    return best


@numba.njit(cache=True, nogil=True, inline="always")
def _neighbours(q, s0, home, nb, guess, ix, iy, iz, gp, start, order, origin, inv_h, h2m, gx, gy, gz, slack, k, scale, fb, ib, nbr):  # pragma: no cover - compiled
    """Sorted positions of the ``k`` nearest other points of sorted position ``q`` into ``nbr``.

    The block of ``q``'s cell is loaded in ``fb`` / ``ib`` (``nb`` points, the
    cell's own from ``home``). Returns 0, or ``-needed`` when the buffers are
    too small for the rare general case (nothing written).
    """
    px, py, pz = gp[q, 0], gp[q, 1], gp[q, 2]
    # 1. all squared distances in the block (vectorised); self -> NaN (never counted)
    for b in range(nb):
        ex = fb[_FX, b] - px
        ey = fb[_FY, b] - py
        ez = fb[_FZ, b] - pz
        fb[_FD, b] = ex * ex + ey * ey + ez * ez
    fb[_FD, home + q - s0] = np.nan
    # T*: squared distance from q to the outside of the block (inf: the block covers the grid)
    fx = min(max((px - origin[0]) * inv_h - ix, 0.0), 1.0)
    fy = min(max((py - origin[1]) * inv_h - iy, 0.0), 1.0)
    fz = min(max((pz - origin[2]) * inv_h - iz, 0.0), 1.0)
    lb = np.inf
    if ix > 1:
        lb = min(lb, fx + 1.0 - slack)
    if ix < gx - 2:
        lb = min(lb, 2.0 - fx - slack)
    if iy > 1:
        lb = min(lb, fy + 1.0 - slack)
    if iy < gy - 2:
        lb = min(lb, 2.0 - fy - slack)
    if iz > 1:
        lb = min(lb, fz + 1.0 - slack)
    if iz < gz - 2:
        lb = min(lb, 2.0 - fz - slack)
    tcap = lb * lb * h2m * (1.0 - 4e-16)  # d2 <= tcap: the point is in the block
    # 2. a threshold T <= tcap holding k to k + _SLOP block points
    best = _threshold(fb, _FD, nb, min(guess, tcap), tcap, k, scale)
    if best >= 0.0:
        mc = 0
        for b in range(nb):  # branch-free compaction of the block positions, then gather
            ib[_IO, mc] = b
            mc += fb[_FD, b] <= best
        for a in range(mc):
            b = ib[_IO, a]
            fb[_FC, a] = fb[_FD, b]
            ib[_IC, a] = ib[_IB, b]
    else:
        # 3. rare (near the grid's faces, clustered or isolated points): all points of a
        #    ball holding k of them, then the same threshold among those
        cnt = 0
        for b in range(nb):
            cnt += fb[_FD, b] <= tcap
        T = max(tcap * scale[min(cnt, scale.shape[0] - 1)] * 1.2, 1.2 * tcap, guess)
        while True:
            mc = _ball_scan(q, px, py, pz, ix, iy, iz, fx, fy, fz, T, gp, start, gx, gy, gz, slack, 1.0 / h2m, fb, ib)
            if mc < 0:
                return mc
            if mc >= k:
                break
            T *= 2.0
        best = _threshold(fb, _FC, mc, T * scale[min(mc, scale.shape[0] - 1)], T, k, scale)
        m2 = 0
        for b in range(mc):  # in place: m2 <= b
            d2 = fb[_FC, b]
            fb[_FC, m2] = d2
            ib[_IC, m2] = ib[_IC, b]
            m2 += d2 <= best
        mc = m2
    # 4. the k smallest candidates by (d2, original index): competition ranks
    #    (number of strictly smaller d2, vectorised); without a tie below k they
    #    are 0..k-1 once each, else ranks again with the index as tie-break
    mpad = min((mc + 15) // 16 * 16, fb.shape[1])  # whole vector iterations; pads rank last
    for a in range(mc, mpad):
        fb[_FC, a] = np.inf
    for a in range(mpad):
        ib[_IR, a] = 0
    for b in range(mc):
        db = fb[_FC, b]
        for a in range(mpad):
            ib[_IR, a] += fb[_FC, a] > db
    for r in range(k):
        nbr[r] = -1
    tie = False
    for a in range(mc):
        r = ib[_IR, a]
        if r < k:
            tie |= nbr[r] >= 0
            nbr[r] = ib[_IC, a]
    if tie:
        for a in range(mc):
            ib[_IO, a] = order[ib[_IC, a]]
        for a in range(mc):
            da = fb[_FC, a]
            oa = ib[_IO, a]
            r = 0
            for b in range(mc):
                db = fb[_FC, b]
                r += (db < da) | ((db == da) & (ib[_IO, b] < oa))
            if r < k:
                nbr[r] = ib[_IC, a]
    return 0


@numba.njit(cache=True, nogil=True, inline="always")
def _load_cell(c, gp, start, gx, gy, gz, k, h2m, fb, ib):  # pragma: no cover - compiled
    """Load cell ``c``'s block (growing the buffers if needed).

    Returns ``(fb, ib, nb, home, guess, ix, iy, iz)`` for :func:`_query`.
    """
    ix, iy, iz, x0, x1, y0, y1, z0, z1 = _block_range(c, gx, gy, gz)
    nb = _block_count(start, gx, gy, x0, x1, y0, y1, z0, z1)
    if nb > fb.shape[1]:
        fb = np.empty((5, 2 * nb), np.float64)
        ib = np.empty((5, 2 * nb), np.int64)
    home = _block_load(gp, start, gx, gy, iy, iz, x0, x1, y0, y1, z0, z1, start[c], fb, ib)
    return fb, ib, nb, home, _block_guess(nb, k, h2m), ix, iy, iz


@numba.njit(cache=True, nogil=True, inline="always")
def _query(q, s0, home, nb, guess, ix, iy, iz, gp, start, order, origin, inv_h, h2m, gx, gy, gz, slack, k, scale, fb, ib, nbr):  # pragma: no cover - compiled
    """:func:`_neighbours` of ``q`` into ``nbr``, growing the buffers (keeping the block) when asked.

    Returns the buffers ``(fb, ib)``.
    """
    while True:
        need = _neighbours(q, s0, home, nb, guess, ix, iy, iz, gp, start, order, origin, inv_h, h2m, gx, gy, gz, slack, k, scale, fb, ib, nbr)
        if need == 0:
            return fb, ib
        fb2 = np.empty((5, -2 * need), np.float64)
        ib2 = np.empty((5, -2 * need), np.int64)
        fb2[:, :nb] = fb[:, :nb]
        ib2[:, :nb] = ib[:, :nb]
        fb = fb2
        ib = ib2


@numba.njit(cache=True, nogil=True)
def _knn_cells(gp, start, order, origin, h, gx, gy, gz, slack, k, scale, c_lo, c_hi, out):  # pragma: no cover - compiled
    """``out[i]``: original indices of the k nearest other points of every point ``i`` in cells ``[c_lo, c_hi)``."""
    inv_h = 1.0 / h
    h2m = h * h * (1.0 - _REL_MARGIN)
    fb = np.empty((5, 256), np.float64)
    ib = np.empty((5, 256), np.int64)
    nbr = np.empty(k, np.int64)
    for c in range(c_lo, c_hi):
        s0 = start[c]
        if s0 == start[c + 1]:
            continue
        fb, ib, nb, home, guess, ix, iy, iz = _load_cell(c, gp, start, gx, gy, gz, k, h2m, fb, ib)
        for q in range(s0, start[c + 1]):
            fb, ib = _query(q, s0, home, nb, guess, ix, iy, iz, gp, start, order, origin, inv_h, h2m, gx, gy, gz, slack, k, scale, fb, ib, nbr)
            o = order[q]
            for r in range(k):
                out[o, r] = order[nbr[r]]


def _cell_batches(grid: CellGrid, size: int) -> list[tuple[int, int]]:
    """Ranges of whole cells ``[c_lo, c_hi)`` holding about ``size`` points each (none empty)."""
    n = len(grid)
    cuts = np.unique(np.searchsorted(grid.start, np.arange(0, n, max(int(size), 1)), side="right") - 1)
    cuts = np.append(cuts, len(grid.start) - 1)
    return [(int(a), int(b)) for a, b in zip(cuts[:-1], cuts[1:]) if grid.start[b] > grid.start[a]]


def _batch_size(n: int, workers: int, largest: int) -> int:
    """About 4 batches per worker, between ``_MIN_BATCH`` and ``largest`` points."""
    return int(min(largest, max(_MIN_BATCH, -(-n // (4 * max(int(workers), 1))))))


@lru_cache(maxsize=64)
def _scale_table(k: int) -> np.ndarray:
    """``((k + 1/2) / c)^(2/3)`` for counts ``c = 0..4k + 1`` (0 counts as 1/2): density rescaling of T."""
    c = np.maximum(np.arange(4 * k + 2, dtype=np.float64), 0.5)
    out = ((k + 0.5) / c) ** (2.0 / 3.0)
    out.setflags(write=False)
    return out


def knn_grid(grid: CellGrid, k: int, workers: int | None = None) -> np.ndarray:
    """:func:`knn` on a prepared :class:`CellGrid`: original indices ``(n, k)`` int64."""
    k = int(k)
    if not 1 <= k < len(grid):
        raise StereograinError(f"need 1 <= k < n = {len(grid)}, got k = {k}")
    nw = default_workers() if workers is None else int(workers)
    if nw < 1:
        raise StereograinError(f"workers must be at least 1, got {workers!r}")
    out = np.empty((len(grid), k), np.int64)
    gx, gy, gz = (int(d) for d in grid.dims)
    scale = _scale_table(k)

    def job(batch: tuple[int, int]) -> None:
        _knn_cells(grid.points, grid.start, grid.order, grid.origin, grid.h, gx, gy, gz, grid.slack, k, scale, batch[0], batch[1], out)

    run_all(job, _cell_batches(grid, _batch_size(len(grid), nw, 1 << 16)), nw)
    return out


def knn(points: np.ndarray, k: int, points_per_cell: float = POINTS_PER_CELL, workers: int | None = None) -> np.ndarray:
    """Indices of every point's ``k`` nearest other points (exact; module notes).

    Parameters
    ----------
    points : (n, 3) array
        Finite coordinates (any unit; px for seeds), ``n > k``.
    k : int
        Neighbours per point (``>= 1``).
    points_per_cell : float
        Mean grid occupancy over the bounding box (speed only; the result
        does not depend on it).
    workers : int, optional
        Threads (default: numba's thread count); the result does not depend on it.

    Returns
    -------
    (n, k) int64
        Row ``i``: the indices ``j != i`` of the ``k`` nearest points by
        increasing Euclidean distance; equal distances by increasing index.

    Raises
    ------
    StereograinError
        Wrong shape or dtype, NaN / infinite coordinates, ``k < 1`` or ``n <= k``.
    """
    p = _check_points(points, k)
    return knn_grid(cell_grid(p, points_per_cell), int(k), workers)
