"""Synthetic EBSD-like sections of radial (and isotropic) 3D grain architectures.

Used by the tests of the central-section test, the docs and the GAN work as a
ground truth whose cut height is known. A particle is a ball of radius ``R``
(px) filled with a restricted 3D GBPD (Eq. 8, 12): Poisson seeds in the ball
and, for every seed, ``M_i = Q_i^T diag(D_r, D_t, D_t) Q_i`` with the radial
frame ``Q_i``. The level sets of ``|x - s|_M`` are ellipsoids with semi-axes
proportional to ``1 / sqrt(D)``, so a *small* radial entry ``D_r`` makes the
grain *long* along the radius: ``D = (1 / aspect^2, 1, 1)`` gives grains about
``aspect`` times longer radially than across.

A section is the plane at signed distance ``h`` (the cut height) from the
centre, with a random normal; its pixels outside the ball are 0.

Labelling a plane is exact but pruned: a seed ``s_i`` at distance ``t_i``
from the plane is at metric distance ``>= sqrt(lambda_min(M_i)) t_i`` from
every point of the plane, so once a first pass over the seeds near the plane
has given an upper bound ``U`` of every pixel's winning value
``min_i |x - s_i|_{M_i} - r_i``, any seed with
``sqrt(lambda_min_i) t_i - r_i > U`` cannot win anywhere and is skipped; the
second pass includes every seed that might.
"""

from __future__ import annotations

import math

import numpy as np
import skimage.measure

from .errors import StereograinError
from .sections import GrainMap
from .tessellation import GBPD, plane_points, radial_frames

__all__ = ["radial_ball", "isotropic_ball", "cut_section", "synthetic_sections", "ebsd_gaps", "nmc_like_particle", "nmc_like_sections"]

PAPER_INTENSITY = 0.0018
"""Seeds per px^3 (50 nm pixels): the paper's initial intensity ``mu_1``."""


