"""``grains report``: a grain model's sections against the ground-truth sections (Fig. 10b, Fig. 11).

The ground truth is each fitted 2D section's exact label image inside its
particle mask (what the GAN was trained on; unindexed pixels are filled by
the fitted cell, the paper's prescription). For every such section the model
draws ``per_section`` 3D architectures in a ball of the section's particle
radius (``sqrt(mask area / pi)`` px: the sections are central) and cuts each
through its centre in a random plane. Descriptors (area, elongation eta,
orientation alpha, chord lengths) are compared by KS statistic and
Wasserstein distance. Fig. 11 shows how alpha's radial preference fades
with the cut height in the model's architectures; Fig. 10b-like 3D statistics
(grain volume, 3D elongation, angle of the long axis to the radius) describe
what the 2D data cannot show.

Files: ``report.json`` (every number), ``sections.png``, ``alpha_height.png``,
``grains3d.png``, each written atomically.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..errors import StereograinError
from ..fit2d import FittedSection
from ..io import json_ready, write_json
from ..sections import GrainMap
from .model import GrainModel
from .training import usable_sections
from .validation import (
    alpha_by_height,
    compare_sections,
    grain_statistics_3d,
    section_sample,
    section_statistics,
)

__all__ = ["truth_maps", "grain_report", "HEIGHTS"]

#: Relative cut heights of Fig. 11.
HEIGHTS = (0.0, 0.2, 0.4, 0.6, 0.8)


def truth_maps(sections: Sequence[FittedSection]) -> list[GrainMap]:
    """Ground-truth grain maps: each section's fitted labels inside its particle mask."""
    return [GrainMap(s.label_image(), s.step_nm, s.file or "fitted section") for s in sections]


def _particle_radius(section: FittedSection) -> float:
    area = float(section.mask.sum()) if section.mask is not None else float(np.prod(section.shape))
    return math.sqrt(area / math.pi)


def _summary(stats: dict[str, np.ndarray]) -> dict[str, float]:
    out = {}
    for k, v in stats.items():
        x = np.asarray(v, dtype=np.float64)
        x = x[np.isfinite(x)]
        out[k] = float(np.median(x)) if x.size else None
    return out


def grain_report(
    model: GrainModel,
    sections: Sequence[FittedSection],
    out: str | Path,
    per_section: int = 2,
    heights: Sequence[float] = HEIGHTS,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Write the grain model's validation report (module notes) and return its numbers.

    Parameters
    ----------
    model : GrainModel
    sections : sequence of FittedSection
        The ground truth (off-centre sections are left out, as in training).
    out : path
        Report folder.
    per_section : int
        Generated central sections per ground-truth section.
    heights : sequence of float
        Relative cut heights for Fig. 11, each in [0, 1).
    seed : int
    progress : bool

    Returns
    -------
    dict
        The content of ``report.json``.
    """
    from tqdm.auto import tqdm

    from ..plots_grains import plot_alpha_by_height, plot_grain_statistics_3d, plot_section_comparison

    secs = usable_sections(sections, model.px_nm)
    if not (isinstance(per_section, int) and 1 <= per_section <= 100):
        raise StereograinError(f"per_section must be an integer in [1, 100], got {per_section!r}")
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise StereograinError(f"report output {folder} is a file; give a folder")
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(np.random.SeedSequence(int(seed)))
    truth = truth_maps(secs)
    radii = [_particle_radius(s) for s in secs]
    generated: list[GrainMap] = []
    for R in tqdm(radii, desc="model sections", unit="section", disable=not progress):
        for _ in range(per_section):
            arch = model.sample(R, rng)
            generated += section_sample(arch.gbpd(), R, [0.0], rng)
    truth_stats, gen_stats = section_statistics(truth), section_statistics(generated)
    comparison = compare_sections(gen_stats, truth_stats)
    plot_section_comparison(gen_stats, truth_stats, comparison, folder / "sections.png", labels=("data", "model"))

    R_mid = float(np.median(radii))
    arch = model.sample(R_mid, rng)
    by_height = alpha_by_height(arch.gbpd(), R_mid, heights, rng, per_height=max(2, per_section))
    plot_alpha_by_height(by_height, folder / "alpha_height.png", truth=truth_stats)
    stats3d = grain_statistics_3d(arch.gbpd(), R_mid)
    plot_grain_statistics_3d(stats3d, None, ("model", ""), folder / "grains3d.png")

    report = {
        "stereograin_version": __version__,
        "model": {"mu": model.mu, "px_nm": model.px_nm, "provenance": model.provenance},
        "sections": {"count": len(secs), "files": [s.file for s in secs], "particle_radius_px": radii},
        "generated_sections": len(generated),
        "comparison": comparison,
        "medians": {"model": _summary(gen_stats), "data": _summary(truth_stats)},
        "alpha_by_height": by_height.to_json(),
        "grains_3d": {
            "radius_px": R_mid,
            "grains": int(len(stats3d["volume"])),
            "median": _summary({k: stats3d[k] for k in ("volume", "elongation", "radial_angle")}),
        },
        "files": ["sections.png", "alpha_height.png", "grains3d.png"],
    }
    write_json(folder / "report.json", json_ready(report))
    return report
