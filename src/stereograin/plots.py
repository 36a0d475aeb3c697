"""Figures for reports: descriptor histograms, coefficient laws, distance correlations, shells.

Every function draws one figure with Matplotlib's object API (no pyplot, so no
global state and no window: the Agg canvas renders it) and writes it as a PNG
atomically (:func:`stereograin.io.atomic_path`): an interrupted run never
leaves a half-written picture under the final name.

The figures follow Fuchs et al. (2025): Fig. 10a (:func:`descriptor_histograms`),
Fig. 4 (:func:`coefficient_laws`), Fig. 3a (:func:`distance_correlations`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.stats
from matplotlib.figure import Figure

from . import sphere
from .descriptors import _finite, _resolve_names
from .errors import StereograinError
from .io import atomic_path

__all__ = ["descriptor_histograms", "coefficient_laws", "distance_correlations", "shell_gallery"]

DATA_COLOUR = "tab:blue"
MODEL_COLOUR = "tab:orange"
_MAX_GALLERY = 64


def _check_path(path: str | os.PathLike) -> Path:
    """The PNG output path; fails before any drawing on a path that cannot be written."""
    try:
        path = Path(path)
    except TypeError:
        raise StereograinError(f"path must be a file name ending in .png, got {path!r}") from None
    if path.suffix.lower() != ".png":
        raise StereograinError(f"figures are written as PNG; give a file name ending in .png, got {path.name!r}")
    if path.is_dir():
        raise StereograinError(f"output {path} is a folder; give a file name")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise StereograinError(f"cannot write {path}: {parent} is a file, not a folder")
            break
    return path


def _save(fig: Figure, path: Path, dpi: int) -> None:
    # the temporary name ends in .tmp, so the format is given explicitly
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fig.savefig(fh, format="png", dpi=dpi)


def _grid(n: int, ncols: int) -> tuple[int, int]:
    ncols = max(1, min(ncols, n))
    return math.ceil(n / ncols), ncols


def _robust_range(x: np.ndarray, lo_q: float = 0.5, hi_q: float = 99.5) -> tuple[float, float]:
    # data values at those ranks ("lower" / "higher"), not interpolated between them: the window
    # always holds some data (with 2 values, interpolated percentiles would exclude both, and a
    # density histogram of nothing divides 0 by 0)
    lo = float(np.percentile(x, lo_q, method="lower"))
    hi = float(np.percentile(x, hi_q, method="higher"))
    if hi <= lo:  # (nearly) constant sample: a small window around it
        pad = 0.5 if lo == 0 else 0.05 * abs(lo)
        lo, hi = lo - pad, hi + pad
    return lo, hi


def _format_params(params: Mapping[str, float]) -> str:
    return ", ".join(f"{k}={v:.3g}" for k, v in params.items())


# --------------------------------------------------------------------------- Fig. 10a


def descriptor_histograms(
    data: Mapping[str, Any],
    model: Mapping[str, Any],
    path: str | os.PathLike,
    names: Iterable[str] | None = None,
    distances: Mapping[str, Mapping[str, float]] | None = None,
    labels: Sequence[str] = ("data", "model"),
    units: Mapping[str, str] | None = None,
    bins: int = 40,
    ncols: int = 4,
    dpi: int = 120,
) -> None:
    """Overlaid density histograms of descriptors, data vs model (like Fig. 10a).

    Per descriptor, both samples share one set of ``bins`` bins spanning the
    0.5-99.5 percentiles of the pooled finite values (values outside are left
    out of the panel; densities are normalised over the values shown).

    Parameters
    ----------
    data, model : mapping of str -> 1D array
        Descriptor samples, e.g. from :func:`stereograin.descriptors.describe_radii`;
        non-finite values are ignored.
    path : path-like
        Output PNG.
    names : iterable of str, optional
        Descriptors to draw, one panel each. Default: every key of ``data``
        (each must be in ``model``) that has finite values in both.
    distances : mapping, optional
        Output of :func:`stereograin.descriptors.compare_samples`; the KS
        statistic and the Wasserstein distance go into each panel's title.
    labels : (str, str)
        Legend names of ``data`` (blue) and ``model`` (orange).
    units : mapping of str -> str, optional
        Unit per descriptor for the x labels (e.g. ``{"d_max": "um"}``).
    bins : int
        Number of bins per panel.
    ncols : int
        Panels per row.
    dpi : int
        Resolution of the PNG.
    """
    path = _check_path(path)
    if len(labels) != 2:
        raise StereograinError(f"labels must be two names (data, model), got {labels!r}")
    names, explicit = _resolve_names(data, model, names, tuple(labels))
    if not isinstance(bins, (int, np.integer)) or bins < 1:
        raise StereograinError(f"bins must be a positive integer, got {bins!r}")
    units = dict(units or {})
    panels = []
    for name in names:
        xa = _finite(data[name], f"{labels[0]}[{name!r}]")
        xb = _finite(model[name], f"{labels[1]}[{name!r}]")
        if xa.size == 0 or xb.size == 0:
            if explicit:
                which = labels[0] if xa.size == 0 else labels[1]
                raise StereograinError(f"{which} has no finite values of {name!r}; drop it from names")
            continue
        if distances is not None and name not in distances:
            raise StereograinError(
                f"distances has no entry for {name!r}; compute them with compare_samples on the same names"
            )
        panels.append((name, xa, xb))
    if not panels:
        raise StereograinError("no descriptor has finite values in both samples; nothing to plot")

    nrows, ncols = _grid(len(panels), ncols)
    fig = Figure(figsize=(3.7 * ncols, 3.1 * nrows), layout="constrained")
    for i, (name, xa, xb) in enumerate(panels):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        lo, hi = _robust_range(np.concatenate([xa, xb]))
        edges = np.linspace(lo, hi, int(bins) + 1)
        ax.hist(xa, bins=edges, density=True, color=DATA_COLOUR, alpha=0.55, label=f"{labels[0]} (n={xa.size})")
        ax.hist(xb, bins=edges, density=True, color=MODEL_COLOUR, alpha=0.55, label=f"{labels[1]} (n={xb.size})")
        title = name
        if distances is not None:
            d = distances[name]
            title += f"\nKS = {d['ks']:.3f}, W = {d['wasserstein']:.3g}"
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(f"{name} [{units[name]}]" if name in units else name)
        ax.set_ylabel("density")
        ax.set_xlim(lo, hi)
        if i == 0:
            ax.legend(fontsize=8, frameon=False)
    _save(fig, path, dpi)


# --------------------------------------------------------------------------- Fig. 4


def _law(fit: Any, where: str) -> Any:
    """A frozen SciPy distribution from ``{"family", "params"}`` (or an object with those attributes)."""
    if isinstance(fit, Mapping):
        family, params = fit.get("family"), fit.get("params")
    else:
        family, params = getattr(fit, "family", None), getattr(fit, "params", None)
    if not isinstance(family, str) or not isinstance(params, Mapping):
        raise StereograinError(f"{where} must be {{'family': name, 'params': {{...}}}}, got {fit!r}")
    dist = getattr(scipy.stats, family, None)
    if not isinstance(dist, scipy.stats.rv_continuous):
        raise StereograinError(
            f"{where}: {family!r} is not a continuous scipy.stats distribution (e.g. 't', 'lognorm')"
        )
    try:
        frozen = dist(**params)
        ok = np.isfinite(frozen.pdf(frozen.median()))
    except (TypeError, ValueError) as exc:
        raise StereograinError(f"{where}: params {dict(params)!r} do not fit {family} ({exc})") from None
    if not ok:
        raise StereograinError(
            f"{where}: params {dict(params)!r} are invalid for {family} (scale and shapes must be > 0)"
        )
    return family, dict(params), frozen


def coefficient_laws(
    coefs: np.ndarray,
    fits: Mapping[int, Any],
    path: str | os.PathLike,
    unit: str | None = None,
    bins: int = 60,
    ncols: int = 5,
    dpi: int = 120,
) -> None:
    """Histograms of the SH coefficients per degree with the fitted densities (like Fig. 4).

    Panel ``l`` pools the ``2 l + 1`` coefficients ``a_lm`` of degree ``l`` over
    all particles; its range is the 0.5-99.5 percentiles (the ``l >= 1`` laws
    are heavy-tailed), and the fitted density of ``fits[l]`` is drawn on top.

    Parameters
    ----------
    coefs : (n, (L+1)**2) array
        Coefficients in flat order (:mod:`stereograin.sphere`), e.g. CT voxels.
    fits : mapping of int -> dict
        ``fits[l] = {"family": name, "params": {...}}``, a ``scipy.stats``
        distribution and its keyword parameters (``getattr(scipy.stats,
        family)(**params)``); objects with ``family`` / ``params`` attributes
        (:class:`stereograin.shell.Law`) work too. Degrees missing from
        ``fits`` get a histogram only.
    path : path-like
        Output PNG.
    unit : str, optional
        Unit of the coefficients for the x labels.
    bins : int
        Bins per panel.
    ncols : int
        Panels per row.
    dpi : int
        Resolution of the PNG.
    """
    path = _check_path(path)
    a = np.asarray(coefs, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] == 0:
        raise StereograinError(f"coefficients must have shape (n_particles, (L+1)**2) with n >= 1, got {a.shape}")
    L = sphere.degree_of(a.shape[1])
    if not np.all(np.isfinite(a)):
        raise StereograinError("coefficients hold NaN or infinite values; drop those particles first")
    if not isinstance(fits, Mapping):
        raise StereograinError("fits must be a mapping degree -> {'family': ..., 'params': {...}}")
    laws: dict[int, Any] = {}
    for key, fit in fits.items():
        try:
            l = int(key)
        except (TypeError, ValueError):
            raise StereograinError(f"fits keys must be degrees 0..{L}, got {key!r}") from None
        if not 0 <= l <= L:
            raise StereograinError(
                f"fits has degree {l} but the coefficients go up to L={L}; drop it or pass more coefficients"
            )
        laws[l] = _law(fit, f"fits[{l}]")

    nrows, ncols = _grid(L + 1, ncols)
    fig = Figure(figsize=(3.3 * ncols, 2.9 * nrows), layout="constrained")
    for l in range(L + 1):
        ax = fig.add_subplot(nrows, ncols, l + 1)
        x = a[:, l * l : (l + 1) ** 2].ravel()
        lo, hi = _robust_range(x)
        ax.hist(x, bins=np.linspace(lo, hi, int(bins) + 1), density=True, color=DATA_COLOUR, alpha=0.6, label="data")
        title = "l = 0  (a_00)" if l == 0 else f"l = {l}  ({2 * l + 1} a_{l}m pooled)"
        if l in laws:
            family, params, frozen = laws[l]
            xs = np.linspace(lo, hi, 400)
            ax.plot(xs, frozen.pdf(xs), color=MODEL_COLOUR, lw=1.8, label=family)
            title += f"\n{family}: {_format_params(params)}"
        ax.set_title(title, fontsize=9)
        symbol = "a_00" if l == 0 else f"a_{l}m"
        ax.set_xlabel(f"{symbol} [{unit}]" if unit else symbol)
        ax.set_xlim(lo, hi)
        if l == 0:
            ax.set_ylabel("density")
    _save(fig, path, dpi)


# --------------------------------------------------------------------------- Fig. 3a


def distance_correlations(
    values: np.ndarray,
    path: str | os.PathLike,
    ylabel: str = "distance correlation with a_00",
    dpi: int = 120,
) -> None:
    """Distance correlation (EDCC) between ``a_00`` and the ``a_lm`` per degree (like Fig. 3a).

    Parameters
    ----------
    values : (L,) array
        One value per degree ``l = 1..L`` (e.g. ``per_degree_mean`` of
        :func:`stereograin.shell.distance_correlations`); dimensionless, in [0, 1].
    path : path-like
        Output PNG.
    ylabel : str
        Label of the y axis.
    dpi : int
        Resolution of the PNG.
    """
    path = _check_path(path)
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise StereograinError(f"values must be a 1D array with one entry per degree l = 1..L, got shape {v.shape}")
    if not np.all(np.isfinite(v)):
        raise StereograinError("distance correlations hold NaN or infinite values; check the coefficient table")
    l = np.arange(1, v.size + 1)
    fig = Figure(figsize=(max(4.0, 0.45 * v.size + 2.0), 3.2), layout="constrained")
    ax = fig.add_subplot()
    ax.bar(l, v, color=DATA_COLOUR, width=0.6)
    ax.plot(l, v, color="k", lw=0.8, marker="o", ms=3)
    ax.set_xticks(l)
    ax.set_xlabel("degree l")
    ax.set_ylabel(ylabel)
    ax.set_ylim(min(0.0, float(v.min()) * 1.15), max(0.1, float(v.max()) * 1.15))
    ax.set_title("dependence of a_lm on a_00", fontsize=10)
    _save(fig, path, dpi)


# --------------------------------------------------------------------------- shells


def shell_gallery(
    coefs: np.ndarray,
    path: str | os.PathLike,
    level: int = 3,
    ncols: int = 4,
    unit: str = "",
    dpi: int = 120,
) -> None:
    """3D renderings of a few shells on one common scale.

    Each shell is the icosphere mesh with vertices ``max(P(u), 0) u``, drawn
    on one length scale for all shells (sizes compare), its faces coloured by
    their radius relative to the shell's mean radius (bright: bumps, dark:
    dents) and shaded by a fixed light.

    Parameters
    ----------
    coefs : (n, (L+1)**2) or ((L+1)**2,) array
        SH coefficients of up to 64 shells (any length unit).
    path : path-like
        Output PNG.
    level : int
        Icosphere level of the mesh (3: 1280 triangles per shell).
    ncols : int
        Shells per row.
    unit : str
        Length unit for the titles (``d_max`` of each shell).
    dpi : int
        Resolution of the PNG.
    """
    from matplotlib import colormaps
    from matplotlib.colors import Normalize
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    path = _check_path(path)
    a = np.asarray(coefs, dtype=np.float64)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2 or not 1 <= a.shape[0] <= _MAX_GALLERY:
        raise StereograinError(f"shell_gallery draws 1..{_MAX_GALLERY} shells of shape (n, (L+1)**2), got {a.shape}")
    sphere.degree_of(a.shape[1])
    if not np.all(np.isfinite(a)):
        raise StereograinError("coefficients hold NaN or infinite values; drop those shells first")
    v, f = sphere.icosphere(level)
    r = np.maximum(sphere.evaluate(a, level=level), 0.0)  # (n, k)
    dmax = (r + r[:, sphere.antipodes(level)]).max(axis=1)
    pts = r[:, :, None] * v  # (n, k, 3)
    lim = float(np.abs(pts).max()) or 1.0
    # colour: face radius over the shell's mean radius, so bumps show on small and large shells alike
    face_r = r[:, f].mean(axis=2) / np.maximum(r.mean(axis=1, keepdims=True), 1e-300)  # (n, m)
    lo, hi = np.percentile(face_r, [1, 99])
    norm = Normalize(float(lo), float(hi) if hi > lo else float(lo) + 1e-6)
    cmap = colormaps["viridis"]
    light = np.array([0.5, -0.4, 0.77])
    light /= np.linalg.norm(light)

    nrows, ncols = _grid(a.shape[0], ncols)
    fig = Figure(figsize=(2.8 * ncols, 2.9 * nrows), layout="constrained")
    for i in range(a.shape[0]):
        ax = fig.add_subplot(nrows, ncols, i + 1, projection="3d")
        tri = pts[i][f]  # (m, 3, 3)
        n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-300)
        shade = 0.35 + 0.65 * np.clip(n @ light, 0.0, 1.0)
        colours = cmap(norm(face_r[i]))
        colours[:, :3] *= shade[:, None]
        # edges in the face colour hide the antialiasing seams between faces
        ax.add_collection3d(Poly3DCollection(tri, facecolors=colours, edgecolors=colours, linewidths=0.3))
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_zlim(-lim, lim)
        ax.set_box_aspect((1, 1, 1), zoom=1.35)
        ax.set_axis_off()
        ax.set_title(f"#{i}  d_max = {dmax[i]:.3g}{' ' + unit if unit else ''}", fontsize=9)
    _save(fig, path, dpi)