def _ball_seeds(radius_px: float, intensity: float, rng: np.random.Generator) -> np.ndarray:
    n = rng.poisson(intensity * 4.0 / 3.0 * math.pi * radius_px**3)
    if n < 2:
        raise StereograinError(
            f"intensity {intensity:g} per px^3 gives fewer than 2 seeds in a ball of {radius_px:g} px; raise either"
        )
    direction = rng.normal(size=(n, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    return direction * (radius_px * rng.uniform(size=(n, 1)) ** (1.0 / 3.0))


def _check(radius_px: float, intensity: float, aspect: float) -> None:
    if not (radius_px > 0 and intensity > 0 and aspect >= 1):
        raise StereograinError(
            f"need radius_px > 0, intensity > 0 and aspect >= 1, got {radius_px!r}, {intensity!r}, {aspect!r}"
        )


def radial_ball(
    radius_px: float = 64.0,
    intensity: float = PAPER_INTENSITY,
    aspect: float = 3.0,
    rng: np.random.Generator | int | None = None,
) -> GBPD:
    """A radial 3D grain architecture in a ball: a restricted GBPD with radially elongated cells.

    Parameters
    ----------
    radius_px : float
        Ball radius, px; the ball is centred at the origin.
    intensity : float
        Poisson seeds per px^3 (default the paper's 0.0018).
    aspect : float
        Radial-to-tangential length ratio of the cells' metric ellipsoids:
        ``D = (1 / aspect^2, 1, 1)``, offsets ``r = 0``.
    rng : Generator or seed

    Returns
    -------
    GBPD
        3D, seeds ``(n, 3)`` in px about the ball centre.
    """
    _check(radius_px, intensity, aspect)
    rng = np.random.default_rng(rng)
    seeds = _ball_seeds(radius_px, intensity, rng)
    D = np.tile([1.0 / aspect**2, 1.0, 1.0], (len(seeds), 1))
    return GBPD.restricted(seeds, D, np.zeros(len(seeds)), rng.uniform(0, 2 * math.pi, len(seeds)))


def isotropic_ball(
    radius_px: float = 64.0,
    intensity: float = PAPER_INTENSITY,
    aspect: float = 3.0,
    rng: np.random.Generator | int | None = None,
) -> GBPD:
    """Like :func:`radial_ball` but each cell's long axis points in a uniformly random direction.

    ``aspect = 1`` gives equiaxed (Voronoi) grains. No radial preference at
    all: every section of it should fail the central-section test.
    """
    _check(radius_px, intensity, aspect)
    rng = np.random.default_rng(rng)
    seeds = _ball_seeds(radius_px, intensity, rng)
    n = len(seeds)
    # the frame of a random direction (radial_frames of a random vector) with a random spin
    Q = radial_frames(rng.normal(size=(n, 3)), rng.uniform(0, 2 * math.pi, n))
    D = np.array([1.0 / aspect**2, 1.0, 1.0])
    M = np.einsum("nki,k,nkj->nij", Q, D, Q)
    return GBPD(seeds, M, np.zeros(n))


def _label_pruned(gbpd: GBPD, pts: np.ndarray, normal: np.ndarray, height: float, margin: float) -> np.ndarray:
    """Exact argmin labels (1..n) of ``pts`` on the plane ``x . normal = height``, see the module notes."""
    lam = np.linalg.eigvalsh(gbpd.metrics)[:, 0]
    t = np.abs(gbpd.seeds @ normal - height)
    lower = np.sqrt(np.maximum(lam, 0.0)) * t - gbpd.offsets

    def label(cand: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # |x - s|_M^2 = x^T M x - 2 x^T M s + s^T M s as matrix products, in coordinates about
        # the plane's foot point so that the expansion loses no precision
        o = height * normal
        s = gbpd.seeds[cand] - o
        M = gbpd.metrics[cand]
        Ms = np.einsum("nij,nj->ni", M, s)
        sMs = np.einsum("ni,ni->n", s, Ms)
        Mflat = M.reshape(len(cand), 9)
        r = gbpd.offsets[cand]
        lab = np.empty(len(pts), dtype=np.int64)
        best = np.empty(len(pts))
        for a in range(0, len(pts), 4096):
            x = pts[a : a + 4096] - o
            xx = (x[:, :, None] * x[:, None, :]).reshape(len(x), 9)
            q = xx @ Mflat.T - 2.0 * (x @ Ms.T) + sMs
            dist = np.sqrt(np.maximum(q, 0.0)) - r
            k = np.argmin(dist, axis=1)
            lab[a : a + 4096] = cand[k] + 1
            best[a : a + 4096] = dist[np.arange(len(k)), k]
        return lab, best

    cand = np.flatnonzero(t <= margin)
    if cand.size == 0:
        cand = np.argsort(t)[:8]
    lab, best = label(cand)
    needed = np.flatnonzero(lower <= best.max())
    if np.setdiff1d(needed, cand).size:
        lab, _ = label(np.union1d(needed, cand))
    return lab


def cut_section(
    gbpd: GBPD,
    radius_px: float,
    height_px: float,
    normal: np.ndarray | None = None,
    rng: np.random.Generator | int | None = None,
    step_nm: float = 50.0,
) -> GrainMap:
    """The planar section of a ball-shaped 3D tessellation at a given cut height.

    Parameters
    ----------
    gbpd : GBPD (3D)
        Cells of the particle, seeds about the ball centre (px).
    radius_px : float
        Ball radius, px; pixels whose centre lies outside the ball are 0.
    height_px : float
        Distance of the plane from the ball centre, px, ``0 <= h < R``.
    normal : (3,) float, optional
        Plane normal; default uniformly random.
    rng : Generator or seed
        For the normal, the in-plane axes and a sub-pixel shift of the grid.
    step_nm : float
        Pixel size recorded in the GrainMap.

    Returns
    -------
    GrainMap
        ``(H, W)`` labels with ``H = W = 2 ceil(rho) + 3`` where
        ``rho = sqrt(R^2 - h^2)`` is the radius of the section disc; every
        4-connected piece of a cell is a grain (a GBPD cell may be cut into
        several pieces, which an EBSD reconstruction would also separate),
        labelled ``1..n``; the source names the cut height.
    """
    if gbpd.dim != 3:
        raise StereograinError("cut_section needs a 3D tessellation")
    if not (0.0 <= height_px < radius_px):
        raise StereograinError(f"height_px must be in [0, radius_px = {radius_px:g}), got {height_px!r}")
    rng = np.random.default_rng(rng)
    n = rng.normal(size=3) if normal is None else np.asarray(normal, dtype=np.float64).reshape(3)
    n = n / np.linalg.norm(n)
    helper = np.eye(3)[int(np.argmin(np.abs(n)))]
    e_u = np.cross(n, helper)
    e_u /= np.linalg.norm(e_u)
    e_v = np.cross(n, e_u)
    spin = rng.uniform(0, 2 * math.pi)
    e_u, e_v = math.cos(spin) * e_u + math.sin(spin) * e_v, -math.sin(spin) * e_u + math.cos(spin) * e_v
    rho = math.sqrt(radius_px**2 - height_px**2)
    size = 2 * math.ceil(rho) + 3
    half = (size - 1) / 2.0 + rng.uniform(-0.5, 0.5, size=2)  # sub-pixel shift of the grid
    origin = height_px * n - half[0] * e_u - half[1] * e_v
    pts = plane_points(origin, e_u, e_v, (size, size))
    inside = np.einsum("ij,ij->i", pts, pts) <= radius_px**2
    labels = np.zeros(size * size, dtype=np.int64)
    spacing = (4.0 / 3.0 * math.pi * radius_px**3 / gbpd.n) ** (1 / 3)  # mean seed spacing, px
    if inside.any():
        labels[inside] = _label_pruned(gbpd, pts[inside], n, height_px, margin=3.0 * spacing)
    # a GBPD cell can be cut into several pieces; EBSD would see each piece as a grain
    pieces = skimage.measure.label(labels.reshape(size, size), background=0, connectivity=1)
    return GrainMap(
        pieces, step_nm, f"synthetic section h = {height_px / radius_px:.2f} R", None
    )


def synthetic_sections(
    heights: np.ndarray | list[float] = (0.0, 0.25, 0.5, 0.75),
    radius_px: float = 64.0,
    intensity: float = PAPER_INTENSITY,
    aspect: float = 3.0,
    radial: bool = True,
    rng: np.random.Generator | int | None = 0,
) -> list[GrainMap]:
    """Sections of one synthetic particle at the given relative cut heights.

    Parameters
    ----------
    heights : sequence of float
        Cut heights as fractions of the radius, each in [0, 1).
    radius_px, intensity, aspect
        See :func:`radial_ball`.
    radial : bool
        Radial architecture (:func:`radial_ball`) or isotropic
        (:func:`isotropic_ball`).
    rng : Generator or seed
        One stream makes the particle, then each section's random plane.

    Returns
    -------
    list of GrainMap, one per height, in 50 nm pixels.
    """
    rng = np.random.default_rng(rng)
    make = radial_ball if radial else isotropic_ball
    gbpd = make(radius_px, intensity, aspect, rng)
    return [cut_section(gbpd, radius_px, float(h) * radius_px, rng=rng) for h in heights]


def ebsd_gaps(
    labels: np.ndarray,
    rng: np.random.Generator,
    boundary_unindexed: float = 0.25,
    speckle_unindexed: float = 0.02,
    pores: int = 6,
    min_grain_px: int = 5,
) -> np.ndarray:
    """Unindexed pixels as an EBSD scan shows them, on exact section labels.

    Parameters
    ----------
    labels : (H, W) int array
        Exact grain labels, 0 outside the particle.
    rng : numpy Generator
    boundary_unindexed, speckle_unindexed : float
        Probability that a grain-boundary pixel / any pixel becomes unindexed (0).
    pores : int
        Small unindexed discs (radius 2-4 px) placed in the middle 60 % of the map.
    min_grain_px : int
        Grains left with fewer pixels become unindexed.

    Returns
    -------
    (H, W) int64 array
    """
    lab = np.array(labels, dtype=np.int64)
    H, W = lab.shape
    edge = np.zeros_like(lab, dtype=bool)
    edge[:, 1:] |= lab[:, 1:] != lab[:, :-1]
    edge[1:, :] |= lab[1:, :] != lab[:-1, :]
    drop = (edge & (rng.random(lab.shape) < boundary_unindexed)) | (rng.random(lab.shape) < speckle_unindexed)
    yy, xx = np.mgrid[0:H, 0:W]
    for _ in range(int(pores)):
        cy, cx = rng.uniform(0.2, 0.8, 2) * (H, W)
        drop |= (yy - cy) ** 2 + (xx - cx) ** 2 <= rng.uniform(2.0, 4.0) ** 2
    lab[drop] = 0
    counts = np.bincount(lab.ravel())
    small = counts < min_grain_px
    small[0] = False
    lab[small[lab]] = 0
    return lab


def nmc_like_particle(
    radius_px: float = 100.0,
    aspect: float = 3.0,
    intensity: float = PAPER_INTENSITY,
    rng: np.random.Generator | int | None = None,
) -> GBPD:
    """The 3D grain architecture of a synthetic NMC811-like particle (see :func:`nmc_like_sections`).

    A radial restricted GBPD in a ball of ``radius_px``: Poisson seeds at
    ``intensity``, per grain ``D = (f_0 / aspect^2, f_1, f_2)`` with
    independent ``f_k ~ U(0.7, 1.3)``, ``r ~ U(0, 2)`` px and a uniform spin.
    """
    _check(radius_px, intensity, aspect)
    rng = np.random.default_rng(rng)
    seeds = _ball_seeds(radius_px, intensity, rng)
    m = len(seeds)
    D = np.stack([rng.uniform(0.7, 1.3, m) / aspect**2, rng.uniform(0.7, 1.3, m), rng.uniform(0.7, 1.3, m)], axis=1)
    return GBPD.restricted(seeds, D, rng.uniform(0.0, 2.0, m), rng.uniform(0, 2 * math.pi, m))


def nmc_like_sections(
    n: int = 8,
    rng: np.random.Generator | int | None = 0,
    radius_px: tuple[float, float] = (80.0, 110.0),
    aspect: tuple[float, float] = (2.5, 4.0),
    intensity: float = PAPER_INTENSITY,
    boundary_unindexed: float = 0.25,
    speckle_unindexed: float = 0.02,
    pores: int = 6,
    min_grain_px: int = 5,
) -> list[GrainMap]:
    """Central sections of synthetic NMC811-like particles, as EBSD grain maps would show them.

    There is no public NMC811 EBSD data to ship, so the built-in grain model
    is trained on these. Each particle is a ball (radius uniform in
    ``radius_px``, 4-5.5 um at 50 nm) filled with a radial restricted 3D
    GBPD: Poisson seeds at ``intensity``, per grain
    ``D = (f_0 / a^2, f_1, f_2)`` with the particle's aspect ``a`` (uniform in
    ``aspect``) and independent ``f_k ~ U(0.7, 1.3)``, and ``r ~ U(0, 2)`` px,
    so grains vary in size and shape like the paper's Fig. 2. The central
    section (cut height 0, random plane) then loses pixels as an EBSD scan
    does: each pixel on a grain boundary with probability
    ``boundary_unindexed`` (overlapping patterns), any pixel with
    probability ``speckle_unindexed``, and ``pores`` small discs (radius
    2-4 px); grains left with fewer than ``min_grain_px`` pixels become
    unindexed.

    Parameters
    ----------
    n : int
        Number of sections (one particle each).
    rng : Generator or seed

    Returns
    -------
    list of GrainMap
        Label images (0 = unindexed or outside the particle), 50 nm pixels,
        each with ``source`` naming the particle's radius and aspect.
    """
    if not (isinstance(n, (int, np.integer)) and n >= 1):
        raise StereograinError(f"n must be a positive integer, got {n!r}")
    if not (0 <= boundary_unindexed < 1 and 0 <= speckle_unindexed < 1 and pores >= 0):
        raise StereograinError("unindexed probabilities must lie in [0, 1) and pores must be >= 0")
    rng = np.random.default_rng(rng)
    maps = []
    for k in range(int(n)):
        R = float(rng.uniform(*radius_px))
        a = float(rng.uniform(*aspect))
        gbpd = nmc_like_particle(R, a, intensity, rng)
        lab = ebsd_gaps(cut_section(gbpd, R, 0.0, rng=rng).labels, rng, boundary_unindexed, speckle_unindexed, pores, min_grain_px)
        maps.append(GrainMap(lab, 50.0, f"synthetic NMC811-like section {k}: R = {R:.0f} px, aspect {a:.2f}"))
    return maps
