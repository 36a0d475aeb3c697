"""Directions on the unit sphere and orthonormal real spherical harmonics.

The outer shell of a particle is a radius function ``P(u)`` on the unit sphere
(Eq. 1 of Fuchs et al. 2025), expanded in real spherical harmonics up to degree
``L`` (Eq. 2-3). Coefficients are stored flat, in the order
``index(l, m) = l**2 + l + m`` (``a_00, a_1-1, a_10, a_11, a_2-2, ...``), so a
degree-``L`` expansion has ``(L + 1)**2`` coefficients.

Phase convention: ``Y_lm`` for ``m > 0`` is ``sqrt(2) Re Y_l^m`` and for
``m < 0`` it is ``sqrt(2) Im Y_l^|m|`` of SciPy's complex harmonics (which
carry the Condon-Shortley phase). The reading notes point out that any fixed
convention works because the coefficient laws are symmetric about zero.
"""

from __future__ import annotations

from functools import lru_cache

import numba
import numpy as np
from scipy.spatial import SphericalVoronoi
from scipy.spatial.transform import Rotation

from .errors import StereograinError

__all__ = [
    "icosphere",
    "antipodes",
    "quadrature_weights",
    "n_coefficients",
    "degree_of",
    "coefficient_names",
    "real_sph_harm",
    "basis",
    "random_rotations",
    "fit_coefficients",
    "evaluate",
]


def _check_level(level: int) -> int:
    if not isinstance(level, (int, np.integer)) or level < 0 or level > 8:
        raise StereograinError(
            f"icosphere level must be an integer in 0..8 (3 gives 642 directions), got {level!r}"
        )
    return int(level)


def _check_degree(L: int) -> int:
    if not isinstance(L, (int, np.integer)) or L < 0 or L > 60:
        raise StereograinError(f"spherical-harmonic degree L must be an integer in 0..60, got {L!r}")
    return int(L)


@lru_cache(maxsize=16)
def _icosphere(level: int) -> tuple[np.ndarray, np.ndarray]:
    # trimesh builds the subdivided icosahedron; we cache and freeze the arrays.
    import trimesh

    mesh = trimesh.creation.icosphere(subdivisions=level, radius=1.0)
    v = np.ascontiguousarray(mesh.vertices, dtype=np.float64)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    f = np.ascontiguousarray(mesh.faces, dtype=np.int64)
    v.setflags(write=False)
    f.setflags(write=False)
    return v, f


