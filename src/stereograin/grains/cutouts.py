"""Cutouts ``T_2D`` and ``T_3D`` (Eq. 14-16): 32 x 32 soft-map images for the discriminator.

Layout. A cutout image is ``(32, 32, C)``: entry ``[x - 1, y - 1, c]`` is the
soft membership (Eq. 11) of grid point ``(x, y)``, ``x, y = 1..32``, in
channel ``c`` (the paper's ``I_{x,y,i}``). Batches are ``(B, 32, 32, C)``;
the discriminator takes ``(B, C, 32, 32)`` (:func:`to_nchw`).

Candidates. Each pixel's soft map is evaluated over its ``k`` cells of
lowest exact cost ``|x - s_i|_{M_i} - r_i`` only (memory ``O(P k)`` in the
autograd graph); the other cells get 0. The winner is always among them, so
the argmax is the exact labelling, and the dropped softmax terms are the
smallest ones. Euclidean nearest seeds are not enough: radially elongated
cells (``D_0`` small) win pixels 20+ px and 100+ seeds away. The selection
runs without gradient in float64 by
:func:`~stereograin.grains.candidates.exact_candidates` (pruned, equal to
brute force).

Units: px (EBSD pixels of 50 nm); the cutout offset ``p`` is in ``(0, 80]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numba
import numpy as np
import torch

from ..errors import StereograinError
from ..fit2d import FittedSection
from ..tessellation import restricted_metrics, soft_map
from .candidates import exact_candidates
from .seeds import CUTOUT, P_MAX

__all__ = [
    "cutout_grid",
    "cutout_points_3d",
    "t3d",
    "t2d",
    "t3d_batch",
    "t2d_batch",
    "truncate_channels",
    "visible_grains",
    "to_nchw",
    "CutoutBatch",
    "CUTOUT_AREA",
    "soft_cutouts",
    "onehot_cutouts",
    "rotated_cutout_points",
    "label_cutouts",
]

#: Cutout area in px^2 (visible grains per unit area, Eq. 13).
CUTOUT_AREA = float(CUTOUT * CUTOUT)


class CutoutBatch(NamedTuple):
    """A batch of truncated cutouts.

    images : (B, 32, 32, keep) tensor
        Channels sorted by their sums, descending; zero-padded.
    visible : (B,) tensor
        Visible grains per px^2 of each untruncated cutout (Eq. 13).
    """

    images: torch.Tensor
    visible: torch.Tensor


def cutout_grid(p: float | np.ndarray, beta: float | np.ndarray = 0.0) -> np.ndarray:
    """Grid points of 2D cutouts (Eq. 14): ``R_beta (x + p, y - 16.5)``, ``x, y = 1..32``.

    Parameters
    ----------
    p : float or (m,) array
        Radial offset(s) in px.
    beta : float or (m,) array
        Rotation angle(s) in radians.

    Returns
    -------
    (1024, 2) float64, or (m, 1024, 2) for arrays
        Row ``(x - 1) * 32 + (y - 1)`` is the point of ``(x, y)`` (px, relative
        to the particle centre).
    """
    single = np.ndim(p) == 0 and np.ndim(beta) == 0
    pp, bb = np.broadcast_arrays(np.atleast_1d(np.asarray(p, dtype=np.float64)), np.atleast_1d(np.asarray(beta, dtype=np.float64)))
    a = np.arange(1, CUTOUT + 1, dtype=np.float64)
    x = (a[None, :] + pp[:, None])[:, :, None]  # (m, 32, 1): x-major
    y = (a - (CUTOUT + 1) / 2.0)[None, None, :]  # (1, 1, 32)
    c, s = np.cos(bb)[:, None, None], np.sin(bb)[:, None, None]
    out = np.stack([c * x - s * y, s * x + c * y], axis=-1).reshape(len(pp), -1, 2)
    return out[0] if single else out


def cutout_points_3d(p: float) -> np.ndarray:
    """Points of a 3D cutout (Eq. 16): ``(x + p, y - 16.5, 0)``, ``(1024, 3)`` float64 px."""
    g = cutout_grid(p)
    return np.concatenate([g, np.zeros((len(g), 1))], axis=1)



# Hand-written: exact labels of many small diagrams at once (one per cutout). GBPD.label_points
# and exact_candidates pay a per-call setup that dominates for a 1024-pixel cutout of a
# few-hundred-cell section; here one compiled call labels the whole batch.
@numba.njit(inline="always", cache=True)
def _quad(x, seeds, M, j):  # pragma: no cover - compiled
    """``(x - s_j)^T M_j (x - s_j)`` for one point ``x`` (d,)."""
    d = x.shape[0]
    q = 0.0
    for a in range(d):
        da = x[a] - seeds[j, a]
        for e in range(d):
            q += da * M[j, a, e] * (x[e] - seeds[j, e])
    return q


@numba.njit(inline="always", cache=True)
def _cost(x, seeds, M, r, j):  # pragma: no cover - compiled
    """``|x - s_j|_{M_j} - r_j`` for one point ``x`` (d,)."""
    return math.sqrt(max(_quad(x, seeds, M, j), 0.0)) - r[j]


@numba.njit(cache=True, nogil=True)
def _group_sphere(points, b, groups, g, cg):  # pragma: no cover - compiled
    """Centre (into ``cg``) and radius of the sphere about the mean of cutout ``b``'s point group ``g``."""
    S = groups.shape[1]
    d = cg.shape[0]
    for a in range(d):
        cg[a] = 0.0
        for k in range(S):
            cg[a] += points[b, groups[g, k], a] / S
    rg = 0.0
    for k in range(S):
        q = 0.0
        for a in range(d):
            q += (points[b, groups[g, k], a] - cg[a]) ** 2
        rg = max(rg, math.sqrt(q))
    return rg


