"""Synthetic data with known truth: CT-like grey volumes of star-shaped particles.

Used by the tests, the docs' worked example and the benchmarks, wherever a
real nano-CT scan is not at hand. Every particle is an SH star shape drawn
from a shell model, so the radius function that segmentation and fitting
should recover is known exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from . import sphere
from .errors import StereograinError
from .shell import ShellModel, paper_model

__all__ = ["SyntheticCT", "synthetic_ct", "voxelise_shell"]


@dataclass(frozen=True)
class SyntheticCT:
    """A synthetic CT volume and its truth.

    Attributes
    ----------
    volume : (Z, Y, X) uint8
        Grey values: bright particles on a dark background, blurred and noisy.
    labels : (Z, Y, X) uint32
        True particle labels 1..n.
    coefficients : (n, (L+1)**2) float64
        SH coefficients (voxels) of each particle's radius function, about
        ``centres``, unrotated.
    centres : (n, 3) float64
        Star points ``(x, y, z)`` in voxels.
    """

    volume: np.ndarray
    labels: np.ndarray
    coefficients: np.ndarray
    centres: np.ndarray


def voxelise_shell(
    coefficients: np.ndarray, centre: np.ndarray, shape: tuple[int, int, int], reach: float | None = None
) -> np.ndarray:
    """Voxels whose centre lies inside the star shape ``|x - c| <= P~((x - c)/|x - c|)``.

    Parameters
    ----------
    coefficients : ((L+1)**2,) array
        SH coefficients in voxels.
    centre : (3,) array
        Star point ``(x, y, z)`` in voxels.
    shape : (Z, Y, X)
        Volume shape.
    reach : float, optional
        Upper bound of the radius in voxels (default: a safe but loose bound
        from the coefficients' magnitudes).

    Returns
    -------
    (Z, Y, X) bool
    """
    a = np.asarray(coefficients, dtype=np.float64)
    L = sphere.degree_of(a.size)
    # |P~| <= sum |a_lm| max|Y_lm| bounds the reach; max|Y_lm| <= sqrt((2l+1)/(4 pi)) * sqrt(2).
    bound = float(np.abs(a) @ np.sqrt(2 * (2 * sphere.degrees(L) + 1) / (4 * np.pi))) + 1.0
    if reach is not None:
        bound = min(bound, float(reach) + 1.0)
    c = np.asarray(centre, dtype=np.float64)
    lo = np.maximum(np.floor(c[::-1] - bound).astype(int), 0)
    hi = np.minimum(np.ceil(c[::-1] + bound).astype(int) + 1, shape)
    mask = np.zeros(shape, dtype=bool)
    if np.any(hi <= lo):
        return mask
    k, j, i = np.meshgrid(*(np.arange(lo[d], hi[d]) for d in range(3)), indexing="ij")
    x = np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1) - c
    dist = np.linalg.norm(x, axis=1)
    x[dist == 0] = (0.0, 0.0, 1.0)
    inside = dist <= sphere.real_sph_harm(L, x) @ a
    mask[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = inside.reshape(k.shape)
    return mask


def synthetic_ct(
    shape: tuple[int, int, int] = (96, 96, 96),
    n_particles: int = 6,
    radius_range: tuple[float, float] = (8.0, 14.0),
    model: ShellModel | None = None,
    rng: np.random.Generator | int | None = None,
    blur: float = 1.0,
    noise: float = 0.08,
    gap: float = 3.0,
    border: float = 2.0,
) -> SyntheticCT:
    """Make a CT-like volume of separated star-shaped particles.

    Shells are drawn from ``model`` (default: the paper model) and rescaled
    so that each mean radius ``a_00 / (2 sqrt(pi))`` lies uniformly in
    ``radius_range``; the other coefficients scale with it, so relative
    roughness is kept. Particles are placed at random, their bounding balls at
    least ``gap`` voxels apart and ``border`` voxels from the volume edge.

    Parameters
    ----------
    shape : (Z, Y, X)
        Volume shape in voxels.
    n_particles : int
        Particles to place.
    radius_range : (min, max)
        Mean radii in voxels.
    model : ShellModel, optional
        Shell model to draw shapes from.
    rng : Generator or int
        Random source.
    blur : float
        Gaussian blur sigma in voxels (the CT's point spread).
    noise : float
        Standard deviation of additive Gaussian noise, as a fraction of the
        particle/background contrast.
    gap, border : float
        Minimum distances in voxels.

    Returns
    -------
    SyntheticCT
    """
    if len(shape) != 3 or min(shape) < 8:
        raise StereograinError(f"synthetic volume shape must be 3 sizes >= 8 voxels, got {shape}")
    if not (0 < radius_range[0] <= radius_range[1]):
        raise StereograinError(f"radius_range must be 0 < min <= max voxels, got {radius_range}")
    rng = np.random.default_rng(rng)
    model = model or paper_model()
    coefs = model.sample(n_particles, rng)
    target = rng.uniform(*radius_range, size=n_particles)
    coefs *= (target * 2 * np.sqrt(np.pi) / coefs[:, 0])[:, None]
    # Level-5 samples miss the true maximum by well under 5 % for L = 9 shapes.
    reach = 1.05 * np.clip(sphere.evaluate(coefs, level=5), 0, None).max(axis=1)
    size = np.array(shape[::-1], dtype=np.float64)  # (X, Y, Z)
    centres = np.empty((n_particles, 3))
    for p in range(n_particles):  # rejection placement of a handful of particles
        lo = reach[p] + border
        if np.any(size - lo <= lo):
            raise StereograinError(f"a particle of reach {reach[p]:.1f} voxels does not fit in a {shape} volume")
        for _ in range(10_000):
            c = rng.uniform(lo, size - lo)
            if np.all(np.linalg.norm(centres[:p] - c, axis=1) >= reach[:p] + reach[p] + gap):
                centres[p] = c
                break
        else:
            raise StereograinError(
                f"cannot place {n_particles} particles of radius up to {radius_range[1]} in a {shape} volume; "
                "use a bigger volume or fewer particles"
            )
    labels = np.zeros(shape, dtype=np.uint32)
    for p in range(n_particles):
        labels[voxelise_shell(coefs[p], centres[p], shape, reach[p])] = p + 1
    grey = (labels > 0).astype(np.float32)
    if blur > 0:
        grey = ndimage.gaussian_filter(grey, blur)
    grey += rng.normal(0.0, noise, size=shape).astype(np.float32)
    volume = np.clip(40 + 160 * grey, 0, 255).astype(np.uint8)
    return SyntheticCT(volume, labels, coefs, centres)