def icosphere(level: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Vertices and faces of an icosahedron subdivided ``level`` times.

    Parameters
    ----------
    level : int
        Number of subdivisions; the sphere has ``10 * 4**level + 2`` vertices
        (level 3: 642 directions, the paper's choice).

    Returns
    -------
    vertices : (n, 3) float64 array
        Unit vectors (read-only). The set is symmetric under ``u -> -u``.
    faces : (m, 3) int64 array
        Triangles as vertex indices, outward (counter-clockwise) orientation.
    """
    return _icosphere(_check_level(level))


@lru_cache(maxsize=16)
def _antipodes(level: int) -> np.ndarray:
    from scipy.spatial import cKDTree

    v, _ = _icosphere(level)
    dist, idx = cKDTree(v).query(-v)
    if dist.max() > 1e-9:
        raise RuntimeError("icosphere is not antipodally symmetric")
    idx.setflags(write=False)
    return idx


def antipodes(level: int = 3) -> np.ndarray:
    """Index of the antipode ``-u`` of every icosphere vertex ``u``, shape ``(n,)``."""
    return _antipodes(_check_level(level))


@lru_cache(maxsize=16)
def _quadrature_weights(level: int) -> np.ndarray:
    v, _ = _icosphere(level)
    sv = SphericalVoronoi(v, radius=1.0)
    w = sv.calculate_areas()
    w *= 4.0 * np.pi / w.sum()
    w.setflags(write=False)
    return w


def quadrature_weights(level: int = 3) -> np.ndarray:
    """Spherical-Voronoi cell areas of the icosphere vertices (sum ``4 pi``), shape ``(n,)``.

    ``sum_i w_i f(u_i)`` approximates ``integral_{S^2} f(u) du`` (second order in
    the mesh size).
    """
    return _quadrature_weights(_check_level(level))


def n_coefficients(L: int) -> int:
    """Number of real SH coefficients up to degree ``L``: ``(L + 1)**2``."""
    return (_check_degree(L) + 1) ** 2


def degree_of(n_coef: int) -> int:
    """Degree ``L`` of a flat coefficient vector of length ``n_coef = (L+1)**2``."""
    L = int(round(np.sqrt(n_coef))) - 1
    if L < 0 or (L + 1) ** 2 != n_coef:
        raise StereograinError(
            f"a coefficient vector must have (L+1)**2 entries (1, 4, 9, ..., 100 for L=9), got {n_coef}"
        )
    return L


def degrees(L: int) -> np.ndarray:
    """Degree ``l`` of each flat coefficient index, shape ``((L+1)**2,)``."""
    return np.repeat(np.arange(_check_degree(L) + 1), 2 * np.arange(L + 1) + 1)


def coefficient_names(L: int) -> list[str]:
    """Column names ``a_0_0, a_1_-1, a_1_0, ...`` in flat order."""
    return [f"a_{l}_{m}" for l in range(_check_degree(L) + 1) for m in range(-l, l + 1)]


def _directions(u: np.ndarray) -> np.ndarray:
    """Unit vectors of ``u`` (n, 3), with one-line errors for bad shapes or zero / non-finite rows."""
    u = np.asarray(u, dtype=np.float64)
    if u.ndim != 2 or u.shape[1] != 3:
        raise StereograinError(f"directions must have shape (n, 3), got {u.shape}")
    norm = np.linalg.norm(u, axis=1)
    if not np.all(np.isfinite(norm)) or np.any(norm == 0):
        raise StereograinError("directions must be finite, non-zero vectors")
    return u / norm[:, None]


def real_sph_harm(L: int, u: np.ndarray) -> np.ndarray:
    """Orthonormal real spherical harmonics ``Y_lm`` (Eq. 2) at directions ``u``.

    Equal (to rounding) to the real parts built from SciPy's complex harmonics
    (module notes), but evaluated by the standard three-term recurrences of the
    normalised associated Legendre functions on ``cos theta`` and the
    powers of ``exp(i phi)``, with no angles: SciPy's ``sph_harm_y_all`` costs
    about 10 us per direction at L = 9, this about 1.

    Parameters
    ----------
    L : int
        Maximum degree.
    u : (n, 3) array
        Directions (need not be normalised).

    Returns
    -------
    (n, (L+1)**2) float64 array
        Column ``l**2 + l + m`` holds ``Y_lm(u)``.
    """
    L = _check_degree(L)
    u = _directions(u)
    rho = np.hypot(u[:, 0], u[:, 1])
    x = u[:, 2]  # cos theta
    s = rho  # sin theta (u is unit)
    safe = rho > 0
    c1 = np.where(safe, u[:, 0] / np.where(safe, rho, 1.0), 1.0)  # cos phi (phi = 0 on the poles)
    s1 = np.where(safe, u[:, 1] / np.where(safe, rho, 1.0), 0.0)  # sin phi
    out = np.empty((x.size, (L + 1) ** 2), dtype=np.float64)
    sqrt2 = np.sqrt(2.0)
    pmm = np.full(x.size, np.sqrt(1.0 / (4.0 * np.pi)))
    cm, sm = np.ones_like(x), np.zeros_like(x)  # cos(m phi), sin(m phi)
    for m in range(L + 1):
        if m > 0:
            pmm = -np.sqrt((2.0 * m + 1.0) / (2.0 * m)) * s * pmm  # Condon-Shortley phase
            cm, sm = cm * c1 - sm * s1, sm * c1 + cm * s1
        p2, p1 = None, pmm
        for l in range(m, L + 1):
            if l == m + 1:
                p2, p1 = p1, np.sqrt(2.0 * m + 3.0) * x * p1
            elif l > m + 1:
                a = np.sqrt((4.0 * l * l - 1.0) / (l * l - m * m))
                b = np.sqrt(((l - 1.0) ** 2 - m * m) / (4.0 * (l - 1.0) ** 2 - 1.0))
                p2, p1 = p1, a * (x * p1 - b * p2)
            base = l * l + l
            if m == 0:
                out[:, base] = p1
            else:
                out[:, base + m] = sqrt2 * p1 * cm
                out[:, base - m] = sqrt2 * p1 * sm
    return out


@lru_cache(maxsize=32)
def _basis(L: int, level: int) -> np.ndarray:
    B = real_sph_harm(L, _icosphere(level)[0])
    B.setflags(write=False)
    return B


def basis(L: int = 9, level: int = 3) -> np.ndarray:
    """Cached SH basis on the icosphere vertices, shape ``(10*4**level+2, (L+1)**2)``."""
    return _basis(_check_degree(L), _check_level(level))


def random_rotations(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` rotation matrices drawn uniformly from SO(3), shape ``(n, 3, 3)``."""
    return Rotation.random(int(n), rng=rng).as_matrix()


def fit_coefficients(
    radii: np.ndarray,
    directions: np.ndarray,
    L: int = 9,
    rng: np.random.Generator | int | None = None,
    rotate: bool = True,
    chunk: int = 256,
) -> np.ndarray:
    """Least-squares SH coefficients of radius functions sampled on directions.

    Following the paper, the fit is of ``P~(R u)`` against ``P(u)`` with one
    uniformly random rotation ``R`` per particle, which averages out the
    anisotropy of the voxel grid; the coefficients therefore describe the
    particle rotated by ``R``. With ``rotate=False`` ``R`` is the identity.

    Parameters
    ----------
    radii : (n_particles, n_dirs) or (n_dirs,) array
        Radius function values (any length unit; the coefficients carry it).
    directions : (n_dirs, 3) array
        Unit directions ``u``.
    L : int
        Maximum degree; needs ``n_dirs >= (L+1)**2``.
    rng : Generator or int, optional
        Source of the rotations (seeded).
    rotate : bool
        Apply a random rotation per particle.
    chunk : int
        Particles per batched solve (bounds memory).

    Returns
    -------
    (n_particles, (L+1)**2) or ((L+1)**2,) float64 array
    """
    L = _check_degree(L)
    r = np.asarray(radii, dtype=np.float64)
    single = r.ndim == 1
    r = np.atleast_2d(r)
    u = np.asarray(directions, dtype=np.float64)
    if u.ndim != 2 or u.shape[1] != 3 or u.shape[0] != r.shape[1]:
        raise StereograinError(
            f"directions must have shape (n_dirs, 3) matching radii's last axis {r.shape[1]}, got {u.shape}"
        )
    if not np.all(np.isfinite(r)):
        raise StereograinError("radius function holds NaN or infinite values")
    k = (L + 1) ** 2
    if u.shape[0] < k:
        raise StereograinError(f"degree L={L} needs at least {k} directions, got {u.shape[0]}")
    if not rotate:
        coef = np.linalg.lstsq(real_sph_harm(L, u), r.T, rcond=None)[0].T
    else:
        rng = np.random.default_rng(rng)
        R = random_rotations(r.shape[0], rng)
        coef = np.empty((r.shape[0], k))
        for s in range(0, r.shape[0], chunk):
            Rs = R[s : s + chunk]
            Ru = np.einsum("pij,nj->pni", Rs, u).reshape(-1, 3)
            B = real_sph_harm(L, Ru).reshape(len(Rs), u.shape[0], k)
            BtB = np.einsum("pnk,pnj->pkj", B, B)
            Btr = np.einsum("pnk,pn->pk", B, r[s : s + chunk])
            coef[s : s + chunk] = np.linalg.solve(BtB, Btr[..., None])[..., 0]
    return coef[0] if single else coef


@lru_cache(maxsize=32)
def _recurrence_table(L: int) -> np.ndarray:
    """``(3, L+1, L+1)``: the factors of :func:`real_sph_harm`'s recurrences (``[0]``: P_mm step, ``[1]``, ``[2]``: a, b)."""
    t = np.zeros((3, L + 1, L + 1))
    for m in range(L + 1):
        t[0, m, 0] = -np.sqrt((2.0 * m + 1.0) / (2.0 * m)) if m > 0 else 1.0
        for l in range(m + 2, L + 1):
            t[1, m, l] = np.sqrt((4.0 * l * l - 1.0) / (l * l - m * m))
            t[2, m, l] = np.sqrt(((l - 1.0) ** 2 - m * m) / (4.0 * (l - 1.0) ** 2 - 1.0))
    t.setflags(write=False)
    return t


_EXP_BLOCK = 64  # directions per block of _expansion: its inner loops run over them (vectorised)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _expansion(a, L, u, tab, out):  # pragma: no cover - compiled
    # real_sph_harm's recurrences, summed on the fly: no (n, (L+1)^2) basis in memory. The
    # directions go in blocks, and every loop over (l, m) runs across a block's directions, so
    # LLVM vectorises it (the recurrence's branches depend on l and m only); each direction
    # still sees the same operations in the same order, so the sums are the scalar loop's.
    sqrt2 = np.sqrt(2.0)
    y00 = np.sqrt(1.0 / (4.0 * np.pi))
    B = _EXP_BLOCK
    x = np.empty(B)
    rho = np.empty(B)
    c1 = np.empty(B)
    s1 = np.empty(B)
    pmm = np.empty(B)
    cm = np.empty(B)
    sm = np.empty(B)
    p1 = np.empty(B)
    p2 = np.empty(B)
    acc = np.empty(B)
    for i0 in range(0, u.shape[0], B):
        nb = min(B, u.shape[0] - i0)
        for v in range(nb):
            ux, uy, uz = u[i0 + v, 0], u[i0 + v, 1], u[i0 + v, 2]
            nrm = np.sqrt(ux * ux + uy * uy + uz * uz)
            ux, uy, uz = ux / nrm, uy / nrm, uz / nrm
            r = np.hypot(ux, uy)
            rho[v] = r
            x[v] = uz
            c1[v] = ux / r if r > 0 else 1.0
            s1[v] = uy / r if r > 0 else 0.0
            pmm[v] = y00
            cm[v] = 1.0
            sm[v] = 0.0
            acc[v] = 0.0
        for m in range(L + 1):
            if m > 0:
                f = tab[0, m, 0]
                for v in range(nb):
                    pmm[v] = f * rho[v] * pmm[v]
                    c, s_ = cm[v], sm[v]
                    cm[v] = c * c1[v] - s_ * s1[v]
                    sm[v] = s_ * c1[v] + c * s1[v]
            for v in range(nb):
                p2[v] = 0.0
                p1[v] = pmm[v]
            for l in range(m, L + 1):
                if l == m + 1:
                    g = np.sqrt(2.0 * m + 3.0)
                    for v in range(nb):
                        p2[v] = p1[v]
                        p1[v] = g * x[v] * p1[v]
                elif l > m + 1:
                    t1, t2 = tab[1, m, l], tab[2, m, l]
                    for v in range(nb):
                        q = t1 * (x[v] * p1[v] - t2 * p2[v])
                        p2[v] = p1[v]
                        p1[v] = q
                base = l * l + l
                if m == 0:
                    a0 = a[base]
                    for v in range(nb):
                        acc[v] += a0 * p1[v]
                else:
                    ap, am = a[base + m], a[base - m]
                    for v in range(nb):
                        acc[v] += sqrt2 * p1[v] * (ap * cm[v] + am * sm[v])
        for v in range(nb):
            out[i0 + v] = acc[v]


def evaluate(coefficients: np.ndarray, directions: np.ndarray | None = None, level: int = 3) -> np.ndarray:
    """Radius function ``P~(u)`` (Eq. 3) of one or many coefficient vectors.

    Parameters
    ----------
    coefficients : ((L+1)**2,) or (n, (L+1)**2) array
    directions : (k, 3) array, optional
        Where to evaluate; default the icosphere vertices of ``level``
        (uses a cached basis: one matrix product for the whole batch).
    level : int
        Icosphere level when ``directions`` is None.

    Returns
    -------
    (k,) or (n, k) float64 array
    """
    a = np.asarray(coefficients, dtype=np.float64)
    L = degree_of(a.shape[-1])
    if directions is not None and a.ndim == 1:
        # one expansion at many directions: summed per direction by a compiled loop,
        # about 10 times faster than building the basis matrix
        u = _directions(directions)
        out = np.empty(len(u))
        _expansion(a, L, u, _recurrence_table(L), out)
        return out
    B = basis(L, level) if directions is None else real_sph_harm(L, directions)
    return a @ B.T
