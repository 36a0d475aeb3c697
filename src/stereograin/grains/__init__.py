"""Stereological GAN components for the grain architecture (paper, Eq. 9-16, Algorithms 1-2).

Seeds (:mod:`.seeds`), the marker generator (:mod:`.generator`), cutouts
``T_2D`` / ``T_3D`` (:mod:`.cutouts`) and the discriminator
(:mod:`.discriminator`). Units: px (EBSD pixels of 50 nm). Everything is
seeded (numpy ``Generator``, private ``torch.Generator``) and runs on CPU
float32 by default.
"""

from __future__ import annotations

from .cutouts import (
    CUTOUT_AREA,
    CutoutBatch,
    cutout_grid,
    cutout_points_3d,
    t2d,
    t2d_batch,
    t3d,
    t3d_batch,
    to_nchw,
    truncate_channels,
    visible_grains,
)
from .discriminator import Discriminator
from .generator import MarkerNet, generate_markers, metrics, neighbour_features
from .seeds import (
    CUTOUT,
    MU_1,
    P_MAX,
    WINDOW_HALF,
    Seeds,
    SlabGeometry,
    cutout_box,
    poisson_seeds,
    reach_certificate,
    slab_geometry,
    training_slab,
)

__all__ = [
    "CUTOUT",
    "CUTOUT_AREA",
    "MU_1",
    "P_MAX",
    "WINDOW_HALF",
    "CutoutBatch",
    "Discriminator",
    "MarkerNet",
    "Seeds",
    "SlabGeometry",
    "cutout_box",
    "cutout_grid",
    "cutout_points_3d",
    "generate_markers",
    "metrics",
    "neighbour_features",
    "poisson_seeds",
    "reach_certificate",
    "slab_geometry",
    "t2d",
    "t2d_batch",
    "t3d",
    "t3d_batch",
    "to_nchw",
    "training_slab",
    "truncate_channels",
    "visible_grains",
]