@numba.njit(parallel=True, cache=True)
def _label_cutouts(points, seeds, M, r, lam, mu_root, start, end, groups, out):  # pragma: no cover - compiled
    """Exact 0-based winner (global index) of every point of cutout ``b`` among seeds ``start[b]:end[b]``.

    Safe pruning: with ``c`` and ``rho`` the centre and radius of the cutout's
    bounding sphere, ``|x - s_j|_{M_j} >= sqrt(lam_j) |x - s_j| >= sqrt(lam_j) (|s_j - c| - rho)``
    for every point ``x`` of the cutout. ``U``, the largest over the point
    groups of the least upper bound ``|c_g - s_j|_{M_j} + sqrt(mu_max_j) rho_g - r_j``
    among the seeds near ``c`` (``c_g``, ``rho_g``: the group's sphere), bounds
    every point's true best cost from above, so a seed whose lower bound
    exceeds ``U`` wins no point. The rest
    (the pool) get a lower bound again for each group of points (``groups``:
    rows of point indices, e.g. 8 x 8 blocks of a 32 x 32 cutout, whose
    smaller spheres give tighter bounds; the larger of the bound above and
    ``|c_g - s_j|_{M_j} - sqrt(mu_max_j) rho_g``, ``mu_max_j`` at least the
    largest eigenvalue of ``M_j``; ``mu_root`` holds ``sqrt(mu_max)``) and are evaluated, per
    point, in increasing bound until the bound exceeds the point's best cost;
    ties go to the lower index, as in :meth:`GBPD.label_points_bruteforce`.
    """
    B, P, d = points.shape
    for b in numba.prange(B):
        s0, s1 = start[b], end[b]
        n = s1 - s0
        c = np.zeros(d)
        for p in range(P):
            for a in range(d):
                c[a] += points[b, p, a] / P
        rho = 0.0
        for p in range(P):
            q = 0.0
            for a in range(d):
                q += (points[b, p, a] - c[a]) ** 2
            rho = max(rho, math.sqrt(q))
        dist = np.empty(n)
        for j in range(n):
            q = 0.0
            for a in range(d):
                q += (seeds[s0 + j, a] - c[a]) ** 2
            dist[j] = math.sqrt(q)
        pad = 4.0
        while True:
            cnt = 0
            for j in range(n):
                if dist[j] <= rho + pad:
                    cnt += 1
            if cnt >= 1:
                break
            pad *= 2.0
        near = np.empty(cnt, np.int64)
        cnt = 0
        for j in range(n):
            if dist[j] <= rho + pad:
                near[cnt] = s0 + j
                cnt += 1
        # U: per group of points, the least over the near seeds of an upper bound of the seed's cost
        # on the group's sphere (|x - s_j|_M <= |c_g - s_j|_M + sqrt(mu_max_j) rho_g, M_j's norm being
        # at most sqrt(mu_max_j) times the Euclidean); the largest over the groups bounds every
        # point's best cost (a few hundred evaluations, not P x cnt)
        ng = groups.shape[0]
        cgs = np.empty((ng, d))
        rgs = np.empty(ng)
        for g in range(ng):
            rgs[g] = _group_sphere(points, b, groups, g, cgs[g])
        U = -np.inf
        for g in range(ng):
            Ug = np.inf
            for jj in range(cnt):
                j = near[jj]
                Ug = min(Ug, math.sqrt(max(_quad(cgs[g], seeds, M, j), 0.0)) + mu_root[j] * rgs[g] - r[j])
            U = max(U, Ug)
        pool = np.empty(n, np.int64)
        low = np.empty(n)
        m = 0
        for j in range(n):
            lb = math.sqrt(lam[s0 + j]) * max(dist[j] - rho, 0.0) - r[s0 + j]
            if lb <= U + 1e-9 * (abs(U) + 1.0):
                pool[m] = s0 + j
                low[m] = lb
                m += 1
        # per group: the pool in increasing lower bound over the group's sphere; a point stops at
        # the first candidate whose bound exceeds its best cost (it, and every later one, costs
        # more everywhere in the group)
        lowg = np.empty(m)
        sel = np.empty(m, np.int64)
        S = groups.shape[1]
        for g in range(ng):
            cg, rg = cgs[g], rgs[g]
            Ug = np.inf
            for jj in range(m):
                j = pool[jj]
                q = 0.0
                for a in range(d):
                    q += (seeds[j, a] - cg[a]) ** 2
                qm = math.sqrt(max(_quad(cg, seeds, M, j), 0.0))
                # two lower bounds of |x - s_j|_M on the group's sphere: sqrt(lam) (|c_g - s_j| - rho_g),
                # and |c_g - s_j|_M - sqrt(mu_max) rho_g (triangle inequality in the M norm: tighter
                # along a cell's stiff axes); the upper bound |c_g - s_j|_M + sqrt(mu_max) rho_g
                lb1 = math.sqrt(lam[j]) * max(math.sqrt(q) - rg, 0.0)
                lb2 = qm * (1.0 - 1e-12) - mu_root[j] * rg
                lowg[jj] = max(lb1, lb2) - r[j]
                Ug = min(Ug, qm * (1.0 + 1e-12) + mu_root[j] * rg - r[j])
            # the cells that may win a point of the group, in increasing lower bound (an insertion
            # sort: a few dozen); a point stops at the first whose bound exceeds its best cost (it, and
            # every later one, costs more everywhere in the group)
            thr = Ug + 1e-9 * (abs(Ug) + 1.0)
            ns = 0
            for jj in range(m):
                if lowg[jj] <= thr:
                    t = ns
                    while t > 0 and lowg[sel[t - 1]] > lowg[jj]:
                        sel[t] = sel[t - 1]
                        t -= 1
                    sel[t] = jj
                    ns += 1
            for k in range(S):
                p = groups[g, k]
                best = np.inf
                arg = -1
                for u in range(ns):
                    jj = sel[u]
                    if lowg[jj] > best + 1e-9 * (abs(best) + 1.0):  # slack: the bounds' rounding
                        break
                    j = pool[jj]
                    cst = _cost(points[b, p], seeds, M, r, j)
                    if cst < best or (cst == best and j < arg):
                        best = cst
                        arg = j
                out[b, p] = arg


