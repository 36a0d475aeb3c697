"""Particle libraries: many particles, one derived random stream each.

Particle ``i`` of a library with master seed ``s`` is drawn from the stream
``SeedSequence(s, spawn_key=(i,))``, so any particle can be regenerated alone
and the library does not depend on how the work is split.

Until the grain model lands, a library holds outer shells only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from . import __version__, sphere
from .descriptors import SHELL_DESCRIPTORS, describe_coefficients
from .errors import StereograinError
from .io import write_json, write_table
from .shell import ShellModel

__all__ = ["particle_rng", "sample_shells", "generate_library"]

MANIFEST = "manifest.json"


def particle_rng(seed: int, index: int) -> np.random.Generator:
    """The random stream of particle ``index`` in a library with master ``seed``."""
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(int(index),)))


def sample_shells(model: ShellModel, indices: np.ndarray, seed: int, progress: bool = False) -> np.ndarray:
    """Coefficients of the shells of particles ``indices``, each from its own stream.

    Returns
    -------
    (len(indices), (L+1)**2) float64 -- CT voxels
    """
    idx = np.asarray(indices, dtype=np.int64)
    out = np.empty((idx.size, (model.L + 1) ** 2))
    for row, i in enumerate(tqdm(idx, desc="shells", unit="particle", disable=not progress)):
        out[row] = model.sample(1, particle_rng(seed, i), workers=1)[0]
    return out


def generate_library(
    out: str | Path,
    n: int,
    seed: int,
    shell_model: ShellModel,
    shell_model_name: str = "paper",
    level: int = 3,
    preview: int = 8,
    progress: bool = True,
) -> dict[str, Any]:
    """Write a library of ``n`` particle shells into folder ``out``.

    Files: ``shells.csv`` (one row per particle: ``particle`` index,
    descriptors in micrometres, then SH coefficients in CT voxels),
    ``manifest.json`` (seed, models, units, version) and, if ``preview``,
    ``preview.png`` (3D renderings of the first shells).

    Parameters
    ----------
    out : path
        Output folder (created; must not be a file).
    n : int
        Number of particles.
    seed : int
        Master seed.
    shell_model : ShellModel
    shell_model_name : str
        Where the model came from (recorded in the manifest).
    level : int
        Icosphere level of the descriptors.
    preview : int
        Shells shown in ``preview.png`` (0: none).
    progress : bool
        Show progress bars.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise StereograinError(f"output {out} is a file; give a folder for the library")
    if n < 1 or n > 10_000_000:
        raise StereograinError(f"number of particles must be in 1..1e7, got {n}")
    out.mkdir(parents=True, exist_ok=True)
    coefs = sample_shells(shell_model, np.arange(n), seed, progress=progress)
    desc = describe_coefficients(coefs, level=level, progress=progress)
    um = shell_model.voxel_size_nm / 1000.0
    power = {"d_max": 1, "d_min": 1, "surface_area": 2, "volume": 3}
    cols = ["particle"] + [k + {0: "", 1: "_um", 2: "_um2", 3: "_um3"}[power.get(k, 0)] for k in SHELL_DESCRIPTORS]
    values = [desc[k] * um ** power.get(k, 0) for k in SHELL_DESCRIPTORS]
    write_table(
        out / "shells.csv",
        cols + sphere.coefficient_names(shell_model.L),
        np.column_stack([np.arange(n), *values, coefs]),
    )
    manifest = {
        "format": "stereograin.library",
        "stereograin_version": __version__,
        "n_particles": int(n),
        "seed": int(seed),
        "random_streams": "particle i uses numpy SeedSequence(seed, spawn_key=(i,))",
        "contents": "outer shells only (the grain model is not available yet)",
        "shell_model": {"source": shell_model_name, "model": shell_model.to_dict()},
        "units": {"descriptors": "micrometres", "coefficients": "CT voxels", "voxel_size_nm": shell_model.voxel_size_nm},
        "descriptor_level": int(level),
    }
    write_json(out / MANIFEST, manifest)
    if preview:
        from .plots import shell_gallery

        # SH expansions are linear: scaling the coefficients renders the shells in micrometres.
        shell_gallery(coefs[:preview] * um, out / "preview.png", unit="µm")
    return manifest

