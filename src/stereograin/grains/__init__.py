"""The stereological GAN for the grain architecture (paper, Eq. 9-16, Algorithms 1-2).

Seeds (:mod:`.seeds`), neighbours (:mod:`.knn`), the marker generator
(:mod:`.generator`), exact candidate cells (:mod:`.candidates`), cutouts
``T_2D`` / ``T_3D`` (:mod:`.cutouts`), the discriminator
(:mod:`.discriminator`), training (:mod:`.training`), the model and its
samples (:mod:`.model`), validation statistics (:mod:`.validation`) and the
report (:mod:`.report`). Units: px (EBSD pixels of 50 nm). Everything is
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
from .candidates import exact_candidates
from .discriminator import Discriminator
from .generator import MarkerNet, generate_markers, metrics, neighbour_features, sample_markers
from .model import GrainArchitecture, GrainModel
from .training import TrainConfig, train
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
    "GrainArchitecture",
    "GrainModel",
    "TrainConfig",
    "exact_candidates",
    "sample_markers",
    "train",
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
