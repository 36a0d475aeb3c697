"""Figures for EBSD sections: the grain orientation KDE of Fig. 2d, one curve per map."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import scipy.stats
from matplotlib.figure import Figure

from .errors import StereograinError
from .io import atomic_path
from .sections import CentralVerdict

__all__ = ["alpha_kde", "plot_alpha_kde", "plot_grain_map", "label_colours", "label_boundaries"]

CENTRAL_COLOUR = "black"
REJECTED_COLOUR = "0.6"


def alpha_kde(alpha: np.ndarray, grid: np.ndarray, bandwidth: float | str | None = None) -> np.ndarray:
    """Gaussian KDE of orientations on ``[0, pi/2]`` with reflective boundaries.

    ``f(x) = k(x) + k(-x) + k(pi - x)`` where ``k`` is the plain Gaussian KDE
    of the data: the mass that a plain KDE would put below 0 or above pi/2 is
    reflected back, so ``f`` integrates to 1 on ``[0, pi/2]`` (up to the
    negligible mass beyond one reflection) and has zero slope at the ends.

    Parameters
    ----------
    alpha : (n,) float, rad in [0, pi/2]; NaN values are dropped
    grid : (m,) float, rad
    bandwidth : scipy's ``bw_method`` (default Scott's rule)

    Returns
    -------
    (m,) float, density in 1/rad (uniform: 2/pi)
    """
    a = np.asarray(alpha, dtype=np.float64)
    a = a[np.isfinite(a)]
    if a.size < 2 or np.ptp(a) == 0:
        raise StereograinError(f"a KDE needs at least 2 distinct orientations, got {a.size}")
    kde = scipy.stats.gaussian_kde(a, bw_method=bandwidth)
    g = np.asarray(grid, dtype=np.float64)
    return kde(g) + kde(-g) + kde(math.pi - g)


def plot_alpha_kde(
    descriptors: Sequence[Mapping[str, np.ndarray] | np.ndarray],
    verdicts: Sequence[CentralVerdict | bool],
    path: str | os.PathLike,
    *,
    names: Sequence[str] | None = None,
    min_area_px: int = 10,
    title: str | None = None,
    dpi: int = 150,
) -> None:
    """Kernel density estimates of the grain orientation ``alpha`` per map (Fig. 2d), saved as PNG.

    Parameters
    ----------
    descriptors : sequence of dicts from :func:`stereograin.sections.section_descriptors` (or alpha arrays)
        One per map; grains under ``min_area_px`` px are left out.
    verdicts : sequence of CentralVerdict or bool
        Black curve for a central section, grey for a rejected one.
    path : path-like, ``.png``
        Written atomically.
    names : sequence of str, optional
        Map names, shown in the legend when there are at most 12 maps.
    min_area_px : int
    title : str, optional
    dpi : int
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise StereograinError(f"figures are written as PNG; give a file name ending in .png, got {path.name!r}")
    if len(descriptors) != len(verdicts) or len(descriptors) == 0:
        raise StereograinError(
            f"need one verdict per map and at least one map, got {len(descriptors)} maps and {len(verdicts)} verdicts"
        )
    if names is not None and len(names) != len(descriptors):
        raise StereograinError(f"need one name per map, got {len(names)} names for {len(descriptors)} maps")
    grid = np.linspace(0.0, math.pi / 2, 256)
    fig = Figure(figsize=(5.0, 3.6))
    ax = fig.add_subplot()
    label_each = names is not None and len(descriptors) <= 12
    seen: set[bool] = set()
    for k, (d, v) in enumerate(zip(descriptors, verdicts)):
        central = bool(v.central if isinstance(v, CentralVerdict) else v)
        if isinstance(d, Mapping):
            alpha = np.asarray(d["alpha"])[np.asarray(d["area"]) >= min_area_px]
        else:
            alpha = np.asarray(d)
        try:
            dens = alpha_kde(alpha, grid)
        except StereograinError:
            continue  # a map with too few grains draws no curve
        if label_each:
            tag = f"{names[k]} ({'central' if central else 'rejected'})"
        elif central not in seen:
            tag = "central" if central else "not central"
        else:
            tag = None
        seen.add(central)
        ax.plot(
            grid, dens, color=CENTRAL_COLOUR if central else REJECTED_COLOUR, lw=1.6 if central else 1.2,
            zorder=3 if central else 2, label=tag,
        )
    ax.axhline(2 / math.pi, color="0.3", ls=":", lw=1, label="no preference")
    ax.set_xlim(0, math.pi / 2)
    ax.set_ylim(bottom=0)
    ax.set_xticks([0, math.pi / 8, math.pi / 4, 3 * math.pi / 8, math.pi / 2], ["0", "π/8", "π/4", "3π/8", "π/2"])
    ax.set_xlabel("grain orientation α (rad)")
    ax.set_ylabel("density (1/rad)")
    if title:
        ax.set_title(title)
    ax.legend(frameon=False, fontsize="small")
    fig.tight_layout()
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fig.savefig(fh, format="png", dpi=dpi)


def label_colours(top: int, seed: int = 7) -> np.ndarray:
    """``(top + 1, 3)`` RGB table: each label a fixed pseudo-random colour, 0 (unindexed) white."""
    lut = np.random.default_rng(seed).uniform(0.15, 0.95, size=(top + 1, 3))
    lut[0] = 1.0
    return lut


def label_boundaries(labels: np.ndarray) -> np.ndarray:
    """Pixels whose right or lower neighbour has another label, ``(H, W)`` bool."""
    b = np.zeros(labels.shape, bool)
    b[:, :-1] |= labels[:, 1:] != labels[:, :-1]
    b[:-1, :] |= labels[1:, :] != labels[:-1, :]
    return b


def plot_grain_map(grain_map, verdict: CentralVerdict | None, path: str | os.PathLike, dpi: int = 120) -> None:
    """One section's grains (random colours, unindexed white), its centre and the test's verdict (PNG).

    Parameters
    ----------
    grain_map : GrainMap
    verdict : CentralVerdict, optional
        Shown in the title.
    path : path-like, ``.png``
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise StereograinError(f"figures are written as PNG; give a file name ending in .png, got {path.name!r}")
    lab = np.asarray(grain_map.labels)
    img = label_colours(int(lab.max()))[lab]
    img[label_boundaries(lab) & (lab > 0)] *= 0.55
    fig = Figure(figsize=(5.0, 5.0 * lab.shape[0] / max(lab.shape[1], 1) + 0.5))
    ax = fig.add_subplot()
    ax.imshow(img, interpolation="nearest")
    cx, cy = grain_map.centre
    ax.plot([cx], [cy], "k+", ms=12, mew=2)
    ax.set_xticks([])
    ax.set_yticks([])
    title = f"{Path(grain_map.source).name}: {grain_map.n_grains} grains, {grain_map.step_nm:g} nm px"
    if verdict is not None:
        title += f"\n{'central' if verdict.central else 'not central'} (p = {verdict.p_value:.2g})"
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fig.savefig(fh, format="png", dpi=dpi)
