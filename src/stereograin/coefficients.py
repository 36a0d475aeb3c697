"""From a label volume to the table of SH coefficients, one row per particle."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import sphere
from .errors import StereograinError
from .io import read_table, write_table
from .star import StarShapes, radius_functions

__all__ = ["CoefficientTable", "coefficients_from_labels", "read_coefficients", "write_coefficients"]

_META = ("label", "volume_voxels", "centre_x", "centre_y", "centre_z", "captured_fraction")


@dataclass(frozen=True)
class CoefficientTable:
    """SH coefficients of segmented particles.

    Attributes
    ----------
    labels : (n,) int64
    volumes : (n,) int64 -- voxels
    centres : (n, 3) float64 -- centre of mass ``(x, y, z)`` in voxels
    captured : (n,) float64 -- fraction of the particle inside its star shape
    coefficients : (n, (L+1)**2) float64 -- voxels
    """

    labels: np.ndarray
    volumes: np.ndarray
    centres: np.ndarray
    captured: np.ndarray
    coefficients: np.ndarray

    @property
    def L(self) -> int:
        return sphere.degree_of(self.coefficients.shape[1])


def coefficients_from_labels(
    labels: np.ndarray,
    L: int = 9,
    level: int = 3,
    rng: np.random.Generator | int | None = None,
    mode: str = "first-exit",
    rotate: bool = True,
) -> tuple[CoefficientTable, StarShapes]:
    """Radius functions (Eq. 1) and their least-squares SH fit (Eq. 3) for every particle.

    Parameters
    ----------
    labels : (Z, Y, X) integer array
        Particle labels (0 = background).
    L : int
        SH degree (paper: 9).
    level : int
        Icosphere level of the directions (paper: 3, 642 directions).
    rng : Generator or int
        Source of the random rotation of each fit.
    mode : {"first-exit", "last"}
        Radius-function definition, see :mod:`stereograin.star`.
    rotate : bool
        Fit against a uniformly random rotation per particle (paper).

    Returns
    -------
    table : CoefficientTable
    star : StarShapes
        The raw radius functions (for data descriptors).
    """
    star = radius_functions(labels, level=level, mode=mode)
    dirs, _ = sphere.icosphere(level)
    coefs = sphere.fit_coefficients(star.radii, dirs, L=L, rng=rng, rotate=rotate)
    table = CoefficientTable(star.labels, star.volumes, star.centres, star.captured, coefs)
    return table, star


def write_coefficients(path: str | Path, table: CoefficientTable) -> None:
    """Write the table as CSV: label, volume_voxels, centre_x..z, captured_fraction, a_0_0, ..."""
    cols = list(_META) + sphere.coefficient_names(table.L)
    data = np.column_stack([table.labels, table.volumes, table.centres, table.captured, table.coefficients])
    write_table(path, cols, data)


def read_coefficients(path: str | Path) -> CoefficientTable:
    """Read a coefficient CSV; the ``a_l_m`` columns are required, the others optional."""
    cols, data = read_table(path)
    if "a_0_0" not in cols:
        raise StereograinError(f"{path} has no a_0_0 column; expected a coefficient table from `shell fit --report`")
    start = cols.index("a_0_0")
    L = sphere.degree_of(len(cols) - start)
    if cols[start:] != sphere.coefficient_names(L):
        raise StereograinError(f"{path}: coefficient columns must be a_0_0, a_1_-1, ... in order up to one degree")
    if not np.all(np.isfinite(data[:, start:])):
        raise StereograinError(f"{path} holds NaN or infinite coefficients")
    n = data.shape[0]

    def col(name: str, default: float) -> np.ndarray:
        return data[:, cols.index(name)] if name in cols else np.full(n, default)

    return CoefficientTable(
        labels=col("label", 0).astype(np.int64),
        volumes=col("volume_voxels", np.nan).astype(np.int64) if "volume_voxels" in cols else np.zeros(n, np.int64),
        centres=np.column_stack([col("centre_x", np.nan), col("centre_y", np.nan), col("centre_z", np.nan)]),
        captured=col("captured_fraction", np.nan),
        coefficients=data[:, start:],
    )
