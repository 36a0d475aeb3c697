"""Shared test helpers: small synthetic data made on the fly."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
import scipy.ndimage as ndi

from stereograin.errors import StereograinError


def ball(radius: float, n: int) -> np.ndarray:
    """Boolean (n, n, n) voxelised ball of ``radius`` voxels about the cube's centre."""
    z, y, x = np.ogrid[:n, :n, :n]
    c = (n - 1) / 2
    return ((x - c) ** 2 + (y - c) ** 2 + (z - c) ** 2) <= radius**2


def ball_masks(
    shape: tuple[int, int, int],
    centres: Sequence[Sequence[float]] | np.ndarray,
    radii: Sequence[float] | np.ndarray,
) -> np.ndarray:
    """Label volume of balls / axis-aligned ellipsoids: ``out[v] = k + 1`` inside object ``k``.

    Parameters
    ----------
    shape : (Z, Y, X)
    centres : (n, 3) float, voxel coordinates (z, y, x)
    radii : (n,) radii or (n, 3) semi-axes (rz, ry, rx), in voxels

    Returns
    -------
    numpy.ndarray of int32, shape (Z, Y, X)
        Where objects overlap, the later one wins.
    """
    centres = np.asarray(centres, dtype=float).reshape(-1, 3)
    radii = np.asarray(radii, dtype=float)
    radii = np.repeat(radii.reshape(-1, 1), 3, axis=1) if radii.ndim == 1 else radii.reshape(-1, 3)
    out = np.zeros(shape, np.int32)
    # one bounding box per object (a handful in tests); voxels inside each box are vectorised
    for k, (c, r) in enumerate(zip(centres, radii)):
        lo = np.maximum(np.floor(c - r).astype(int), 0)
        hi = np.minimum(np.ceil(c + r).astype(int) + 1, shape)
        if np.any(hi <= lo):
            continue
        z, y, x = np.ogrid[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        inside = ((z - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((x - c[2]) / r[2]) ** 2 <= 1.0
        out[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]][inside] = k + 1
    return out


def synthetic_balls(
    shape: tuple[int, int, int],
    centres: Sequence[Sequence[float]] | np.ndarray,
    radii: Sequence[float] | np.ndarray,
    blur: float = 1.0,
    noise: float = 0.05,
    rng: np.random.Generator | int | None = 0,
) -> np.ndarray:
    """A fake grey-value CT volume: bright balls / ellipsoids on a dark background.

    Background 0.2 and particles 0.8 (of a 0..1 range), blurred with a Gaussian
    of ``blur`` voxels, plus Gaussian noise of standard deviation ``noise``,
    scaled to uint8.

    Returns
    -------
    numpy.ndarray of uint8, shape (Z, Y, X)
    """
    rng = np.random.default_rng(rng)
    grey = np.where(ball_masks(shape, centres, radii) > 0, np.float32(0.8), np.float32(0.2))
    if blur > 0:
        ndi.gaussian_filter(grey, blur, output=grey)
    if noise > 0:
        grey += rng.normal(0.0, noise, size=shape).astype(np.float32)
    return np.clip(np.rint(grey * 255), 0, 255).astype(np.uint8)


def one_line_error(func, *args, **kwargs) -> str:
    """Call ``func``, expect a StereograinError, check its message is one line, return it."""
    with pytest.raises(StereograinError) as err:
        func(*args, **kwargs)
    msg = str(err.value)
    assert "\n" not in msg, msg
    return msg