def label_cutouts(points: np.ndarray, seeds: np.ndarray, M: np.ndarray, r: np.ndarray, start: np.ndarray,
                  end: np.ndarray, lam: np.ndarray | None = None) -> np.ndarray:
    """Exact labels of ``B`` cutouts, each of its own diagram, in one compiled call.

    Parameters
    ----------
    points : (B, P, d) float64
        Cutout points in px.
    seeds, M, r : (N, d), (N, d, d), (N,) float64
        The diagrams' cells, concatenated; cutout ``b`` uses cells ``start[b]:end[b]``.
    start, end : (B,) int64
    lam : (N,) float64, optional
        Smallest eigenvalue of each ``M`` (a restricted metric's smallest
        ``D`` entry); computed when not given. Only the pruning uses it.

    Returns
    -------
    (B, P) int64
        Global index of the winning cell (lowest cost, ties to the lower index).
    """
    pts = np.ascontiguousarray(points, dtype=np.float64)
    st, en = np.asarray(start, np.int64), np.asarray(end, np.int64)
    if pts.ndim != 3 or np.any(en <= st) or len(st) != len(pts):
        raise StereograinError("label_cutouts needs points (B, P, d) and a non-empty cell range per cutout")
    M = np.ascontiguousarray(M, dtype=np.float64)
    lam = np.linalg.eigvalsh(M)[:, 0] if lam is None else np.ascontiguousarray(lam, dtype=np.float64)
    # sqrt of the Frobenius norm (>= the largest eigenvalue), padded for rounding
    mu_root = np.sqrt(np.sqrt(np.einsum("nij,nij->n", M, M)) * (1.0 + 1e-12)) * (1.0 + 1e-12)
    out = np.empty(pts.shape[:2], np.int64)
    _label_cutouts(pts, np.ascontiguousarray(seeds, dtype=np.float64), M, np.ascontiguousarray(r, dtype=np.float64),
                   lam, mu_root, st, en, _point_groups(pts.shape[1]), out)
    return out


