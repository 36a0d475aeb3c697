"""Fitting a restricted 2D GBPD to a grain label image (the paper's 2D ground truth).

Fuchs et al. (2025) fit a differentiable restricted 2D GBPD to every central
EBSD grain map (their ref. 43, Petrich et al., Front. Mater. 8, 760602, 2021)
and train the GAN on cutouts of these fitted tessellations, augmented by
multiplying each ``r_i`` and each entry of ``D_i`` by a uniform factor in
(0.8, 1.2). This module does that fit and stores its result.

Coordinates
-----------
Pixel ``[j, i]`` of an ``(H, W)`` map is the point ``(x, y) = (i, j)`` px.
Every fitted quantity is in px of the map's step (``step_nm`` nm per px) and
*relative to the frame origin* (the particle centre, given by the caller):
a seed ``s`` sits at ``origin + s`` in pixel coordinates, and the radial frame
of cell ``i`` has its first axis along ``s_i / |s_i|``.

Model and gauge
---------------
Cell ``i`` is ``argmin_i |x - s_i|_{M_i} - r_i`` with
``M_i = Q_i^T diag(D_i) Q_i`` (restricted GBPD, Eq. 12), i.e.

    |v|_{M_i}^2 = D_i0 (v . u_i)^2 + D_i1 (v . u_i^perp)^2,   u_i = s_i / |s_i|,

differentiable in the seeds through ``u_i`` (the rotation by the angle of
``s_i``). The tessellation is unchanged by ``(D, r) -> (c^2 D, c r)`` and by
``r -> r + const``; the fit fixes both:

* scale: the geometric mean of all entries of ``D`` is pinned to 1, so
  metric distances are "about px" and ``D_i0 / D_i1`` is the squared
  tangential / radial extent ratio of cell ``i``;
* shift: a weak quadratic prior (``prior``) ties ``log D`` and ``r`` to their
  initial values, where ``r_i`` is the grain's mean semi-axis in px (about
  1-10 px for EBSD grains at 50 nm). It also keeps cells cut by the
  particle rim, which no pixel bounds on the outside, from drifting to
  extreme markers.

``D`` is clipped to ``[D_FLOOR, D_MAX] = [1e-2, 50]`` during the fit (the GAN
generator emits ``(eps, 50]``). After the fit, ``r`` is brought into the
generator's range ``[1, 10]`` by the same two freedoms: if its spread exceeds
9 px, ``(D, r)`` is scaled by ``(c^2, c)``, ``c = 9 / spread`` (not below
0.5), then ``r`` is shifted as little as possible. Where that is not enough
(grains of very different size side by side),
:attr:`FittedSection.in_generator_range` is false. These choices set how
strong the paper's multiplicative augmentation of ``r`` is (a factor on
``r`` is not gauge invariant); they are our documented reading.

Speed: the loss and its gradient (checked against torch autograd through
:func:`stereograin.tessellation.soft_map` in the tests) are a compiled numba
loop over ``(pixel, candidate)`` pairs, and Adam runs in NumPy: on CPU this is
tens of times faster than torch autograd, whose scatter-add backward of the
candidate gather dominates.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numba
import numpy as np

from .errors import StereograinError
from .tessellation import GBPD

__all__ = [
    "D_FLOOR",
    "D_MAX",
    "R_RANGE",
    "FittedSection",
    "fit_section",
    "synthetic_section_map",
    "write_sections",
    "read_sections",
    "plot_fit",
    "benchmark_fit",
    "SECTIONS_FORMAT",
    "SECTIONS_FORMAT_VERSION",
]

#: Smallest allowed entry of ``D`` (keeps ``M`` positive definite).
D_FLOOR = 1e-2
#: Largest allowed entry of ``D`` (the GAN generator's upper bound).
D_MAX = 50.0
#: The GAN generator's range of ``r`` in px.
R_RANGE = (1.0, 10.0)

SECTIONS_FORMAT = "stereograin.sections"
SECTIONS_FORMAT_VERSION = 1
_UNITS = {
    "origin": "px (x = column, y = row) of the map",
    "seeds": "px relative to origin",
    "D": "dimensionless (metric distances are in px)",
    "r": "px",
    "step_nm": "nm per px",
    "shape": "px (rows, columns)",
}


# --------------------------------------------------------------------------- result


@dataclass(frozen=True)
class FittedSection:
    """A restricted 2D GBPD fitted to one grain map.

    Attributes
    ----------
    file : str
        Where the map came from (free text; "" if unknown).
    step_nm : float
        Pixel size in nm.
    origin : (2,) float64
        Frame origin (particle centre) ``(x, y)`` in px of the map.
    seeds : (n, 2) float64
        Seeds in px, relative to ``origin``.
    D : (n, 2) float64
        Diagonal of ``D_i`` (radial, tangential), positive.
    r : (n,) float64
        Offsets in px.
    grain_labels : (n,) int64
        The measured grain label each cell was fitted to.
    pixel_agreement : float
        Fraction of indexed pixels whose exact fitted label is their measured
        grain (for an augmented section: that of the fit it came from).
    shape : (int, int)
        ``(H, W)`` of the map.
    central : bool or None
        Verdict of the central-section test on the map (``None``: not tested).
        The GAN trains only on sections that are not known to be off-centre.
    mask : (H, W) bool or None
        The particle's pixels in the map (indexed grains and the unindexed
        pixels inside the particle); ``None``: the whole map. Stored as run
        lengths in the sections file.
    """

    file: str
    step_nm: float
    origin: np.ndarray
    seeds: np.ndarray
    D: np.ndarray
    r: np.ndarray
    grain_labels: np.ndarray
    pixel_agreement: float
    shape: tuple[int, int]
    central: bool | None = None
    mask: np.ndarray | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.file, str):
            raise StereograinError(f"file must be a string, got {type(self.file).__name__}")
        step = _finite_float(self.step_nm, "step_nm")
        if step <= 0:
            raise StereograinError(f"step_nm must be positive, got {step}")
        origin = _float_array(self.origin, "origin", (2,))
        seeds = _float_array(self.seeds, "seeds", (None, 2))
        n = len(seeds)
        if n < 2:
            raise StereograinError(f"a fitted section needs at least 2 cells, got {n}")
        D = _float_array(self.D, "D", (n, 2))
        if np.any(D <= 0):
            raise StereograinError("every entry of D must be positive (M must be positive definite)")
        r = _float_array(self.r, "r", (n,))
        gl = np.asarray(self.grain_labels)
        if gl.shape != (n,) or not (gl.dtype.kind in "iu" or (gl.dtype.kind == "f" and np.all(gl == np.round(gl)))):
            raise StereograinError(f"grain_labels must be {n} integers, got shape {gl.shape} of {gl.dtype}")
        gl = gl.astype(np.int64)
        if np.any(gl <= 0) or len(np.unique(gl)) != n:
            raise StereograinError("grain_labels must be distinct positive integers")
        agreement = _finite_float(self.pixel_agreement, "pixel_agreement")
        if not 0.0 <= agreement <= 1.0:
            raise StereograinError(f"pixel_agreement must lie in [0, 1], got {agreement}")
        shape = tuple(self.shape) if isinstance(self.shape, (tuple, list, np.ndarray)) else ()
        if len(shape) != 2 or not all(_is_int(v) and int(v) > 0 for v in shape):
            raise StereograinError(f"shape must be two positive integers (H, W), got {self.shape!r}")
        if self.central is not None and not isinstance(self.central, (bool, np.bool_)):
            raise StereograinError(f"central must be true, false or null, got {self.central!r}")
        if self.central is not None:
            object.__setattr__(self, "central", bool(self.central))
        if self.mask is not None:
            mask = np.asarray(self.mask)
            if mask.shape != tuple(int(v) for v in shape) or mask.dtype != bool:
                raise StereograinError(f"mask must be a boolean image of shape {tuple(shape)}, got {mask.dtype} {mask.shape}")
            mask = mask.copy()
            mask.setflags(write=False)
            object.__setattr__(self, "mask", mask)
        for name, value in (
            ("step_nm", step),
            ("origin", origin),
            ("seeds", seeds),
            ("D", D),
            ("r", r),
            ("grain_labels", gl),
            ("pixel_agreement", agreement),
            ("shape", (int(shape[0]), int(shape[1]))),
        ):
            if isinstance(value, np.ndarray):
                value.setflags(write=False)
            object.__setattr__(self, name, value)

    @property
    def n(self) -> int:
        """Number of cells."""
        return len(self.seeds)

    @property
    def in_generator_range(self) -> bool:
        """Whether ``D`` and ``r`` lie in the GAN generator's ranges ``(0, 50]`` and ``[1, 10]``."""
        lo, hi = R_RANGE
        return bool(np.all(self.D <= D_MAX) and self.r.min() >= lo - 1e-9 and self.r.max() <= hi + 1e-9)

    def gbpd(self) -> GBPD:
        """The fitted tessellation as a restricted :class:`~stereograin.tessellation.GBPD` (frame at ``origin``)."""
        return GBPD.restricted(self.seeds, self.D, self.r)

    def label_image(self) -> np.ndarray:
        """Exact fitted labels on the map's grid, ``(H, W)`` int64 of measured grain labels.

        Every pixel of the particle (unindexed ones too) gets the measured
        label of the cell it falls in: this is the paper's prescription for
        missing pixels. Pixels outside ``mask`` (when known) are 0.
        """
        H, W = self.shape
        inside = np.ones((H, W), bool) if self.mask is None else self.mask
        out = np.zeros((H, W), np.int64)
        if inside.any():
            cell = _exact_cells(_pixel_points(inside, self.origin), self.seeds, self.D, self.r)
            out[inside] = self.grain_labels[cell]
        return out

    def augment(
        self, rng: np.random.Generator | int | None = None, low: float = 0.8, high: float = 1.2
    ) -> "FittedSection":
        """Marker augmentation (paper, training data): ``r_i`` and each ``D_i`` entry times ``U(low, high)``.

        The factors are independent per value; seeds are kept.

        Parameters
        ----------
        rng : numpy Generator, int seed or None
        low, high : float
            Bounds of the uniform factors, ``0 < low <= high``.
        """
        low, high = _finite_float(low, "low"), _finite_float(high, "high")
        if not 0 < low <= high:
            raise StereograinError(f"augmentation bounds need 0 < low <= high, got ({low}, {high})")
        rng = np.random.default_rng(rng)
        fD = rng.uniform(low, high, size=self.D.shape)
        fr = rng.uniform(low, high, size=self.r.shape)
        return FittedSection(
            self.file, self.step_nm, self.origin, self.seeds, self.D * fD, self.r * fr,
            self.grain_labels, self.pixel_agreement, self.shape, self.central, self.mask,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (lists of floats / ints)."""
        return {
            "file": self.file,
            "step_nm": float(self.step_nm),
            "shape": [int(v) for v in self.shape],
            "origin": self.origin.tolist(),
            "pixel_agreement": float(self.pixel_agreement),
            "grain_labels": self.grain_labels.tolist(),
            "seeds": self.seeds.tolist(),
            "D": self.D.tolist(),
            "r": self.r.tolist(),
            "central": self.central,
            "mask_rle": None if self.mask is None else _rle(self.mask),
        }

    @classmethod
    def from_dict(cls, d: Any, where: str = "section") -> "FittedSection":
        """Inverse of :meth:`to_dict`; malformed input raises a one-line :class:`StereograinError`."""
        if not isinstance(d, dict):
            raise StereograinError(f"{where} must be a JSON object, got {type(d).__name__}")
        keys = ("file", "step_nm", "shape", "origin", "pixel_agreement", "grain_labels", "seeds", "D", "r")
        missing = [k for k in keys if k not in d]
        if missing:
            raise StereograinError(f"{where} lacks key(s) {', '.join(missing)}; was it written by stereograin?")
        try:
            return cls(
                file=d["file"],
                step_nm=d["step_nm"],
                origin=_as_array(d["origin"], "origin"),
                seeds=_as_array(d["seeds"], "seeds"),
                D=_as_array(d["D"], "D"),
                r=_as_array(d["r"], "r"),
                grain_labels=_as_array(d["grain_labels"], "grain_labels"),
                pixel_agreement=d["pixel_agreement"],
                shape=d["shape"],
                central=d.get("central"),
                mask=None if d.get("mask_rle") is None else _unrle(d["mask_rle"], d["shape"]),
            )
        except StereograinError as exc:
            raise StereograinError(f"{where}: {exc}") from None


def _rle(mask: np.ndarray) -> list[int]:
    """Run lengths of a boolean image in row-major order, starting with a run of False (may be 0)."""
    flat = np.asarray(mask, bool).reshape(-1)
    edges = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    bounds = np.concatenate([[0], edges, [flat.size]])
    runs = np.diff(bounds).tolist()
    return ([0] + runs) if flat.size and flat[0] else runs


def _unrle(runs: Any, shape: Any) -> np.ndarray:
    """Inverse of :func:`_rle`."""
    try:
        H, W = (int(v) for v in shape)
    except (TypeError, ValueError):
        raise StereograinError(f"shape must be two positive integers (H, W), got {shape!r}") from None
    try:
        r = np.asarray(runs, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError):
        raise StereograinError("mask_rle must be a list of run lengths") from None
    if np.any(r < 0) or r.sum() != H * W:
        raise StereograinError(f"mask_rle does not cover the {H} x {W} map; the sections file is corrupt")
    values = (np.arange(len(r)) % 2).astype(bool)
    return np.repeat(values, r).reshape(H, W)


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _finite_float(v: Any, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise StereograinError(f"{name} must be a number, got {v!r}")
    f = float(v)
    if not math.isfinite(f):
        raise StereograinError(f"{name} must be finite, got {f}")
    return f


def _as_array(v: Any, name: str) -> np.ndarray:
    try:
        a = np.asarray(v)
    except (ValueError, TypeError):
        raise StereograinError(f"{name} must be a (nested) list of numbers") from None
    if a.dtype.kind not in "iuf" or a.dtype == bool:
        raise StereograinError(f"{name} must be a (nested) list of numbers, got dtype {a.dtype}")
    return a


def _float_array(v: Any, name: str, shape: tuple[int | None, ...]) -> np.ndarray:
    a = _as_array(v, name)
    if a.ndim != len(shape) or any(s is not None and a.shape[k] != s for k, s in enumerate(shape)):
        want = "(" + ", ".join("n" if s is None else str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"
        raise StereograinError(f"{name} must have shape {want}, got {a.shape}")
    a = np.array(a, dtype=np.float64)
    if not np.all(np.isfinite(a)):
        raise StereograinError(f"{name} must be finite (no NaN / inf)")
    return a


# --------------------------------------------------------------------------- geometry


def _pixel_points(mask: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """``(P, 2)`` float64 coordinates ``(i, j) - origin`` of the ``True`` pixels, row-major."""
    j, i = np.nonzero(mask)
    return np.stack([i - origin[0], j - origin[1]], axis=1).astype(np.float64)


def _unit_radial(seeds: np.ndarray, eps: float = 1e-9) -> np.ndarray:
    norm = np.linalg.norm(seeds, axis=1, keepdims=True)
    return np.where(norm > eps, seeds / np.maximum(norm, eps), np.array([1.0, 0.0]))


def _exact_cells(points: np.ndarray, seeds: np.ndarray, D: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Exact cell index (argmin over all cells, ties to the lowest) of each point, ``(P,)`` int64."""
    return GBPD.restricted(seeds, D, r).label_points(np.asarray(points, dtype=np.float64)) - 1


# --------------------------------------------------------------------------- synthetic maps


def synthetic_section_map(
    size: int,
    n_grains: int,
    rng: np.random.Generator | int | None = None,
    unindexed_fraction: float = 0.02,
) -> tuple[np.ndarray, GBPD, np.ndarray]:
    """A grain map cut from a known radial restricted 2D GBPD inside a disc.

    Seeds are uniform in a disc of radius ``size / 2 - 1`` px around the map
    centre (``n_grains`` of them) and in a ring of a few grain diameters
    outside it (same density), so grains at the rim are cut like real ones.
    Markers: ``D = (U(0.3, 1), U(1, 3))`` (radial axis weighted less: cells are
    elongated towards the centre), ``r ~ U(1, 4)`` px.

    Parameters
    ----------
    size : int
        The map is ``size x size`` px.
    n_grains : int
        Seeds inside the disc (the visible grains are about this many).
    rng : numpy Generator, int seed or None
    unindexed_fraction : float
        Fraction of the disc's pixels set to 0 at random (EBSD misses).

    Returns
    -------
    labels : (size, size) int64
        ``1 + cell index`` of ``truth`` inside the disc, 0 outside and at the
        unindexed pixels (labels need not be consecutive).
    truth : GBPD
        The restricted GBPD, seeds relative to ``origin``.
    origin : (2,) float64
        The disc centre ``(x, y)`` in px.
    """
    if not _is_int(size) or size < 8:
        raise StereograinError(f"size must be an integer >= 8, got {size!r}")
    if not _is_int(n_grains) or n_grains < 2:
        raise StereograinError(f"n_grains must be an integer >= 2, got {n_grains!r}")
    frac = _finite_float(unindexed_fraction, "unindexed_fraction")
    if not 0 <= frac < 1:
        raise StereograinError(f"unindexed_fraction must lie in [0, 1), got {frac}")
    rng = np.random.default_rng(rng)
    R = size / 2 - 1
    origin = np.array([(size - 1) / 2, (size - 1) / 2])
    density = n_grains / (math.pi * R**2)
    margin = 3.0 / math.sqrt(density)  # about three grain spacings
    n_out = int(rng.poisson(density * math.pi * ((R + margin) ** 2 - R**2)))
    rad = np.concatenate([R * np.sqrt(rng.random(n_grains)), np.sqrt(rng.uniform(R**2, (R + margin) ** 2, n_out))])
    phi = rng.uniform(0, 2 * math.pi, len(rad))
    seeds = np.stack([rad * np.cos(phi), rad * np.sin(phi)], axis=1)
    n = len(seeds)
    D = np.stack([rng.uniform(0.3, 1.0, n), rng.uniform(1.0, 3.0, n)], axis=1)
    r = rng.uniform(1.0, 4.0, n)
    truth = GBPD.restricted(seeds, D, r)
    disc = np.hypot(*np.meshgrid(np.arange(size) - origin[1], np.arange(size) - origin[0], indexing="ij")) <= R
    labels = np.zeros((size, size), np.int64)
    labels[disc] = _exact_cells(_pixel_points(disc, origin), seeds, D, r) + 1
    miss = disc & (rng.random((size, size)) < frac)
    labels[miss] = 0
    return labels, truth, origin


# --------------------------------------------------------------------------- fit


def _check_labels(labels: Any) -> np.ndarray:
    lab = np.asarray(labels)
    if lab.ndim != 2:
        raise StereograinError(f"labels must be a 2D (H, W) label image, got {lab.ndim}D of shape {lab.shape}")
    if lab.size == 0:
        raise StereograinError(f"labels is empty (shape {lab.shape})")
    if lab.dtype == bool or lab.dtype.kind not in "iu":
        raise StereograinError(
            f"labels must be an integer label image (0 = unindexed, grains 1..n), got dtype {lab.dtype}"
        )
    if lab.min() < 0:
        raise StereograinError("labels must be >= 0 (0 = unindexed / outside, grains 1..n)")
    return lab.astype(np.int64, copy=False)


def _initial_markers(points: np.ndarray, target: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeds, D, r from each grain's centroid and second moments in its radial frame.

    A restricted cell is about an ellipse with semi-axes ``a_k = rho / sqrt(D_k)``
    where ``rho = r + c`` is the metric distance of its boundary (``c`` common to
    all cells). A uniform ellipse has variance ``a_k^2 / 4`` along axis ``k``, so
    ``D_k = g / var_k`` with ``g = sqrt(var_0 var_1)`` (``D`` of geometric mean 1,
    the gauge) and ``r = rho = 2 g^(1/2)`` (the mean semi-axis, ``c = 0``).
    """
    count = np.bincount(target, minlength=n).astype(np.float64)
    c = np.stack([np.bincount(target, points[:, k], n) for k in range(2)], axis=1) / count[:, None]
    d = points - c[target]
    cov = np.stack([np.bincount(target, w, n) for w in (d[:, 0] ** 2, d[:, 0] * d[:, 1], d[:, 1] ** 2)], axis=1)
    cov /= count[:, None]
    u = _unit_radial(c)
    var_rad = u[:, 0] ** 2 * cov[:, 0] + 2 * u[:, 0] * u[:, 1] * cov[:, 1] + u[:, 1] ** 2 * cov[:, 2]
    var_tan = u[:, 1] ** 2 * cov[:, 0] - 2 * u[:, 0] * u[:, 1] * cov[:, 1] + u[:, 0] ** 2 * cov[:, 2]
    # 1/12 px^2: the variance of one pixel, so that one-pixel-wide grains stay finite
    var = np.stack([var_rad, var_tan], axis=1) + 1.0 / 12.0
    g = np.sqrt(var[:, 0] * var[:, 1])
    D = g[:, None] / var
    r = 2.0 * np.sqrt(g)
    return c, D, r


def _candidates(
    points: np.ndarray, seeds: np.ndarray, D: np.ndarray, r: np.ndarray, target: np.ndarray, k: int
) -> np.ndarray:
    """``(P, k)`` distinct cell indices per pixel: its measured cell, the current exact winner, the nearest seeds.

    Column 0 is the measured cell. The exact winner (argmin over *all* cells)
    takes a slot so that a cell reaching far beyond its seed's neighbourhood
    (small ``D`` or large ``r``) is seen, and pushed back, by the loss.
    """
    from scipy.spatial import cKDTree

    P = len(points)
    k = min(k, len(seeds))
    _, nn = cKDTree(seeds).query(points, k=k)
    nn = nn.reshape(P, k)
    rows = np.arange(P)
    win = _exact_cells(points, seeds, D, r)
    # the last slot goes to the exact winner, unless it is the measured cell or a neighbour already
    nn[:, -1] = np.where((win != target) & ~(nn[:, :-1] == win[:, None]).any(axis=1), win, nn[:, -1])
    own = nn == target[:, None]
    drop = np.where(own.any(axis=1), own.argmax(axis=1), k - 2)  # measured cell absent: drop the farthest neighbour
    keep = np.ones_like(own)
    keep[rows, drop] = False
    others = nn[keep].reshape(P, k - 1)
    return np.ascontiguousarray(np.concatenate([target[:, None], others], axis=1))


@numba.njit(cache=True, nogil=True)
def _loss_grad_kernel(points, cand, seeds, u, D, r, inv_t, g_s, g_u, g_D, g_r):  # pragma: no cover - compiled
    """Mean cross entropy of the measured cell (column 0 of ``cand``) and its gradient.

    The soft map (Eq. 11) over each pixel's candidates, in log space. The
    gradient is accumulated into ``g_s`` (through ``x - s``), ``g_u`` (through
    the radial direction), ``g_D`` and ``g_r``.
    """
    P, k = cand.shape
    z = np.empty(k)
    dist = np.empty(k)
    aa = np.empty(k)
    bb = np.empty(k)
    vxs = np.empty(k)
    vys = np.empty(k)
    total = 0.0
    scale = 1.0 / P
    for p in range(P):
        x, y = points[p, 0], points[p, 1]
        zmax = -np.inf
        for j in range(k):
            c = cand[p, j]
            vx, vy = x - seeds[c, 0], y - seeds[c, 1]
            a = vx * u[c, 0] + vy * u[c, 1]
            b = vy * u[c, 0] - vx * u[c, 1]
            # the floor keeps the gradient finite at a seed
            d = math.sqrt(D[c, 0] * a * a + D[c, 1] * b * b + 1e-12)
            vxs[j], vys[j], aa[j], bb[j], dist[j] = vx, vy, a, b, d
            z[j] = (r[c] - d) * inv_t
            zmax = max(zmax, z[j])
        acc = 0.0
        for j in range(k):
            acc += math.exp(z[j] - zmax)
        lse = zmax + math.log(acc)
        total += lse - z[0]
        for j in range(k):
            c = cand[p, j]
            w = math.exp(z[j] - lse) - (1.0 if j == 0 else 0.0)
            gz = w * scale * inv_t  # d loss / d r_c ; d loss / d dist = -gz
            g_r[c] += gz
            d, a, b = dist[j], aa[j], bb[j]
            gd = -gz / d
            g_D[c, 0] += 0.5 * gd * a * a
            g_D[c, 1] += 0.5 * gd * b * b
            ga = gd * D[c, 0] * a
            gb = gd * D[c, 1] * b
            g_s[c, 0] -= ga * u[c, 0] - gb * u[c, 1]
            g_s[c, 1] -= ga * u[c, 1] + gb * u[c, 0]
            g_u[c, 0] += ga * vxs[j] + gb * vys[j]
            g_u[c, 1] += ga * vys[j] - gb * vxs[j]
    return total * scale


def _markers(logd_raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``D`` from the free parameters: geometric mean 1 (the gauge), clipped to ``[D_FLOOR, D_MAX]``."""
    ld = logd_raw - logd_raw.mean()
    return np.exp(np.clip(ld, math.log(D_FLOOR), math.log(D_MAX))), (ld > math.log(D_FLOOR)) & (ld < math.log(D_MAX))


def _loss_and_grad(
    points: np.ndarray,
    cand: np.ndarray,
    seeds: np.ndarray,
    logd_raw: np.ndarray,
    r: np.ndarray,
    temperature: float,
    prior: tuple[float, np.ndarray, np.ndarray] | None = None,
) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """Soft-map cross entropy over the indexed pixels and its gradient in ``(seeds, log D (free), r)``.

    ``prior = (weight, log D0, r0)`` adds ``weight * mean_i(|log D_i - log D0_i|^2 + (r_i - r0_i)^2)``.
    """
    D, free = _markers(logd_raw)
    nrm = np.sqrt((seeds**2).sum(1, keepdims=True) + 1e-12)
    u = seeds / nrm
    g_s, g_u, g_D, g_r = np.zeros_like(seeds), np.zeros_like(seeds), np.zeros_like(D), np.zeros_like(r)
    loss = _loss_grad_kernel(points, cand, seeds, u, D, r, 1.0 / temperature, g_s, g_u, g_D, g_r)
    g_s += (g_u - (g_u * u).sum(1, keepdims=True) * u) / nrm  # through u = s / |s|
    g_ld = g_D * D * free
    if prior is not None:
        w, ld0, r0 = prior
        n = len(r)
        dld = logd_raw - logd_raw.mean() - ld0
        loss += w * ((dld**2).sum() + ((r - r0) ** 2).sum()) / n
        g_ld = g_ld + 2 * w / n * dld
        g_r = g_r + 2 * w / n * (r - r0)
    return loss, g_s, g_ld - g_ld.mean(), g_r  # the gauge projection is its own adjoint


def fit_section(
    labels: np.ndarray,
    origin: np.ndarray,
    step_nm: float = 50.0,
    iterations: int = 400,
    lr: float = 0.05,
    temperature: tuple[float, float] = (1.0, 0.1),
    candidates: int = 12,
    refresh: int = 20,
    prior: float = 0.01,
    seed: int | None = 0,
    file: str = "",
    progress: bool = False,
) -> FittedSection:
    """Fit a restricted 2D GBPD to a grain label image (Petrich et al. 2021, paper ref. 43).

    Seeds start at the grains' centroids, ``D`` and ``r`` from their second
    moments in the radial frame (see :func:`_initial_markers`). Adam then
    minimises the mean cross entropy between the soft map (Eq. 11) and the
    measured labels over the *indexed* pixels only (unindexed pixels never
    enter the loss), with the softmax temperature annealed geometrically from
    ``temperature[0]`` to ``temperature[1]`` (px of metric distance). Each
    pixel competes only among its measured cell, the cell that currently
    wins it exactly and its nearest other seeds (``candidates`` in all,
    refreshed every ``refresh`` steps), so one step costs ``O(P k)``.

    Parameters
    ----------
    labels : (H, W) int array
        0 = unindexed / outside the particle, grains are positive integers
        (need not be consecutive); at least two grains.
    origin : (2,) float
        Particle centre ``(x, y)`` in px of the map (pixel ``[j, i]`` is at
        ``(i, j)``): the origin of the radial frames.
    step_nm : float
        Pixel size in nm (stored, not used by the fit).
    iterations : int
        Adam steps (0: return the initial guess).
    lr : float
        Adam step size: px for seeds and ``r``, and for ``log D``.
    temperature : (float, float)
        Start and end temperature of the soft map, px.
    candidates : int
        Cells per pixel in the loss (``k``).
    refresh : int
        Candidate lists are recomputed every so many steps.
    prior : float
        Weight of the quadratic pull of ``log D`` and ``r`` (px) towards their
        initial values, per cell (0: none); see the module notes on the gauge.
    seed : int or None
        Seeds the tiny jitter (1e-3 px) that separates coinciding centroids.
    file : str
        Stored in the result.
    progress : bool
        Print the loss now and then.

    Returns
    -------
    FittedSection
        Seeds relative to ``origin`` in px; ``pixel_agreement`` from the
        exact (argmin) labelling of the indexed pixels.
    """
    lab = _check_labels(labels)
    o = _float_array(origin, "origin", (2,))
    step = _finite_float(step_nm, "step_nm")
    if step <= 0:
        raise StereograinError(f"step_nm must be positive, got {step}")
    if not _is_int(iterations) or iterations < 0:
        raise StereograinError(f"iterations must be an integer >= 0, got {iterations!r}")
    if not _is_int(candidates) or candidates < 2:
        raise StereograinError(f"candidates must be an integer >= 2, got {candidates!r}")
    if not _is_int(refresh) or refresh < 1:
        raise StereograinError(f"refresh must be a positive integer, got {refresh!r}")
    lr = _finite_float(lr, "lr")
    prior = _finite_float(prior, "prior")
    if prior < 0:
        raise StereograinError(f"prior must be >= 0, got {prior}")
    if not isinstance(temperature, (tuple, list)) or len(temperature) != 2:
        raise StereograinError(f"temperature must be a pair (start, end), got {temperature!r}")
    t0, t1 = (_finite_float(t, "temperature") for t in temperature)
    if lr <= 0 or t0 <= 0 or t1 <= 0:
        raise StereograinError(f"lr and temperatures must be positive, got lr={lr}, temperature=({t0}, {t1})")
    mask = lab > 0
    grains, target = np.unique(lab[mask], return_inverse=True)
    n = len(grains)
    if n < 2:
        raise StereograinError(
            f"the label image holds {n} grain(s); a tessellation fit needs at least 2 (0 marks unindexed pixels)"
        )
    points = _pixel_points(mask, o)
    target = target.reshape(-1).astype(np.int64)

    seeds, D0, r = _initial_markers(points, target, n)
    seeds = seeds + np.random.default_rng(seed).normal(0.0, 1e-3, seeds.shape)
    logd = np.log(D0)
    pri = (prior, logd.copy(), r.copy()) if prior > 0 else None
    params = [seeds, logd, r]
    m = [np.zeros_like(x) for x in params]
    v = [np.zeros_like(x) for x in params]
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    cand = None
    for it in range(iterations):
        if it % refresh == 0:
            cand = _candidates(points, seeds, _markers(logd)[0], r, target, candidates)
        T = t0 * (t1 / t0) ** (it / max(iterations - 1, 1))
        loss, *grads = _loss_and_grad(points, cand, seeds, logd, r, T, pri)
        for x, g, mx, vx in zip(params, grads, m, v):  # Adam, in place
            mx *= beta1
            mx += (1 - beta1) * g
            vx *= beta2
            vx += (1 - beta2) * g * g
            x -= lr * (mx / (1 - beta1 ** (it + 1))) / (np.sqrt(vx / (1 - beta2 ** (it + 1))) + eps)
        if progress and (it % 50 == 0 or it == iterations - 1):
            print(f"fit_section: step {it:5d}  T={T:.3f}  loss={loss:.4f}", flush=True)
    D = _markers(logd)[0]
    D, r = _to_generator_range(D, r)
    agreement = float(np.mean(_exact_cells(points, seeds, D, r) == target))
    from .sections import particle_mask

    return FittedSection(
        file, step, o, seeds, D, r, grains.astype(np.int64), agreement, lab.shape, mask=particle_mask(lab)
    )


def _to_generator_range(D: np.ndarray, r: np.ndarray, min_scale: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Use the gauge freedoms to bring ``r`` into ``R_RANGE`` without changing the tessellation.

    If the spread of ``r`` exceeds the range's width, ``(D, r)`` is scaled by
    ``(c^2, c)`` with ``c = width / spread``, but not below ``min_scale`` (a
    much smaller ``c`` would make the cells' soft maps much softer). Then
    ``r`` is shifted as little as possible into the range (``min r = 1`` if
    it does not fit).
    """
    lo, hi = R_RANGE
    spread = float(r.max() - r.min())
    if spread > hi - lo:
        c = max((hi - lo) / spread, min_scale)
        D, r = D * c * c, r * c
    if r.min() < lo or r.max() - r.min() > hi - lo:
        return D, r + (lo - r.min())
    if r.max() > hi:
        return D, r + (hi - r.max())
    return D, r


# --------------------------------------------------------------------------- files


def write_sections(path: str | os.PathLike, fitted: list[FittedSection]) -> None:
    """Write fitted sections to a JSON file (atomically), top-level key ``sections``.

    The file also holds ``format`` (``"stereograin.sections"``),
    ``format_version``, ``stereograin_version`` and ``units``.
    """
    from . import __version__
    from .io import write_json

    items = list(fitted)
    bad = [type(f).__name__ for f in items if not isinstance(f, FittedSection)]
    if bad:
        raise StereograinError(f"write_sections takes FittedSection objects, got {bad[0]}")
    write_json(
        path,
        {
            "format": SECTIONS_FORMAT,
            "format_version": SECTIONS_FORMAT_VERSION,
            "stereograin_version": __version__,
            "units": dict(_UNITS),
            "sections": [f.to_dict() for f in items],
        },
    )


def read_sections(path: str | os.PathLike) -> list[FittedSection]:
    """Read a file written by :func:`write_sections`; malformed files raise a one-line :class:`StereograinError`."""
    from .io import read_json

    obj = read_json(path, "sections file")
    where = f"sections file {Path(path)}"
    if not isinstance(obj, dict) or obj.get("format") != SECTIONS_FORMAT:
        raise StereograinError(f"{where} is not a stereograin sections file (format {SECTIONS_FORMAT!r} expected)")
    version = obj.get("format_version")
    if not _is_int(version) or not 1 <= version <= SECTIONS_FORMAT_VERSION:
        raise StereograinError(
            f"{where} has format_version {version!r}; this stereograin reads up to {SECTIONS_FORMAT_VERSION}"
        )
    sections = obj.get("sections")
    if not isinstance(sections, list):
        raise StereograinError(f"{where} lacks a 'sections' list")
    return [FittedSection.from_dict(d, f"{where}, section {k}") for k, d in enumerate(sections)]


# --------------------------------------------------------------------------- figure


def plot_fit(labels: np.ndarray, fitted: FittedSection, path: str | os.PathLike, dpi: int = 120) -> None:
    """Measured vs fitted labels side by side, fitted cell boundaries over the measured map (PNG).

    A grain and its fitted cell share a colour; unindexed pixels are white on
    the left and filled by the fit on the right.
    """
    from matplotlib.figure import Figure

    from .io import atomic_path
    from .plots_sections import label_boundaries, label_colours

    lab = _check_labels(labels)
    if lab.shape != fitted.shape:
        raise StereograinError(f"labels have shape {lab.shape} but the fit was made on {fitted.shape}")
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise StereograinError(f"figures are written as PNG; give a file name ending in .png, got {path.name!r}")
    fit = fitted.label_image()
    lut = label_colours(int(max(lab.max(), fit.max())))
    measured, fitted_rgb = lut[lab], lut[fit]
    overlay = measured.copy()
    overlay[label_boundaries(fit)] = 0.0
    fig = Figure(figsize=(12, 4.4))
    axes = fig.subplots(1, 3)
    titles = ("measured (white: unindexed)", "fitted GBPD", "fitted boundaries on measured")
    for ax, img, title in zip(axes, (measured, fitted_rgb, overlay), titles):
        ax.imshow(img, interpolation="nearest")
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes:
        ax.plot([fitted.origin[0]], [fitted.origin[1]], "k+", ms=8)
    name = fitted.file or "section"
    fig.suptitle(f"{name}: {fitted.n} cells, pixel agreement {100 * fitted.pixel_agreement:.2f} %")
    fig.tight_layout()
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fig.savefig(fh, format="png", dpi=dpi)


# --------------------------------------------------------------------------- benchmark


def benchmark_fit(size: int = 225, n_grains: int = 500, seed: int = 0, **fit_kw: Any) -> dict[str, float]:
    """Time :func:`fit_section` on a :func:`synthetic_section_map`.

    The kernels are compiled (or loaded from numba's cache) on a tiny map
    first, so the time is the fit's alone.

    Returns
    -------
    dict
        ``fit2d_s_per_map`` (s), ``pixel_agreement``, ``n_grains`` (measured),
        ``n_pixels`` (indexed).
    """
    labels, _, origin = synthetic_section_map(size, n_grains, seed)
    warm, _, warm_origin = synthetic_section_map(16, 4, 0)
    fit_section(warm, warm_origin, iterations=2)
    t0 = time.perf_counter()
    fitted = fit_section(labels, origin, **fit_kw)
    elapsed = time.perf_counter() - t0
    return {
        "fit2d_s_per_map": elapsed,
        "pixel_agreement": fitted.pixel_agreement,
        "n_grains": float(fitted.n),
        "n_pixels": float(np.count_nonzero(labels)),
    }
