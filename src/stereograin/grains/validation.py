"""Validation of 3D grain architectures: planar sections (Fig. 10b), cut heights (Fig. 11), 3D grains.

The paper validates the grain model on planar sections only (EBSD is 2D):
the distributions of the section area ``A_cross``, the elongation ``eta``
(Eq. 21), the orientation ``alpha`` (Eq. 4) and the chord lengths of
simulated sections are compared with those of EBSD sections (Fig. 10b). It
also shows how the orientation distribution of sections of a 3D realisation
depends on the cut height (Fig. 11). Here:

* :func:`section_sample` cuts a ball-shaped 3D architecture (a 3D
  :class:`~stereograin.tessellation.GBPD` with seeds about the ball centre)
  at given relative heights with random plane normals;
* :func:`section_statistics` pools the four descriptors over maps, and
  :func:`compare_sections` gives KS statistics and Wasserstein distances
  (JSON-ready), model vs ground truth;
* :func:`alpha_by_height` collects ``alpha`` per cut height with a scalar
  summary, :func:`aligned_fraction` (the fraction of grains with
  ``alpha < 30 deg``);
* :func:`grain_statistics_3d` / :func:`compare_grains_3d` describe the
  complete 3D grains of a voxelised ball (volume, elongation, angle of the
  long axis to the radius), which sections cannot show.

Units: EBSD pixels (px, 50 nm by default). Angles of sections (``alpha``)
are in radians, as in :mod:`stereograin.sections`; the 3D ``radial_angle``
is in degrees. Everything is vectorised over pixels, voxels and grains;
Python loops run over maps or heights only.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ..descriptors import compare_samples
from ..errors import StereograinError
from ..sections import GrainMap, chord_lengths, section_descriptors
from ..sections_synth import cut_section
from ..tessellation import GBPD, cell_geometry

__all__ = [
    "SECTION_DESCRIPTORS",
    "SECTION_UNITS",
    "GRAIN_DESCRIPTORS",
    "GRAIN_UNITS",
    "ALIGNED_ANGLE",
    "ALIGNED_BASELINE",
    "AlphaByHeight",
    "section_sample",
    "section_statistics",
    "compare_sections",
    "aligned_fraction",
    "alpha_by_height",
    "grain_shapes",
    "grain_statistics_3d",
    "compare_grains_3d",
]

SECTION_DESCRIPTORS = ("area", "eta", "alpha", "chord")
"""The four section descriptors of Fig. 10b, in panel order."""

SECTION_UNITS = {"area": "px^2", "eta": "1", "alpha": "rad", "chord": "px"}

GRAIN_DESCRIPTORS = ("volume", "elongation", "radial_angle")
"""The 3D grain descriptors of :func:`grain_statistics_3d` that :func:`compare_grains_3d` compares."""

GRAIN_UNITS = {"volume": "px^3", "elongation": "1", "radial_angle": "deg"}

ALIGNED_ANGLE = math.pi / 6
"""``alpha`` below this (30 deg) counts as radially aligned in :func:`aligned_fraction`."""

ALIGNED_BASELINE = 1.0 / 3.0
""":func:`aligned_fraction` without any preference: ``alpha`` uniform on ``[0, pi/2]``."""


# --------------------------------------------------------------------------- checks


def _check_radius(radius_px: float) -> float:
    try:
        r = float(radius_px)
    except (TypeError, ValueError):
        raise StereograinError(f"radius_px must be a positive number of px, got {radius_px!r}") from None
    if not (math.isfinite(r) and r > 0):
        raise StereograinError(f"radius_px must be a positive number of px, got {radius_px!r}")
    return r


def _check_gbpd(gbpd: Any) -> GBPD:
    if not isinstance(gbpd, GBPD) or gbpd.dim != 3:
        what = f"a {gbpd.dim}D GBPD" if isinstance(gbpd, GBPD) else type(gbpd).__name__
        raise StereograinError(f"need a 3D GBPD (seeds about the ball centre, px), got {what}")
    return gbpd


def _check_heights(heights: float | Iterable[float]) -> np.ndarray:
    try:
        h = np.atleast_1d(np.asarray(heights, dtype=np.float64))
    except (TypeError, ValueError):
        raise StereograinError(
            f"heights must be numbers (fractions of the radius in [0, 1)), got {heights!r}"
        ) from None
    if h.ndim != 1 or h.size == 0:
        raise StereograinError(f"heights must be a non-empty 1D list of fractions of the radius, got shape {h.shape}")
    bad = ~(np.isfinite(h) & (h >= 0.0) & (h < 1.0))
    if bad.any():
        raise StereograinError(
            f"cut heights are fractions of the radius in [0, 1); got {h[bad].tolist()} (divide px by the radius)"
        )
    return h


def _check_count(value: Any, what: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise StereograinError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_maps(maps: Any, what: str) -> list[GrainMap]:
    if isinstance(maps, GrainMap):
        maps = [maps]
    if isinstance(maps, np.ndarray) or not isinstance(maps, Sequence) or isinstance(maps, str):
        raise StereograinError(f"{what} must be a list of GrainMap, got {type(maps).__name__}")
    if len(maps) == 0:
        raise StereograinError(f"{what} is an empty list of sections; give at least one GrainMap")
    out = []
    for k, m in enumerate(maps):
        if not isinstance(m, GrainMap):
            raise StereograinError(
                f"{what}[{k}] is a {type(m).__name__}, not a GrainMap (wrap label images in GrainMap)"
            )
        out.append(m)
    return out


# --------------------------------------------------------------------------- sections


def section_sample(
    gbpd: GBPD,
    radius_px: float,
    heights: float | Iterable[float],
    rng: np.random.Generator | int | None = None,
    per_height: int = 1,
) -> list[GrainMap]:
    """Planar sections of a ball-shaped 3D architecture at given relative cut heights.

    Each section is :func:`stereograin.sections_synth.cut_section`: the plane
    at distance ``h * radius_px`` from the ball centre with a uniformly random
    normal and in-plane rotation; pixels outside the ball are 0 and every
    4-connected piece of a cell is one grain.

    Parameters
    ----------
    gbpd : GBPD (3D)
        The architecture, seeds about the ball centre (the origin), px.
    radius_px : float
        Ball radius, px (> 0).
    heights : float or sequence of float
        Cut heights as fractions of the radius, each in ``[0, 1)``.
    rng : Generator or seed
        Draws the plane normals (one stream, in order of ``heights``).
    per_height : int
        Sections per height (>= 1), each with its own random normal.

    Returns
    -------
    list of GrainMap
        ``len(heights) * per_height`` maps, height-major (the ``per_height``
        sections of ``heights[0]`` first), 50 nm pixels; each map's
        ``source`` names its cut height.
    """
    g = _check_gbpd(gbpd)
    R = _check_radius(radius_px)
    h = _check_heights(heights)
    k = _check_count(per_height, "per_height")
    rng = np.random.default_rng(rng)
    return [cut_section(g, R, float(hh) * R, rng=rng) for hh in h for _ in range(k)]


def _drop_small(labels: np.ndarray, min_area_px: int) -> np.ndarray:
    """``labels`` with the grains under ``min_area_px`` pixels set to 0 (as :func:`read_section` does)."""
    if min_area_px <= 1:
        return labels
    size = np.bincount(labels.ravel(), minlength=1)
    size[0] = np.iinfo(size.dtype).max  # 0 stays 0
    return np.where(size[labels] >= min_area_px, labels, 0)


def section_statistics(maps: Sequence[GrainMap], min_area_px: int = 5) -> dict[str, np.ndarray]:
    """The four section descriptors of Fig. 10b, pooled over maps.

    Per map, grains under ``min_area_px`` pixels are treated as unindexed
    (label 0), as :func:`stereograin.sections.read_section` does with EBSD
    maps (its ``min_grain_px`` default is also 5), so simulated and EBSD
    sections are measured alike. Then
    :func:`stereograin.sections.section_descriptors` gives the per-grain
    values about each map's particle centre (the centroid of its particle
    mask) for the grains inside the particle mask; like it, grains touching
    the particle rim are *kept* (they are cut by the rim in EBSD data too),
    and :func:`stereograin.sections.chord_lengths` gives the chords along
    both image axes.

    Parameters
    ----------
    maps : list of GrainMap
        Sections in px (e.g. from :func:`section_sample` or
        :func:`stereograin.sections.read_section`).
    min_area_px : int
        Smallest grain kept, px (>= 1; 1 keeps every grain).

    Returns
    -------
    dict of 1D float64 arrays
        ``area`` (px^2, pixel count ``A_cross``), ``eta`` (Eq. 21,
        ``e1 / e2``, the eigenvalue ratio; ``inf`` for a one-pixel-wide
        grain), ``alpha`` (rad in ``[0, pi/2]``, Eq. 4; NaN for a grain
        centred exactly on the centre): one entry per grain, aligned, all
        maps concatenated in order; ``chord`` (px): all chord lengths of all
        maps, rows then columns. Non-finite values are kept; the comparisons
        and plots ignore them.
    """
    ms = _check_maps(maps, "maps")
    min_area = _check_count(min_area_px, "min_area_px")
    parts: dict[str, list[np.ndarray]] = {k: [] for k in SECTION_DESCRIPTORS}
    for gm in ms:
        lab = _drop_small(gm.labels, min_area)
        chords = chord_lengths(lab).astype(np.float64)
        parts["chord"].append(chords)
        if not lab.any():
            continue
        g = GrainMap(lab, gm.step_nm, gm.source) if lab is not gm.labels else gm
        d = section_descriptors(g)
        for key in ("area", "eta", "alpha"):
            parts[key].append(np.asarray(d[key], dtype=np.float64))
    return {k: np.concatenate(v) if v else np.empty(0) for k, v in parts.items()}


def _stats_of(x: Any, what: str, min_area_px: int) -> dict[str, np.ndarray]:
    if isinstance(x, Mapping):
        missing = [k for k in SECTION_DESCRIPTORS if k not in x]
        if missing:
            raise StereograinError(
                f"{what} statistics lack {', '.join(missing)}; give section_statistics output or a list of GrainMap"
            )
        return {k: np.asarray(x[k], dtype=np.float64) for k in SECTION_DESCRIPTORS}
    return section_statistics(_check_maps(x, what), min_area_px)


def compare_sections(
    generated: Sequence[GrainMap] | Mapping[str, np.ndarray],
    truth: Sequence[GrainMap] | Mapping[str, np.ndarray],
    min_area_px: int = 5,
) -> dict[str, dict[str, Any]]:
    """Distances between model and ground-truth sections, per Fig. 10b descriptor.

    Parameters
    ----------
    generated, truth : list of GrainMap, or :func:`section_statistics` output
        Simulated sections and EBSD (or other reference) sections, px.
        Passing statistics avoids computing them twice (e.g. for the plot).
    min_area_px : int
        Passed to :func:`section_statistics` for lists of maps.

    Returns
    -------
    dict
        For each of ``area``, ``eta``, ``alpha``, ``chord``: ``ks`` (two-sample
        Kolmogorov-Smirnov statistic, in [0, 1]), ``ks_pvalue``,
        ``wasserstein`` (in the descriptor's unit: px^2, 1, rad, px),
        ``n_generated``, ``n_truth`` (finite values used) and ``unit``.
        Plain floats, ints and strings: JSON-serialisable (no NaN).
    """
    a = _stats_of(generated, "generated", min_area_px)
    b = _stats_of(truth, "truth", min_area_px)
    for name in SECTION_DESCRIPTORS:
        for stats, who in ((a, "generated"), (b, "truth")):
            if not np.isfinite(stats[name]).any():
                raise StereograinError(
                    f"{who} sections have no finite {name!r} values (no grains of >= {min_area_px} px?); "
                    "give larger sections or more of them"
                )
    raw = compare_samples(a, b, names=SECTION_DESCRIPTORS)
    return {
        name: {
            "ks": d["ks"],
            "ks_pvalue": d["ks_pvalue"],
            "wasserstein": d["wasserstein"],
            "n_generated": d["n_a"],
            "n_truth": d["n_b"],
            "unit": SECTION_UNITS[name],
        }
        for name, d in raw.items()
    }


# --------------------------------------------------------------------------- cut heights (Fig. 11)


def aligned_fraction(alpha: np.ndarray) -> float:
    """Radial preference of section grains: the fraction with ``alpha < 30 deg``.

    Chosen over the mean ``alpha`` because it reads directly: without any
    preference (``alpha`` uniform on ``[0, pi/2]``, e.g. random directions)
    it is :data:`ALIGNED_BASELINE` = 1/3; a radial architecture cut through
    its centre gives clearly more, tangential alignment less.

    Parameters
    ----------
    alpha : (n,) float, rad
        Orientations (Eq. 4); non-finite values are ignored.

    Returns
    -------
    float
        In [0, 1]; NaN if there is no finite value.
    """
    a = np.asarray(alpha, dtype=np.float64).ravel()
    a = a[np.isfinite(a)]
    return float(np.mean(a < ALIGNED_ANGLE)) if a.size else float("nan")


class AlphaByHeight(dict):
    """``dict[float, ndarray]``: relative cut height -> pooled ``alpha`` (rad), with summaries.

    Keys are in increasing height. Besides the mapping it offers
    :attr:`heights`, :attr:`summary` (:func:`aligned_fraction` per height),
    :attr:`counts` and :meth:`to_json`.
    """

    statistic = "fraction of grains with alpha < 30 deg (1/3 without preference)"

    @property
    def heights(self) -> np.ndarray:
        """``(k,)`` relative cut heights, increasing."""
        return np.array(sorted(self), dtype=np.float64)

    @property
    def summary(self) -> dict[float, float]:
        """Height -> :func:`aligned_fraction` of its grains (NaN without grains)."""
        return {h: aligned_fraction(self[h]) for h in sorted(self)}

    @property
    def counts(self) -> dict[float, int]:
        """Height -> number of grains with a finite ``alpha``."""
        return {h: int(np.isfinite(self[h]).sum()) for h in sorted(self)}

    def to_json(self) -> dict[str, Any]:
        """Heights, summaries and grain counts as plain lists (NaN as ``None``), for a report."""
        s = self.summary
        return {
            "statistic": self.statistic,
            "baseline": ALIGNED_BASELINE,
            "heights": [float(h) for h in sorted(self)],
            "aligned_fraction": [None if math.isnan(s[h]) else s[h] for h in sorted(self)],
            "n_grains": [self.counts[h] for h in sorted(self)],
        }


def alpha_by_height(
    gbpd: GBPD,
    radius_px: float,
    heights: float | Iterable[float],
    rng: np.random.Generator | int | None = None,
    per_height: int = 1,
    min_area_px: int = 10,
) -> AlphaByHeight:
    """Grain orientations ``alpha`` of sections at several cut heights (Fig. 11).

    Sections are drawn by :func:`section_sample`; per height, the ``alpha``
    of its ``per_height`` sections (grains of at least ``min_area_px`` px:
    smaller ones have too coarse a shape to carry an orientation; 10 px as in
    :func:`stereograin.sections.central_section_test`) are pooled.

    In a radial architecture the preference fades with the cut height: a
    central section shows grains lengthwise, a section at ``h = 0.8``
    (disc radius ``0.6 R``) cuts them steeply, nearly end-on.

    Parameters
    ----------
    gbpd : GBPD (3D)
        The architecture, seeds about the ball centre, px.
    radius_px : float
        Ball radius, px.
    heights : float or sequence of float
        Distinct relative cut heights in ``[0, 1)``.
    rng : Generator or seed
    per_height : int
        Sections per height.
    min_area_px : int
        Smallest grain used, px.

    Returns
    -------
    AlphaByHeight
        A ``dict`` mapping each height (float, increasing) to the pooled
        ``alpha`` (rad, ``(n_h,)`` float64, finite), with ``.summary``
        (:func:`aligned_fraction` per height), ``.counts`` and ``.to_json()``.
    """
    h = _check_heights(heights)
    if np.unique(h).size != h.size:
        raise StereograinError(f"heights must be distinct (use per_height for more sections), got {h.tolist()}")
    min_area = _check_count(min_area_px, "min_area_px")
    k = _check_count(per_height, "per_height")
    maps = section_sample(gbpd, radius_px, h, rng, k)
    out = AlphaByHeight()
    for i in np.argsort(h):
        chunk = maps[i * k : (i + 1) * k]
        alpha = section_statistics(chunk, min_area)["alpha"]
        out[float(h[i])] = alpha[np.isfinite(alpha)]
    return out


# --------------------------------------------------------------------------- 3D grains


def grain_statistics_3d(
    gbpd: GBPD,
    radius_px: float,
    spacing: float = 1.0,
    margin_px: float = 2.0,
    min_voxels: int = 8,
) -> dict[str, np.ndarray]:
    """Volume, elongation and radial alignment of the complete 3D grains in a ball.

    The cube ``[-(R + margin), R + margin]^3`` about the ball centre (the
    origin) is voxelised with :meth:`GBPD.label_grid` (exact labels, a voxel
    at the centre). **Boundary rule:** a grain is *cut by the ball boundary*
    and left out if any voxel of its cell lies outside the ball
    (``|x| > R``), which the labelled margin layer of ``margin_px`` reveals;
    the kept grains are cells that lie wholly inside the ball, so their
    voxel sets are complete. (This favours small grains near the rim, as
    any window does; compare architectures in balls of one radius. A
    disconnected cell with a piece outside counts as cut.) Grains with fewer
    than ``min_voxels`` voxels are left out too (too coarse for a shape).
    Moments come from :func:`stereograin.tessellation.cell_geometry`.

    Memory: about 40 bytes per voxel, ``(2 (R + margin) / spacing)^3``
    voxels (R = 64 px at spacing 1: ~100 MB).

    Parameters
    ----------
    gbpd : GBPD (3D)
        Seeds about the ball centre, px.
    radius_px : float
        Ball radius, px.
    spacing : float
        Voxel size, px (1: one voxel per EBSD pixel).
    margin_px : float
        Thickness of the labelled layer outside the ball, px (>= spacing).
    min_voxels : int
        Smallest grain used, voxels.

    Returns
    -------
    dict of (n,) arrays, one entry per kept grain (in cell order)
        ``label`` (int64, cell index + 1), ``volume`` (px^3, voxel count x
        spacing^3), ``elongation`` (``sqrt(l1 / l3)``, the ratio of the
        longest to the shortest semi-axis of the grain's equivalent ellipsoid,
        from the largest and smallest eigenvalues of its voxel covariance;
        1 for a ball, ``inf`` for a flat one-voxel-thick grain),
        ``radial_angle`` (deg in ``[0, 90]``: the angle between the major
        principal axis and the direction from the ball centre to the grain's
        centroid; 0 = radially aligned, about 57 on average for random
        directions; NaN for a centroid at the centre), ``distance`` (px,
        centroid to the ball centre).
    """
    g = _check_gbpd(gbpd)
    R = _check_radius(radius_px)
    try:
        sp, margin = float(spacing), float(margin_px)
    except (TypeError, ValueError):
        raise StereograinError(f"spacing and margin_px must be numbers of px, got {spacing!r}, {margin_px!r}") from None
    if not (math.isfinite(sp) and sp > 0):
        raise StereograinError(f"spacing must be a positive number of px, got {spacing!r}")
    if not (math.isfinite(margin) and margin >= sp):
        raise StereograinError(
            f"margin_px must be at least one voxel (spacing = {sp:g} px) to see grains cut by the ball, "
            f"got {margin_px!r}"
        )
    min_vox = _check_count(min_voxels, "min_voxels")
    half = math.ceil((R + margin) / sp)
    n = 2 * half + 1
    origin = -half * sp
    labels = g.label_grid((n, n, n), origin, sp)
    ax = origin + sp * np.arange(n)
    sq = ax * ax
    outside = (sq[:, None, None] + sq[None, :, None] + sq[None, None, :]) > R * R  # (Z, Y, X)
    cut = np.bincount(labels[outside], minlength=g.n + 1)[1:] > 0
    labels[outside] = 0
    geo = cell_geometry(labels, n=g.n, spacing=sp)
    voxels = np.rint(geo.size / sp**3)
    keep = np.flatnonzero(~cut & (voxels >= min_vox))
    return {"label": keep.astype(np.int64) + 1, **grain_shapes(geo, keep, origin)}


def grain_shapes(geo: Any, keep: np.ndarray, origin: float | np.ndarray) -> dict[str, np.ndarray]:
    """Volume, elongation and radial alignment of the cells ``keep`` of a labelled grid.

    Parameters
    ----------
    geo : CellGeometry
        Of the label grid (:func:`stereograin.tessellation.cell_geometry`), px.
    keep : (n,) int array
        Cell indices (label - 1).
    origin : float or (3,) array
        Position of voxel ``[0, 0, 0]`` relative to the centre the radial
        direction is taken from, px (x y z).

    Returns
    -------
    dict of (n,) arrays
        ``volume``, ``elongation``, ``radial_angle``, ``distance``, as in
        :func:`grain_statistics_3d`.
    """
    lam = geo.eigenvalues[keep]  # descending, px^2
    centroid = geo.centroid[keep] + origin  # about the centre, px
    major = geo.axes[keep, 0]  # unit rows
    dist = np.linalg.norm(centroid, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        elong = np.sqrt(lam[:, 0] / lam[:, 2])
        cosang = np.abs(np.einsum("nd,nd->n", major, centroid)) / dist
    angle = np.degrees(np.arccos(np.clip(cosang, 0.0, 1.0)))
    angle[~(dist > 0)] = np.nan
    return {"volume": geo.size[keep], "elongation": elong, "radial_angle": angle, "distance": dist}


def compare_grains_3d(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """Distances between two sets of 3D grain statistics (:func:`grain_statistics_3d`).

    Parameters
    ----------
    a, b : mappings with ``volume``, ``elongation``, ``radial_angle``

    Returns
    -------
    dict
        Per descriptor: ``ks``, ``ks_pvalue``, ``wasserstein`` (px^3, 1, deg),
        ``n_a``, ``n_b`` (finite values used) and ``unit``; JSON-serialisable.
    """
    for x, who in ((a, "a"), (b, "b")):
        if not isinstance(x, Mapping):
            raise StereograinError(f"sample {who} must be grain_statistics_3d output (a dict), got {type(x).__name__}")
        for name in GRAIN_DESCRIPTORS:
            if name not in x:
                raise StereograinError(f"sample {who} lacks {name!r}; give grain_statistics_3d output")
            if not np.isfinite(np.asarray(x[name], dtype=np.float64)).any():
                raise StereograinError(
                    f"sample {who} has no finite {name!r} values (no complete grains in the ball?); use a larger ball"
                )
    raw = compare_samples(a, b, names=GRAIN_DESCRIPTORS)
    return {name: {**d, "unit": GRAIN_UNITS[name]} for name, d in raw.items()}