_GROUP = 8  # label_cutouts: a 32 x 32 cutout's points go in 8 x 8 blocks (tighter pruning per block)


def _point_groups(P: int) -> np.ndarray:
    """Rows of point indices for :func:`_label_cutouts`: 8 x 8 blocks of a cutout grid (``cutout_grid``'s row order), else one row."""
    if P != CUTOUT * CUTOUT:
        return np.arange(P, dtype=np.int64)[None]
    idx = np.arange(P, dtype=np.int64).reshape(CUTOUT // _GROUP, _GROUP, CUTOUT // _GROUP, _GROUP)
    return np.ascontiguousarray(idx.transpose(0, 2, 1, 3).reshape(-1, _GROUP * _GROUP))


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float64)


def _soft_image(
    points: np.ndarray,
    seeds: torch.Tensor,
    M: torch.Tensor,
    r: torch.Tensor,
    temperature: float,
    k: int,
) -> tuple[torch.Tensor, np.ndarray]:
    """Soft map on ``points`` over the union of candidate cells: ``(P, U)`` and the ``U`` cell ids."""
    n = seeds.shape[0]
    if n < 1:
        raise StereograinError("a cutout needs at least one seed")
    k = min(int(k), n)
    idx = exact_candidates(points, _np(seeds), _np(M), _np(r), k)
    ids, inv = np.unique(idx, return_inverse=True)
    x = torch.as_tensor(points, dtype=M.dtype, device=M.device)
    cand = torch.as_tensor(idx, device=M.device)
    soft = soft_map(x, seeds, M, r, temperature, candidates=cand)  # (P, k)
    inv_t = torch.as_tensor(inv.reshape(idx.shape), device=M.device)
    img = torch.zeros(len(points), len(ids), dtype=soft.dtype, device=soft.device).scatter(1, inv_t, soft)
    return img, ids


