"""Figures for the grain architecture: section descriptors (Fig. 10b), orientation by cut height (Fig. 11), 3D grains.

Same style as :mod:`stereograin.plots` (Matplotlib object API, Agg canvas, no
pyplot; ground truth blue, model orange; PNG written atomically with
:func:`stereograin.io.atomic_path`). Inputs come from
:mod:`stereograin.grains.validation`. Units: px; section angles in rad, the
3D radial angle in degrees.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from .descriptors import _finite
from .errors import StereograinError
from .grains.validation import (
    ALIGNED_BASELINE,
    GRAIN_DESCRIPTORS,
    GRAIN_UNITS,
    SECTION_DESCRIPTORS,
    SECTION_UNITS,
    aligned_fraction,
    compare_grains_3d,
)
from .plots import DATA_COLOUR, MODEL_COLOUR, _check_path, _robust_range, _save
from .plots_sections import alpha_kde

__all__ = ["plot_section_comparison", "plot_alpha_by_height", "plot_grain_statistics_3d"]

_TITLES = {
    "area": "grain section area A_cross",
    "eta": "elongation η (Eq. 21)",
    "alpha": "orientation α (Eq. 4)",
    "chord": "chord length",
    "volume": "grain volume",
    "elongation": "elongation √(λ1/λ3)",
    "radial_angle": "angle of long axis to radius",
}


def _edges(x: np.ndarray, bins: int) -> tuple[np.ndarray, float, float]:
    """Shared bin edges over the 0.5-99.5 percentiles; whole-number data get integer-aligned bins (no comb)."""
    lo, hi = _robust_range(x)
    if np.all(x == np.round(x)):
        lo, hi = math.floor(lo), math.ceil(hi)
        width = max(1, math.ceil((hi - lo + 1) / bins))
        edges = np.arange(lo - 0.5, hi + 0.5 + width, width, dtype=np.float64)
        return edges, edges[0], edges[-1]
    return np.linspace(lo, hi, int(bins) + 1), lo, hi


def _overlay(
    fig: Figure,
    names: Sequence[str],
    first: Mapping[str, Any],
    second: Mapping[str, Any],
    labels: Sequence[str],
    comparison: Mapping[str, Mapping[str, Any]] | None,
    units: Mapping[str, str],
    ncols: int,
    bins: int,
) -> None:
    """One panel per descriptor: density histograms of ``first`` (blue) and ``second`` (orange)."""
    nrows = math.ceil(len(names) / ncols)
    for i, name in enumerate(names):
        xa = _finite(first[name], f"{labels[0]}[{name!r}]")
        xb = _finite(second[name], f"{labels[1]}[{name!r}]")
        ax = fig.add_subplot(nrows, ncols, i + 1)
        if xa.size == 0 and xb.size == 0:
            ax.set_title(f"{_TITLES.get(name, name)}\n(no finite values)", fontsize=9)
            continue
        edges, lo, hi = _edges(np.concatenate([xa, xb]), bins)
        for x, colour, lab in ((xa, DATA_COLOUR, labels[0]), (xb, MODEL_COLOUR, labels[1])):
            if x.size:
                ax.hist(x, bins=edges, density=True, color=colour, alpha=0.55, label=f"{lab} (n={x.size})")
        title = _TITLES.get(name, name)
        if comparison is not None and name in comparison:
            d = comparison[name]
            unit = units.get(name, "1")
            title += f"\nKS = {d['ks']:.3f}, W = {d['wasserstein']:.3g}" + ("" if unit == "1" else f" {unit}")
        ax.set_title(title, fontsize=9)
        unit = units.get(name, "1")
        ax.set_xlabel(name if unit == "1" else f"{name} [{unit}]")
        ax.set_ylabel("density")
        ax.set_xlim(lo, hi)
        if i == 0:
            ax.legend(fontsize=8, frameon=False)


def _check_stats(stats: Any, names: Sequence[str], what: str) -> Mapping[str, Any]:
    if not isinstance(stats, Mapping):
        raise StereograinError(f"{what} must be a dict of descriptor arrays, got {type(stats).__name__}")
    missing = [n for n in names if n not in stats]
    if missing:
        raise StereograinError(f"{what} lacks {', '.join(missing)}; give the validation functions' output")
    return stats


def _check_labels(labels: Sequence[str]) -> tuple[str, str]:
    if isinstance(labels, str) or len(labels) != 2:
        raise StereograinError(f"labels must be two names, got {labels!r}")
    return str(labels[0]), str(labels[1])


def plot_section_comparison(
    generated_stats: Mapping[str, np.ndarray],
    truth_stats: Mapping[str, np.ndarray],
    comparison: Mapping[str, Mapping[str, Any]] | None,
    path: str | os.PathLike,
    *,
    labels: Sequence[str] = ("ground truth", "model"),
    bins: int = 30,
    dpi: int = 120,
) -> None:
    """Section descriptors of model and ground truth, overlaid (Fig. 10b), 2 x 2 panels, PNG.

    Panels: area (px^2), eta, alpha (rad), chord length (px); ground truth
    blue, model orange, densities over shared bins spanning the pooled
    0.5-99.5 percentiles (integer-valued data get whole-number bins); each
    title gives the KS statistic and the Wasserstein distance.

    Parameters
    ----------
    generated_stats, truth_stats : dict
        :func:`stereograin.grains.validation.section_statistics` output.
    comparison : dict or None
        :func:`stereograin.grains.validation.compare_sections` output (None:
        titles without distances).
    path : path-like, ``.png``
        Written atomically.
    labels : (str, str)
        Legend names of the truth (blue) and the model (orange).
    bins : int
        Bins per panel.
    dpi : int
    """
    path = _check_path(path)
    labels = _check_labels(labels)
    _check_stats(generated_stats, SECTION_DESCRIPTORS, "generated_stats")
    _check_stats(truth_stats, SECTION_DESCRIPTORS, "truth_stats")
    if comparison is not None:
        _check_stats(comparison, SECTION_DESCRIPTORS, "comparison")
    if not isinstance(bins, (int, np.integer)) or bins < 1:
        raise StereograinError(f"bins must be a positive integer, got {bins!r}")
    fig = Figure(figsize=(7.6, 6.4), layout="constrained")
    _overlay(fig, SECTION_DESCRIPTORS, truth_stats, generated_stats, labels, comparison, SECTION_UNITS, 2, int(bins))
    _save(fig, path, dpi)


def _height_dict(result: Any, what: str) -> dict[float, np.ndarray]:
    if not isinstance(result, Mapping) or len(result) == 0:
        raise StereograinError(f"{what} must be alpha_by_height output (height -> alpha), got {type(result).__name__}")
    out = {}
    for h, a in result.items():
        try:
            hf = float(h)
        except (TypeError, ValueError):
            raise StereograinError(f"{what} keys must be relative cut heights, got {h!r}") from None
        out[hf] = np.asarray(a, dtype=np.float64).ravel()
    return dict(sorted(out.items()))


def plot_alpha_by_height(
    alpha_by_height_result: Mapping[float, np.ndarray],
    path: str | os.PathLike,
    truth: np.ndarray | Mapping[Any, Any] | None = None,
    *,
    truth_label: str = "ground truth",
    dpi: int = 120,
) -> None:
    """Orientation KDE per cut height (Fig. 11) and the aligned fraction against height, PNG.

    Left: the reflected KDE of ``alpha`` (:func:`stereograin.plots_sections.alpha_kde`)
    of each height, coloured by height (viridis), with the uniform density
    ``2 / pi`` dotted. Right: :func:`stereograin.grains.validation.aligned_fraction`
    against the cut height, with its no-preference value 1/3 dotted.

    Parameters
    ----------
    alpha_by_height_result : mapping height -> alpha (rad)
        :func:`stereograin.grains.validation.alpha_by_height` output.
    path : path-like, ``.png``
    truth : optional
        A reference drawn in black: an ``alpha`` array (rad) or a dict with an
        ``"alpha"`` entry (e.g. section statistics of central EBSD maps), drawn
        as one dashed curve and a dashed level on the right; or another
        height -> alpha mapping, drawn as dashed curves in the height colours
        and dashed markers on the right.
    truth_label : str
    dpi : int
    """
    path = _check_path(path)
    res = _height_dict(alpha_by_height_result, "alpha_by_height_result")
    heights = np.array(list(res))
    truth_curves: dict[float, np.ndarray] | None = None
    truth_alpha = None
    if truth is not None:
        if isinstance(truth, Mapping) and "alpha" in truth:
            truth_alpha = np.asarray(truth["alpha"], dtype=np.float64).ravel()
        elif isinstance(truth, Mapping):
            truth_curves = _height_dict(truth, "truth")
        else:
            truth_alpha = np.asarray(truth, dtype=np.float64).ravel()
    all_h = heights if truth_curves is None else np.concatenate([heights, list(truth_curves)])
    hmax = max(float(all_h.max()), 1e-9)
    norm = Normalize(0.0, hmax)
    cmap = colormaps["viridis"]
    grid = np.linspace(0.0, math.pi / 2, 256)

    fig = Figure(figsize=(8.4, 3.6), layout="constrained")
    gs = fig.add_gridspec(1, 2, width_ratios=(2.3, 1.0))
    ax = fig.add_subplot(gs[0, 0])
    side = fig.add_subplot(gs[0, 1])

    def curves(data: dict[float, np.ndarray], style: str, lw: float) -> None:
        for h, a in data.items():
            try:
                ax.plot(grid, alpha_kde(a, grid), color=cmap(norm(h)), ls=style, lw=lw)
            except StereograinError:
                continue  # too few grains for a KDE at this height

    curves(res, "-", 1.6)
    if truth_curves is not None:
        curves(truth_curves, "--", 1.2)
        ax.plot([], [], color="0.3", ls="--", label=truth_label)
    if truth_alpha is not None:
        try:
            ax.plot(grid, alpha_kde(truth_alpha, grid), color="k", ls="--", lw=1.6, label=truth_label)
        except StereograinError:
            pass
    ax.axhline(2 / math.pi, color="0.3", ls=":", lw=1, label="no preference")
    ax.set_xlim(0, math.pi / 2)
    ax.set_ylim(bottom=0)
    ax.set_xticks([0, math.pi / 8, math.pi / 4, 3 * math.pi / 8, math.pi / 2], ["0", "π/8", "π/4", "3π/8", "π/2"])
    ax.set_xlabel("grain orientation α (rad)")
    ax.set_ylabel("density (1/rad)")
    ax.legend(frameon=False, fontsize="small")
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, pad=0.01)
    bar.set_label("cut height h / R")

    frac = np.array([aligned_fraction(a) for a in res.values()])
    side.plot(heights, frac, color="0.2", lw=1, zorder=1)
    side.scatter(heights, frac, c=cmap(norm(heights)), s=30, zorder=2, edgecolors="k", linewidths=0.5)
    if truth_curves is not None:
        th = np.array(list(truth_curves))
        side.plot(th, [aligned_fraction(a) for a in truth_curves.values()], color="k", ls="--", marker="o",
                  mfc="none", lw=1, label=truth_label)
    if truth_alpha is not None:
        side.axhline(aligned_fraction(truth_alpha), color="k", ls="--", lw=1.2, label=truth_label)
    side.axhline(ALIGNED_BASELINE, color="0.3", ls=":", lw=1, label="no preference")
    side.set_xlim(-0.03 * hmax - 0.02, 1.03 * hmax + 0.02)
    side.set_ylim(0, 1)
    side.set_xlabel("cut height h / R")
    side.set_ylabel("fraction with α < 30°")
    side.legend(frameon=False, fontsize="x-small")
    _save(fig, path, dpi)


def plot_grain_statistics_3d(
    stats_a: Mapping[str, np.ndarray],
    stats_b: Mapping[str, np.ndarray] | None,
    labels: Sequence[str],
    path: str | os.PathLike,
    *,
    comparison: Mapping[str, Mapping[str, Any]] | None = None,
    bins: int = 30,
    dpi: int = 120,
) -> None:
    """3D grain statistics of two architectures overlaid: volume, elongation, radial angle (1 x 3 panels, PNG).

    Parameters
    ----------
    stats_a, stats_b : dict
        :func:`stereograin.grains.validation.grain_statistics_3d` output;
        ``stats_a`` blue, ``stats_b`` orange; ``stats_b=None`` shows
        ``stats_a`` alone (e.g. a model with no 3D ground truth).
    labels : (str, str)
        Their legend names (the second is ignored without ``stats_b``).
    path : path-like, ``.png``
    comparison : dict, optional
        :func:`stereograin.grains.validation.compare_grains_3d` output; computed
        when missing (if both samples have finite values).
    bins : int
    dpi : int
    """
    path = _check_path(path)
    labels = _check_labels(labels)
    _check_stats(stats_a, GRAIN_DESCRIPTORS, "stats_a")
    if stats_b is None:
        stats_b = {name: np.empty(0) for name in GRAIN_DESCRIPTORS}
        comparison = {}
    _check_stats(stats_b, GRAIN_DESCRIPTORS, "stats_b")
    if not isinstance(bins, (int, np.integer)) or bins < 1:
        raise StereograinError(f"bins must be a positive integer, got {bins!r}")
    if comparison is None:
        try:
            comparison = compare_grains_3d(stats_a, stats_b)
        except StereograinError:
            comparison = None  # an empty sample: histograms without distances
    fig = Figure(figsize=(10.8, 3.3), layout="constrained")
    _overlay(fig, GRAIN_DESCRIPTORS, stats_a, stats_b, labels, comparison, GRAIN_UNITS, 3, int(bins))
    _save(fig, path, dpi)
