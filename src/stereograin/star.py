"""Star-shaped radius functions of labelled particles (Eq. 1).

A segmented particle is represented by its radius function ``P(u)`` seen from
its centre of mass ``c``: how far one can go from ``c`` in direction ``u``
while staying on voxels of the particle. Coordinates follow the package
convention: a point is ``(x, y, z)`` in voxels where ``x`` indexes the last
array axis of a ``(Z, Y, X)`` volume and voxel ``(k, j, i)`` has its centre at
``(i, j, k)``.

Eq. 1 literally takes the *largest* ``r`` whose nearest voxel belongs to the
particle ("last" mode). The paper also states that the star-shaped body is
always a subset of the segmented particle, which holds for the *first exit*
along the ray ("first-exit" mode, our default). The two agree for star-shaped
particles; they differ where a ray leaves the particle and enters it again.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from . import sphere
from .errors import StereograinError

__all__ = ["StarShapes", "radius_functions", "star_volume_fraction"]

MODES = ("first-exit", "last")


@dataclass(frozen=True)
class StarShapes:
    """Radius functions of labelled particles.

    Attributes
    ----------
    labels : (n,) int64
        Label of each particle in the volume.
    volumes : (n,) int64
        Particle volume in voxels.
    centres : (n, 3) float64
        Centre of mass ``(x, y, z)`` in voxels.
    radii : (n, k) float64
        ``P(u)`` in voxels on the ``k = 10*4**level+2`` icosphere directions.
    level : int
        Icosphere level of the directions.
    captured : (n,) float64
        Fraction of each particle's voxels inside its star-shaped body.
    """

    labels: np.ndarray
    volumes: np.ndarray
    centres: np.ndarray
    radii: np.ndarray
    level: int
    captured: np.ndarray


# Hand-written: no library marches rays through a label volume with early exit;
# numpy would have to sample every ray to its full length (tens of times more work).
@numba.njit(parallel=True, cache=True)
def _march(labels, ids, centres, dirs, rmax, step, last):  # pragma: no cover - compiled
    n, k = centres.shape[0], dirs.shape[0]
    Z, Y, X = labels.shape
    out = np.zeros((n, k))
    for t in numba.prange(n * k):
        p = t // k
        d = t - p * k
        cx, cy, cz = centres[p, 0], centres[p, 1], centres[p, 2]
        ux, uy, uz = dirs[d, 0], dirs[d, 1], dirs[d, 2]
        best = 0.0
        nsteps = int(rmax[p] / step) + 2
        for s in range(1, nsteps):
            r = s * step
            i = int(np.floor(cx + r * ux + 0.5))
            j = int(np.floor(cy + r * uy + 0.5))
            kk = int(np.floor(cz + r * uz + 0.5))
            inside = 0 <= i < X and 0 <= j < Y and 0 <= kk < Z and labels[kk, j, i] == ids[p]
            if inside:
                best = r
            elif not last:
                break
        # The boundary lies between the last sample inside and the next one.
        out[p, d] = best + 0.5 * step
    return out


def _check_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise StereograinError(
            f"label volume must be 3D (Z, Y, X), got shape {labels.shape}; pass the output of `shell segment`"
        )
    if labels.size == 0:
        raise StereograinError("label volume is empty (a zero-length axis)")
    if not np.issubdtype(labels.dtype, np.integer):
        raise StereograinError(
            f"label volume must hold integers, got {labels.dtype}; did you pass the grey CT volume instead of the labels?"
        )
    if labels.min() < 0:
        raise StereograinError("label volume holds negative labels; labels must be 0 (background) or positive")
    return labels


def radius_functions(
    labels: np.ndarray,
    level: int = 3,
    step: float = 0.25,
    mode: str = "first-exit",
    min_volume: int = 10,
    captured_fraction: bool = True,
) -> StarShapes:
    """Radius functions of all particles of a label volume, seen from their centres of mass.

    Parameters
    ----------
    labels : (Z, Y, X) integer array
        0 is background, particles are positive labels.
    level : int
        Icosphere level of the directions (3: the paper's 642).
    step : float
        Ray-marching step in voxels; ``P`` is accurate to ``step / 2``.
    mode : {"first-exit", "last"}
        Where along a ray the surface is (see module docstring).
    min_volume : int
        Particles with fewer voxels are skipped (the paper keeps >= 10).
    captured_fraction : bool
        Also compute the fraction of each particle inside its star shape.

    Returns
    -------
    StarShapes
    """
    labels = _check_labels(labels)
    if mode not in MODES:
        raise StereograinError(f"mode must be one of {MODES}, got {mode!r}")
    if not (0 < step <= 1):
        raise StereograinError(f"ray step must be in (0, 1] voxels, got {step}")
    counts = np.bincount(labels.ravel().astype(np.intp, copy=False))
    ids = np.nonzero(counts >= max(int(min_volume), 1))[0]
    ids = ids[ids > 0]
    if ids.size == 0:
        raise StereograinError(
            f"no particle of at least {min_volume} voxels in the label volume; is it a segmentation (not all zeros)?"
        )
    zyx = np.asarray(ndimage.center_of_mass(np.ones(labels.shape, np.uint8), labels, ids), dtype=np.float64)
    centres = np.ascontiguousarray(zyx[:, ::-1])
    # A ray cannot leave the particle's bounding box, so its diagonal bounds every ray.
    boxes = ndimage.find_objects(labels, max_label=int(ids.max()))
    ext = np.array([[s.stop - s.start for s in boxes[i - 1]] for i in ids], dtype=np.float64)
    rmax = np.linalg.norm(ext, axis=1) + 1.0
    dirs, _ = sphere.icosphere(level)
    radii = _march(
        np.ascontiguousarray(labels),
        ids.astype(labels.dtype),
        centres,
        np.ascontiguousarray(dirs),
        rmax,
        float(step),
        mode == "last",
    )
    frac = (
        star_volume_fraction(labels, ids, centres, radii, level)
        if captured_fraction
        else np.full(ids.size, np.nan)
    )
    return StarShapes(ids.astype(np.int64), counts[ids].astype(np.int64), centres, radii, level, frac)


def star_volume_fraction(
    labels: np.ndarray,
    ids: np.ndarray,
    centres: np.ndarray,
    radii: np.ndarray,
    level: int = 3,
    chunk: int = 2_000_000,
) -> np.ndarray:
    """Fraction of each particle's voxels that lie inside its star-shaped body.

    The star-shaped body is the polyhedron with vertices ``c + P(u_i) u_i`` on
    the icosphere's triangles. A voxel centre ``x`` is inside when, along its
    direction ``u = (x - c)/|x - c|``, it is no farther than the face that the
    ray from ``c`` crosses.

    Parameters
    ----------
    labels : (Z, Y, X) int array
    ids : (n,) labels of the particles
    centres : (n, 3) centres ``(x, y, z)`` in voxels
    radii : (n, k) radius functions on icosphere ``level``
    chunk : int
        Voxels processed at once (bounds memory).

    Returns
    -------
    (n,) float64 in [0, 1]
    """
    v, f = sphere.icosphere(level)
    lut = np.full(int(labels.max()) + 1, -1, dtype=np.int64)
    lut[ids] = np.arange(ids.size)
    flat = np.flatnonzero(labels)
    owner = lut[labels.ravel()[flat]]
    keep = owner >= 0
    flat, owner = flat[keep], owner[keep]
    centroid = v[f].sum(axis=1)
    tree = cKDTree(centroid / np.linalg.norm(centroid, axis=1, keepdims=True))
    # Edge normals of each spherical triangle: u is in face (a, b, c) iff u.(a x b), u.(b x c), u.(c x a) >= 0.
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    en = np.stack([np.cross(a, b), np.cross(b, c), np.cross(c, a)], axis=1)  # (m, 3, 3)
    inside = np.zeros(ids.size, dtype=np.int64)
    shape = labels.shape
    for s in range(0, flat.size, chunk):
        fi, ow = flat[s : s + chunk], owner[s : s + chunk]
        k, j, i = np.unravel_index(fi, shape)
        x = np.stack([i, j, k], axis=1).astype(np.float64) - centres[ow]
        dist = np.linalg.norm(x, axis=1)
        u = x / np.where(dist > 0, dist, 1.0)[:, None]
        _, cand = tree.query(u, k=3)
        tests = np.einsum("nd,nkjd->nkj", u, en[cand]).min(axis=2) >= -1e-12  # (n, 3)
        face = cand[np.arange(cand.shape[0]), np.argmax(tests, axis=1)]
        fv = f[face]  # (n, 3) vertex ids
        P = radii[ow[:, None], fv]  # (n, 3)
        pa, pb, pc = (P[:, q, None] * v[fv[:, q]] for q in range(3))
        nrm = np.cross(pb - pa, pc - pa)
        den = np.einsum("nd,nd->n", nrm, u)
        num = np.einsum("nd,nd->n", nrm, pa)
        # Distance to the face plane along u; a degenerate face (zero radii) gives 0.
        tmax = np.divide(num, den, out=np.zeros_like(num), where=np.abs(den) > 1e-12)
        ok = dist <= tmax + 1e-9
        inside += np.bincount(ow[ok], minlength=ids.size)
    vol = np.bincount(owner, minlength=ids.size)
    return inside / np.maximum(vol, 1)