def _as_seeds(seeds: np.ndarray | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if isinstance(seeds, np.ndarray):
        seeds = np.array(seeds)  # a writable copy (fitted sections hold read-only arrays)
    return torch.as_tensor(seeds, dtype=like.dtype, device=like.device)


def t3d(
    seeds: np.ndarray | torch.Tensor,
    M: torch.Tensor,
    r: torch.Tensor,
    p: float,
    temperature: float = 1.0,
    candidates: int = 64,
    return_ids: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, np.ndarray]:
    """Untruncated 3D cutout in the plane ``z = 0`` (Eq. 16), differentiable in ``M`` and ``r``.

    Parameters
    ----------
    seeds : (n, 3) array or tensor
        Seed positions in px (relative to the particle centre).
    M : (n, 3, 3) tensor
        Metrics ``Q^T diag(D) Q``.
    r : (n,) tensor
        Offsets in px.
    p : float
        Cutout offset in px.
    temperature : float
        Softmax temperature (px).
    candidates : int
        Cells per pixel evaluated (``k`` lowest exact costs; module notes).
    return_ids : bool
        Also return the seed index of each channel.

    Returns
    -------
    (32, 32, U) tensor
        Channels: the seeds that are a candidate of some pixel, by increasing
        index; optionally with their indices ``(U,)`` int64.
    """
    s = _as_seeds(seeds, M)
    img, ids = _soft_image(cutout_points_3d(p), s, M, r, temperature, candidates)
    img = img.reshape(CUTOUT, CUTOUT, -1)
    return (img, ids) if return_ids else img


def _section_markers(
    section: FittedSection, rng: np.random.Generator, augment: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    sec = section.augment(rng, 0.8, 1.2) if augment else section
    return sec.seeds, restricted_metrics(sec.seeds, sec.D), np.array(sec.r)


def t2d(
    section: FittedSection,
    p: float,
    beta: float,
    rng: np.random.Generator | int | None = None,
    augment: bool = True,
    temperature: float = 1.0,
    candidates: int = 64,
    return_ids: bool = False,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> torch.Tensor | tuple[torch.Tensor, np.ndarray]:
    """Untruncated 2D cutout of a fitted section (Eq. 14-15), optionally augmented.

    Parameters
    ----------
    section : FittedSection
        Restricted 2D GBPD, seeds in px relative to its origin (particle centre).
    p : float
        Radial offset in px.
    beta : float
        Rotation angle in radians.
    rng : numpy Generator, int seed or None
        For the augmentation (``r_i`` and each ``D_i`` entry times ``U(0.8, 1.2)``).
    augment : bool
    temperature : float
    candidates : int
    return_ids : bool
        Also return the cell index of each channel.

    Returns
    -------
    (32, 32, U) tensor (no gradient)
    """
    g = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    s, M, r = _section_markers(section, g, augment)
    Mt = torch.as_tensor(M, dtype=dtype, device=device)
    img, ids = _soft_image(
        cutout_grid(p, beta), _as_seeds(s, Mt), Mt, torch.as_tensor(r, dtype=dtype, device=device),
        temperature, candidates,
    )
    img = img.reshape(CUTOUT, CUTOUT, -1)
    return (img, ids) if return_ids else img


def truncate_channels(img: torch.Tensor, k: int = 12) -> torch.Tensor:
    """Keep the ``k`` channels with the largest sums, in descending order; zero-pad to ``k``.

    Parameters
    ----------
    img : (..., 32, 32, C) tensor

    Returns
    -------
    (..., 32, 32, k) tensor
    """
    C = img.shape[-1]
    if C < k:
        img = torch.cat([img, img.new_zeros(*img.shape[:-1], k - C)], dim=-1)
    sums = img.detach().sum(dim=(-3, -2))  # (..., C)
    order = torch.sort(sums, dim=-1, descending=True, stable=True).indices[..., :k]
    idx = order[..., None, None, :].expand(*img.shape[:-1], k)
    return torch.gather(img, -1, idx)


def visible_grains(img: torch.Tensor) -> torch.Tensor:
    """Visible grains per px^2: channels that win (argmax) at least one pixel, over the cutout area.

    Pass the untruncated image (a truncated one loses the pixels of dropped grains).

    Parameters
    ----------
    img : (..., 32, 32, C) tensor

    Returns
    -------
    (...) tensor
    """
    win = img.detach().flatten(-3, -2).argmax(dim=-1)  # (..., P)
    hit = torch.zeros(*win.shape[:-1], img.shape[-1], device=img.device).scatter_(-1, win, 1.0)
    return hit.sum(-1) / (img.shape[-3] * img.shape[-2])


def to_nchw(img: torch.Tensor) -> torch.Tensor:
    """``(B, 32, 32, C)`` -> ``(B, C, 32, 32)`` (the discriminator's layout)."""
    return img.permute(0, 3, 1, 2)


@numba.njit(cache=True, nogil=True)
def _number_cells(cells, local, counts):  # pragma: no cover - compiled
    # Per cutout: a dense table over its cell range (one realisation's cells, a few thousand;
    # a sort where the range is sparse) marks the present cells, a scan numbers them in
    # increasing id, a gather writes each entry's number. About 20 us per cutout of 16,384
    # entries; NumPy's passes over the whole batch (a (B, cell range) count table, its
    # cumulative sum and gathers) took ~16 ms per 64.
    B, E = cells.shape
    table = np.empty(0, np.int64)
    for b in range(B):
        lo = cells[b, 0]
        hi = lo
        for e in range(E):
            c = cells[b, e]
            lo = min(lo, c)
            hi = max(hi, c)
        n = hi - lo + 1
        if n > 4 * E + 4096:  # a sparse range (cells of a large tessellation): sort instead
            u = np.unique(cells[b])
            local[b] = np.searchsorted(u, cells[b])
            counts[b] = u.shape[0]
            continue
        if table.shape[0] < n:
            table = np.empty(n, np.int64)
        table[:n] = 0
        for e in range(E):
            table[cells[b, e] - lo] = 1
        m = 0
        for t in range(n):
            if table[t]:
                table[t] = m
                m += 1
        for e in range(E):
            local[b, e] = table[cells[b, e] - lo]
        counts[b] = m


def _segment_ids(cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Number the distinct cells of each cutout ``0..U_b - 1`` (by increasing cell id).

    ``cells`` (B, ...) int64 with at least one entry per cutout. Returns
    ``local`` (same shape, the numbers) and ``counts`` (B,), the distinct
    cells ``U_b`` of each cutout.
    """
    B = cells.shape[0]
    flat = np.ascontiguousarray(cells, dtype=np.int64).reshape(B, -1)
    local = np.empty_like(flat)
    counts = np.empty(B, np.int64)
    _number_cells(flat, local, counts)
    return local.reshape(cells.shape), counts


def soft_cutouts(
    points: np.ndarray,
    seeds: torch.Tensor,
    M: torch.Tensor,
    r: torch.Tensor,
    candidates: np.ndarray,
    temperature: float = 1.0,
    keep: int = 12,
) -> CutoutBatch:
    """Truncated soft cutouts (Eq. 11, 16) of one or several tessellations, given each pixel's candidate cells.

    Parameters
    ----------
    points : (B, P, d) array
        Cutout points in px (``P = 1024``, row-major 32 x 32).
    seeds : (N, d) tensor
    M : (N, d, d) tensor
    r : (N,) tensor
        Cells of all tessellations concatenated (px); differentiable.
    candidates : (B, P, k) int64 array
        Indices into the ``N`` cells; the winner must be among them (e.g. the
        ``k`` lowest exact costs).
    temperature : float
        Softmax temperature in px.
    keep : int
        Channels kept after sorting by their sums (descending).

    Returns
    -------
    CutoutBatch
        ``images`` (B, 32, 32, keep), differentiable in ``seeds``, ``M``, ``r``;
        ``visible`` (B,) grains that win a pixel, per px^2.
    """
    B, P, _ = points.shape
    dev = M.device
    glob = torch.as_tensor(candidates, device=dev)
    x = torch.as_tensor(points.reshape(B * P, -1), dtype=M.dtype, device=dev)
    k = candidates.shape[-1]
    soft = soft_map(x, seeds, M, r, temperature, candidates=glob.reshape(B * P, k)).reshape(B, P, k)
    local_np, n_cells = _segment_ids(candidates)
    n_max = int(n_cells.max())
    local = torch.as_tensor(local_np, device=dev)
    # channel sums per (cutout, cell), cells numbered within their cutout
    sums = torch.zeros(B, n_max, dtype=soft.dtype, device=dev).scatter_add(
        1, local.reshape(B, P * k), soft.detach().reshape(B, P * k)
    )
    top_v, top_i = torch.topk(sums, min(keep, n_max), dim=1)  # (B, keep)
    rank = torch.full((B, n_max), keep, dtype=torch.long, device=dev)
    ranks = torch.arange(top_i.shape[1], device=dev).expand_as(top_i)
    rank.scatter_(1, top_i, torch.where(top_v > 0, ranks, torch.full_like(ranks, keep)))
    slot = torch.gather(rank, 1, local.reshape(B, P * k)).reshape(B, P, k)
    img = torch.zeros(B, P, keep + 1, dtype=soft.dtype, device=dev).scatter_add(2, slot, soft)[..., :keep]
    winners = torch.gather(glob, 2, soft.detach().argmax(dim=2, keepdim=True))[..., 0]  # (B, P)
    w = torch.sort(winners, dim=1).values
    n_vis = 1 + (w[:, 1:] != w[:, :-1]).sum(dim=1)
    return CutoutBatch(img.reshape(B, CUTOUT, CUTOUT, keep), n_vis.to(soft.dtype) / CUTOUT_AREA)


@numba.njit(cache=True, nogil=True)
def _onehot(lab, keep, img, visible):  # pragma: no cover - compiled
    # Per cutout: its distinct cells and their pixel counts (an open-addressing table of 2P slots;
    # neighbouring pixels mostly repeat the last cell), their ranks (count descending, cell id
    # ascending: the cells sorted, then a stable sort by count) and a 1 at each pixel's rank
    # below keep. A few microseconds per cutout; NumPy's passes over the whole batch (a dense
    # (B, cell range) count table, lexsort, scatter) took several milliseconds per batch.
    B, P = lab.shape
    size = 1
    while size < 2 * P:
        size *= 2
    keys = np.empty(size, np.int64)
    slot = np.empty(size, np.int64)
    cells = np.empty(P, np.int64)
    counts = np.empty(P, np.int64)
    loc = np.empty(P, np.int64)
    rank = np.empty(P, np.int64)
    for b in range(B):
        keys[:] = -1
        n = 0
        last_c = -1
        last_i = -1
        for p in range(P):
            c = lab[b, p]
            if c != last_c:
                h = ((c * 0x2545F4914F6CDD1D) >> 24) & (size - 1)  # the product wraps: a hash, any bits do
                while keys[h] != -1 and keys[h] != c:
                    h = (h + 1) & (size - 1)
                if keys[h] == -1:
                    keys[h] = c
                    slot[h] = n
                    cells[n] = c
                    counts[n] = 0
                    n += 1
                last_c = c
                last_i = slot[h]
            counts[last_i] += 1
            loc[p] = last_i
        by_cell = np.argsort(cells[:n])
        by_count = np.argsort(-counts[by_cell], kind="mergesort")  # stable: equal counts keep cell order
        for i in range(n):
            rank[by_cell[by_count[i]]] = i
        for p in range(P):
            r = rank[loc[p]]
            if r < keep:
                img[b, p, r] = 1.0
        visible[b] = n / (CUTOUT * CUTOUT)


def onehot_cutouts(
    labels: np.ndarray, keep: int = 12, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
) -> CutoutBatch:
    """Cutouts rounded to one-hot (the discriminator's inputs, Algorithm 2 line 12) from exact labels.

    The rounding ``xi`` of a soft cutout is the one-hot image of its argmax
    (the exact labelling) wherever some cell holds more than half of a pixel;
    we take the exact labelling everywhere. Channels are sorted by their
    pixel counts (descending, ties to the lower cell id) and the ``keep``
    largest kept, as for soft cutouts.

    Parameters
    ----------
    labels : (B, P) int array
        Exact cell id of every pixel (any non-negative ids; ``P = 1024``).
    keep : int

    Returns
    -------
    CutoutBatch
        ``images`` (B, 32, 32, keep) of 0/1; ``visible`` (B,) distinct cells per px^2.
    """
    lab = np.ascontiguousarray(labels, dtype=np.int64)
    if lab.ndim != 2 or lab.shape[1] != CUTOUT * CUTOUT or lab.min() < 0:
        raise StereograinError(f"labels must be non-negative ids of shape (B, {CUTOUT * CUTOUT}), got {lab.shape}")
    B = lab.shape[0]
    img = np.zeros((B, CUTOUT * CUTOUT, keep), dtype=np.float32)
    visible = np.empty(B)
    _onehot(lab, int(keep), img, visible)
    return CutoutBatch(
        torch.as_tensor(img.reshape(B, CUTOUT, CUTOUT, keep), dtype=dtype, device=device),
        torch.as_tensor(visible, dtype=dtype, device=device),
    )


def rotated_cutout_points(p: np.ndarray, rotations: np.ndarray) -> np.ndarray:
    """3D cutouts in planes through the particle centre: ``R_j (x + p_j, y - 16.5, 0)``.

    By the rotation invariance of the model's law (see
    :mod:`stereograin.grains.generator`), a cutout in the rotated plane has the
    law of Eq. 16's cutout in ``z = 0``; several cutouts of one realisation
    in different planes share the cost of drawing it.

    Parameters
    ----------
    p : (m,) offsets in px
    rotations : (m, 3, 3) rotation matrices

    Returns
    -------
    (m, 1024, 3) float64 points in px
    """
    p = np.asarray(p, dtype=np.float64).reshape(-1)
    R = np.asarray(rotations, dtype=np.float64)
    if R.shape != (len(p), 3, 3):
        raise StereograinError(f"need one (3, 3) rotation per offset, got {R.shape} for {len(p)} offsets")
    # Eq. 16's cutouts of every offset at once: (x + p_j, y - 16.5, 0), x-major as cutout_grid,
    # rotated coordinate by coordinate: the sums einsum("mij,mpj->mpi") forms, in its order
    # (the same bits), at a third of its time. The "R * 0.0" term is the einsum's z term
    # (z = 0): it turns a -0.0 sum into +0.0 as the einsum does, so it must stay
    m = len(p)
    a = np.arange(1, CUTOUT + 1, dtype=np.float64)
    x = np.broadcast_to((a[None, :] + p[:, None])[:, :, None], (m, CUTOUT, CUTOUT)).reshape(m, -1)
    y = np.broadcast_to((a - (CUTOUT + 1) / 2.0)[None, None, :], (m, CUTOUT, CUTOUT)).reshape(m, -1)
    out = np.empty((m, CUTOUT * CUTOUT, 3))
    for i in range(3):
        out[..., i] = (R[:, i, 0, None] * x + R[:, i, 1, None] * y) + R[:, i, 2, None] * 0.0
    return out


def _batch_images(
    points: np.ndarray,
    seeds: Sequence[torch.Tensor],
    M: Sequence[torch.Tensor],
    r: Sequence[torch.Tensor],
    temperature: float,
    k: int,
    keep: int,
) -> CutoutBatch:
    """Truncated soft cutouts of ``B`` independent tessellations in one soft-map call.

    ``points`` (B, P, d); the b-th tessellation is ``(seeds[b], M[b], r[b])``.
    """
    B = points.shape[0]
    counts = np.array([len(s) for s in seeds])
    if counts.min() < 1:
        raise StereograinError("every cutout needs at least one seed")
    k = int(min(k, counts.min()))
    off = np.concatenate([[0], np.cumsum(counts)[:-1]])
    cand = np.stack([exact_candidates(points[b], _np(seeds[b]), _np(M[b]), _np(r[b]), k) for b in range(B)])
    glob = cand + off[:, None, None]
    return soft_cutouts(points, torch.cat(list(seeds)), torch.cat(list(M)), torch.cat(list(r)), glob, temperature, keep)


def t3d_batch(
    tessellations: Sequence[tuple[np.ndarray | torch.Tensor, torch.Tensor, torch.Tensor]],
    p: Sequence[float] | np.ndarray,
    temperature: float = 1.0,
    candidates: int = 64,
    keep: int = 12,
) -> CutoutBatch:
    """``T_3D`` for a batch: one cutout per tessellation, truncated to ``keep`` channels.

    Parameters
    ----------
    tessellations : sequence of ``(seeds (n_b, 3), M (n_b, 3, 3) tensor, r (n_b,) tensor)``
        Independent realisations (e.g. one training slab each), px.
    p : (B,) offsets in px
    temperature, candidates, keep
        See :func:`t3d` and :func:`truncate_channels`.

    Returns
    -------
    CutoutBatch
        ``images`` (B, 32, 32, keep), differentiable in every ``M`` and ``r``.
    """
    p = np.asarray(p, dtype=np.float64).reshape(-1)
    if len(p) != len(tessellations):
        raise StereograinError(f"need one offset per tessellation, got {len(p)} for {len(tessellations)}")
    pts = np.stack([cutout_points_3d(pb) for pb in p])
    Ms = [t[1] for t in tessellations]
    seeds = [_as_seeds(t[0], m) for t, m in zip(tessellations, Ms)]
    return _batch_images(pts, seeds, Ms, [t[2] for t in tessellations], temperature, candidates, keep)


def t2d_batch(
    sections: Sequence[FittedSection],
    batch: int,
    rng: np.random.Generator | int | None = None,
    augment: bool = True,
    temperature: float = 1.0,
    candidates: int = 64,
    keep: int = 12,
    p_max: float = P_MAX,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> CutoutBatch:
    """``T_2D`` for a batch: random section, ``p ~ U(0, p_max]``, ``beta ~ U[0, 2 pi)``, augmented markers.

    Returns
    -------
    CutoutBatch
        ``images`` (batch, 32, 32, keep), no gradient.
    """
    if len(sections) == 0:
        raise StereograinError("t2d_batch needs at least one fitted section")
    g = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    pick = g.integers(0, len(sections), batch)
    p = p_max * (1.0 - g.random(batch))  # (0, p_max]
    beta = g.uniform(0.0, 2.0 * math.pi, batch)
    pts = np.stack([cutout_grid(pb, bb) for pb, bb in zip(p, beta)])
    mk = [_section_markers(sections[i], g, augment) for i in pick]
    Ms = [torch.as_tensor(m[1], dtype=dtype, device=device) for m in mk]
    seeds = [_as_seeds(m[0], Mt) for m, Mt in zip(mk, Ms)]
    rs = [torch.as_tensor(m[2], dtype=dtype, device=device) for m in mk]
    with torch.no_grad():
        return _batch_images(pts, seeds, Ms, rs, temperature, candidates, keep)
