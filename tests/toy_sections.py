"""Tiny fitted 2D sections for GAN tests: a restricted 2D GBPD with radially elongated cells in a disc."""

from __future__ import annotations

import math

import numpy as np

from stereograin.fit2d import FittedSection


def toy_section(seed: int, radius: float = 60.0, intensity: float = 0.012, central: bool | None = True) -> FittedSection:
    """Poisson seeds (``intensity`` per px^2) in a disc of ``radius`` px, ``D_r`` in (0.2, 0.5), ``D_t`` in (1.5, 3)."""
    rng = np.random.default_rng(seed)
    n = max(int(rng.poisson(intensity * math.pi * radius**2)), 3)
    rad = radius * np.sqrt(rng.random(n))
    ang = rng.uniform(0.0, 2.0 * math.pi, n)
    seeds = np.stack([rad * np.cos(ang), rad * np.sin(ang)], axis=1)
    D = np.stack([rng.uniform(0.2, 0.5, n), rng.uniform(1.5, 3.0, n)], axis=1)
    r = rng.uniform(1.0, 4.0, n)
    size = int(2 * radius + 5)
    return FittedSection(
        "toy", 50.0, np.array([radius + 2.0, radius + 2.0]), seeds, D, r, np.arange(1, n + 1), 1.0, (size, size), central
    )
