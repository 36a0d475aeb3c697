"""Seeds of the grain model: a marked homogeneous Poisson process, and the training slab.

A realisation is ``(s_i, n_i, gamma_i)``: positions ``s_i`` in px (EBSD pixels
of 50 nm, relative to the particle centre), noise ``n_i`` uniform in
``[0, 1]^2`` and spins ``gamma_i`` uniform in ``[0, pi]`` (paper, Algorithm 1
and the window ``W = [-128, 128]^3 x [0, 1]^2 x [0, pi]``).

Training slab: which seeds a cutout needs
-----------------------------------------
A 3D cutout (Eq. 16) evaluates the tessellation at the 32 x 32 points
``(x + p, y - 16.5, 0)``, ``x, y = 1..32``: a 31 x 31 px square ``C`` in the
plane ``z = 0``. Its exact labels depend on (a) the seeds that can win a pixel
of ``C`` and (b) those seeds' markers, which depend on their ``kappa`` nearest
neighbours. With markers bounded by ``D`` in ``[d_floor, d_max]`` and ``r`` in
``[r_min, r_max]`` (:class:`~stereograin.grains.generator.MarkerNet`
guarantees this), ``sqrt(d_floor) |v| <= |v|_M <= sqrt(d_max) |v|``.

(a) Reach (deterministic given the bounds). Let ``t_1`` be such that every
pixel ``x`` of ``C`` has a seed within ``t_1``. That seed's cost is at most
``U = sqrt(d_max) t_1 - r_min``; a seed ``j`` at distance at least ``rho``
from ``x`` costs at least ``sqrt(d_floor) rho - r_max``. So ``j`` can never
win a pixel of ``C`` if it lies farther than

    rho = (sqrt(d_max) t_1 - r_min + r_max) / sqrt(d_floor)

from ``C``. ``t_1`` is the only random ingredient: cover ``C`` by a 9 x 9
grid of centres ``c_m`` (every pixel within ``delta = 2.74`` px of one); if
every ball ``B(c_m, t_1 - delta)`` holds a seed, every pixel has one within
``t_1``. The chance that one of the 81 balls is empty is at most
``81 exp(-mu 4/3 pi (t_1 - delta)^3)``, set to ``tol``. Given the realised
markers, :func:`reach_certificate` replaces ``U`` by the exact best cost at
each pixel and is deterministic.

(b) Neighbours (probabilistic). A seed's ``kappa``-th neighbour lies farther
than ``t`` with probability ``P(Poisson(mu 4/3 pi t^3) < kappa)``. The
``N = mu |C + B(rho)|`` seeds that may win need exact neighbours; ``t_kappa``
makes the union bound ``N P(...) <= tol``.

Hence the drawn region is the cutout square dilated by ``H = rho + t_kappa``
in x and y and the slab ``|z| <= H``, intersected with the model window ``W``
(no seeds exist outside it, so clipping to ``W`` is exact for the model on
``W``). The chance that a cutout differs from the one of the full window is
at most ``2 tol``.

The compromise. The bound is worst case: ``sqrt(d_max / d_floor)`` is the
largest anisotropy a grain may have. With the paper's ranges and our floor
(``D`` in ``(0.01, 50]``, ratio 71) at ``mu_1 = 0.0018``: ``t_1 = 16.2`` px,
``rho ~ 1232`` px, far beyond ``W``, so :func:`slab_geometry` clips to ``W``
(``clipped=True``): exact, but no saving. A real saving rigorously needs a
larger floor, i.e. less elongated grains; e.g. ``d_floor = 9`` (ratio 2.4)
gives ``rho = 41`` px, ``t_kappa = 18`` px, ``H = 59`` px. The paper's
"small window" is an empirical choice; here it is a parameter
(``geometry=``), and :func:`reach_certificate` tells after the fact whether
a drawn region was wide enough for the realised markers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import special

from ..errors import StereograinError
from ..fit2d import D_FLOOR, D_MAX, R_RANGE

__all__ = [
    "Seeds",
    "poisson_seeds",
    "SlabGeometry",
    "slab_geometry",
    "training_slab",
    "cutout_box",
    "reach_certificate",
    "WINDOW_HALF",
    "MU_1",
    "P_MAX",
    "CUTOUT",
]

#: Half width of the model window ``W = [-128, 128]^3`` in px.
WINDOW_HALF = 128.0
#: Initial intensity ``mu_1`` in seeds / px^3 (Eq. 13).
MU_1 = 0.0018
#: Largest cutout offset ``p`` in px (``p`` in ``(0, 80]``).
P_MAX = 80.0
#: Cutout side in pixels.
CUTOUT = 32


@dataclass(frozen=True)
class Seeds:
    """A marked point pattern ``(s_i, n_i, gamma_i)``.

    Attributes
    ----------
    positions : (n, 3) float64
        Seed positions in px, relative to the particle centre.
    noise : (n, 2) float64
        Per-seed noise in ``[0, 1]^2`` (generator input).
    gamma : (n,) float64
        Spin angles in ``[0, pi]`` (Eq. 12).
    """

    positions: np.ndarray
    noise: np.ndarray
    gamma: np.ndarray

    def __post_init__(self) -> None:
        s = np.asarray(self.positions, dtype=np.float64)
        nz = np.asarray(self.noise, dtype=np.float64)
        g = np.asarray(self.gamma, dtype=np.float64)
        if s.ndim != 2 or s.shape[1] != 3:
            raise StereograinError(f"positions must have shape (n, 3), got {s.shape}")
        if nz.shape != (len(s), 2) or g.shape != (len(s),):
            raise StereograinError(f"noise must be ({len(s)}, 2) and gamma ({len(s)},), got {nz.shape} and {g.shape}")
        object.__setattr__(self, "positions", s)
        object.__setattr__(self, "noise", nz)
        object.__setattr__(self, "gamma", g)

    def __len__(self) -> int:
        return len(self.positions)

    def subset(self, mask: np.ndarray) -> "Seeds":
        """The seeds where ``mask`` (bool (n,) or index array) selects."""
        return Seeds(self.positions[mask], self.noise[mask], self.gamma[mask])

    def inside(self, box: np.ndarray) -> np.ndarray:
        """Bool (n,): seeds inside the closed box ``(3, 2)`` of ``(lo, hi)`` per axis (px)."""
        b = np.asarray(box, dtype=np.float64)
        return np.all((self.positions >= b[:, 0]) & (self.positions <= b[:, 1]), axis=1)


def _rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _box(window: object) -> np.ndarray:
    b = np.asarray(window, dtype=np.float64)
    if b.shape == (2,):
        b = np.tile(b, (3, 1))
    if b.shape != (3, 2) or not np.all(np.isfinite(b)) or np.any(b[:, 1] < b[:, 0]):
        raise StereograinError(f"window must be a radius, (lo, hi) or (lo, hi) per axis with lo <= hi, got {window!r}")
    return b


def poisson_seeds(
    window: float | tuple[float, float] | np.ndarray,
    mu: float,
    rng: np.random.Generator | int | None = None,
) -> Seeds:
    """Homogeneous Poisson seeds with uniform marks in a box or a ball.

    Parameters
    ----------
    window : float, (lo, hi) or (3, 2) array
        A ball radius in px (centred at the origin), one ``(lo, hi)`` interval
        for all three axes, or ``(lo, hi)`` per axis (px).
    mu : float
        Intensity in seeds / px^3 (``MU_1 = 0.0018`` initially).
    rng : numpy Generator, int seed or None

    Returns
    -------
    Seeds
        ``n ~ Poisson(mu |window|)`` seeds, positions uniform in the window,
        noise uniform in ``[0, 1]^2``, spins uniform in ``[0, pi]``.
    """
    mu = float(mu)
    if not (math.isfinite(mu) and mu > 0):
        raise StereograinError(f"mu must be positive and finite, got {mu!r}")
    g = _rng(rng)
    if np.ndim(window) == 0:
        R = float(window)  # type: ignore[arg-type]
        if not (math.isfinite(R) and R > 0):
            raise StereograinError(f"ball radius must be positive, got {window!r}")
        n = int(g.poisson(mu * 4.0 / 3.0 * math.pi * R**3))
        u = g.standard_normal((n, 3))
        u /= np.maximum(np.linalg.norm(u, axis=1, keepdims=True), 1e-300)
        pos = u * (R * g.random(n) ** (1.0 / 3.0))[:, None]
    else:
        b = _box(window)
        n = int(g.poisson(mu * float(np.prod(b[:, 1] - b[:, 0]))))
        pos = b[:, 0] + g.random((n, 3)) * (b[:, 1] - b[:, 0])
    return Seeds(pos, g.random((n, 2)), g.uniform(0.0, math.pi, n))


@dataclass(frozen=True)
class SlabGeometry:
    """How far around a cutout seeds must be drawn (see the module notes).

    Attributes
    ----------
    h : float
        Half width of the slab ``|z| <= h`` in px (also the x/y margin).
    reach : float
        ``rho``: no seed farther than this from the cutout can win a pixel (px).
    t_kappa : float
        Neighbour margin: the ``kappa``-th neighbours of all seeds within
        ``rho`` lie within it except with probability ``tol`` (px).
    t_1 : float
        Every cutout pixel has a seed within ``t_1`` except with probability ``tol`` (px).
    clipped : bool
        ``rho + t_kappa`` exceeded the window: ``h`` is the window half width.
    """

    h: float
    reach: float
    t_kappa: float
    t_1: float
    clipped: bool


def _ball_volume(t: float) -> float:
    return 4.0 / 3.0 * math.pi * t**3


def slab_geometry(
    mu: float,
    kappa: int = 12,
    d_floor: float = D_FLOOR,
    d_max: float = D_MAX,
    r_range: tuple[float, float] = R_RANGE,
    tol: float = 1e-6,
    window: float | None = WINDOW_HALF,
) -> SlabGeometry:
    """Slab half width ``h = rho + t_kappa`` that makes cutouts exact (module notes).

    Parameters
    ----------
    mu : float
        Intensity in seeds / px^3.
    kappa : int
        Neighbours per seed (generator input).
    d_floor, d_max : float
        Bounds of the entries of ``D`` (dimensionless).
    r_range : (float, float)
        Bounds of ``r`` in px.
    tol : float
        Failure probability of each of the two probabilistic steps.
    window : float or None
        Half width of the model window (px); ``h`` is clipped to it. ``None``:
        no window (stationary model in all of R^3).

    Returns
    -------
    SlabGeometry
    """
    mu = float(mu)
    if not (mu > 0 and math.isfinite(mu)):
        raise StereograinError(f"mu must be positive and finite, got {mu!r}")
    if not (0 < d_floor <= d_max) or not (r_range[0] <= r_range[1]) or not (0 < tol < 1) or kappa < 1:
        raise StereograinError("need 0 < d_floor <= d_max, r_min <= r_max, 0 < tol < 1 and kappa >= 1")
    n_cover = 81
    delta = math.sqrt(2.0) * 0.5 * (CUTOUT - 1) / 8.0  # half diagonal of a 9 x 9 cover cell
    t_1 = delta + (math.log(n_cover / tol) / (mu * 4.0 / 3.0 * math.pi)) ** (1.0 / 3.0)
    rho = (math.sqrt(d_max) * t_1 - r_range[0] + r_range[1]) / math.sqrt(d_floor)
    side = CUTOUT - 1 + 2.0 * rho
    n_rel = max(mu * side * side * 2.0 * rho, 1.0)
    # P(Poisson(lam) < kappa) = Q(kappa, lam), the regularised upper incomplete gamma
    lam = float(special.gammainccinv(kappa, min(tol / n_rel, 0.5)))
    t_kappa = (lam / (mu * 4.0 / 3.0 * math.pi)) ** (1.0 / 3.0)
    h = rho + t_kappa
    clipped = window is not None and h > float(window)
    return SlabGeometry(float(window) if clipped else h, rho, t_kappa, t_1, bool(clipped))


def cutout_box(p: float | None, h: float, margin: float | None = None, window: float | None = WINDOW_HALF) -> np.ndarray:
    """The box ``(3, 2)`` (px) around the cutout at offset ``p`` dilated by ``margin`` (x, y) and ``h`` (z).

    ``p=None`` covers every offset in ``(0, 80]`` (x from ``1`` to ``112``).
    The box is intersected with the window ``[-window, window]^3``.
    """
    m = float(h if margin is None else margin)
    x0, x1 = (1.0, CUTOUT + P_MAX) if p is None else (1.0 + float(p), CUTOUT + float(p))
    half = (CUTOUT - 1) / 2.0
    box = np.array([[x0 - m, x1 + m], [-half - m, half + m], [-float(h), float(h)]])
    if window is not None:
        box = np.clip(box, -float(window), float(window))
    return box


def training_slab(
    mu: float,
    rng: np.random.Generator | int | None = None,
    p: float | None = None,
    geometry: SlabGeometry | None = None,
    margin: float | None = None,
    window: float | None = WINDOW_HALF,
    **geometry_kw: float,
) -> tuple[Seeds, np.ndarray]:
    """Poisson seeds only where a cutout in the plane ``z = 0`` needs them.

    Parameters
    ----------
    mu : float
        Intensity in seeds / px^3.
    rng : numpy Generator, int seed or None
    p : float or None
        Cutout offset in px; ``None`` covers every ``p`` in ``(0, 80]``.
    geometry : SlabGeometry, optional
        Default :func:`slab_geometry` ``(mu, window=window, **geometry_kw)``
        (with the default floor this is the whole window: see the module notes).
    margin : float, optional
        x/y margin in px; default ``geometry.h``.
    window : float or None
        Model window half width in px (the box is clipped to it).

    Returns
    -------
    seeds : Seeds
    box : (3, 2) float64
        The region drawn, ``(lo, hi)`` per axis in px.
    """
    geo = geometry if geometry is not None else slab_geometry(mu, window=window, **geometry_kw)
    box = cutout_box(p, geo.h, margin, window)
    return poisson_seeds(box, mu, rng), box


def reach_certificate(
    best_cost: np.ndarray,
    points: np.ndarray,
    box: np.ndarray,
    d_floor: float = D_FLOOR,
    r_max: float = R_RANGE[1],
    window: float | None = WINDOW_HALF,
) -> tuple[bool, float]:
    """Whether no seed outside ``box`` can win any of ``points`` (deterministic).

    A seed outside the box at distance ``d`` from a point ``x`` costs at least
    ``sqrt(d_floor) d - r_max``; it cannot win if that exceeds the exact best
    cost ``best_cost(x)`` of the drawn seeds. Faces of the box on the window
    boundary have nothing behind them.

    Parameters
    ----------
    best_cost : (P,) array
        ``min_i |x - s_i|_{M_i} - r_i`` over the drawn seeds (px).
    points : (P, 3) array
        The cutout points (px).
    box : (3, 2) array
        The drawn region (px).

    Returns
    -------
    certified : bool
    reach_needed : float
        ``max_x (best_cost(x) + r_max) / sqrt(d_floor)``: the margin that would certify (px).
    """
    x = np.asarray(points, dtype=np.float64)
    b = np.asarray(box, dtype=np.float64)
    gap = np.concatenate([x - b[:, 0], b[:, 1] - x], axis=1)  # (P, 6) distances to the faces
    if window is not None:
        open_face = np.concatenate([b[:, 0] <= -window, b[:, 1] >= window])
        gap[:, open_face] = np.inf
    d_out = gap.min(axis=1)
    need = (np.asarray(best_cost, dtype=np.float64) + r_max) / math.sqrt(d_floor)
    return bool(np.all(need < d_out)), float(need.max())
