"""A library as one chunked Zarr store (``generate --layout zarr``), for very large libraries.

The folder layout writes 3 to 5 files per particle; 1e6 particles are millions
of small files, which many file systems (and their users' quotas) do not take.
The Zarr layout writes the particles in blocks of :data:`BLOCK` (64), each one
Zarr group holding its particles' arrays concatenated (about 25 files per
block, whatever the particles' sizes)::

    OUT/manifest.json, OUT/models/, OUT/particles.csv    as in the folder layout
    OUT/library.zarr/                                    the store (Zarr v3)
        blocks/NNNNNN/          particles NNNNNN * 64 ... (one group per block)
            index (k,)                  library indices of the block's k particles
            particles (k, C)            their rows of particles.csv (attrs: columns)
            coefficients (k, (L+1)^2)   shell SH coefficients (CT voxels)
            n_grains (k,), seed_offset (k+1,)
            positions (S, 3), noise (S, 2), gamma (S,), D (S, 3), r (S,)   every particle's
                                        stored seeds, particle j at seed_offset[j]:seed_offset[j+1]
            centres_px (G, 3), volumes_px3 (G,)   kept grains, particle j from cumsum(n_grains)
            box_px (k, 3, 2), com_spacing_px (k,), radius_px (k,) (NaN: none)
            grains (R, c), grain_offset (k+1,)    the grain tables (attrs: columns)
            labels (V,) uint32, label_offset (k+1,), label_shape (k, 3), label_origin_um (k, 3)
                                        the flattened (Z, Y, X) label volumes (voxelised libraries only)

Units as in ``particle.json``: shell in CT voxels, grains in px; tables in
micrometres. A block is written under a temporary name and renamed into place
when complete, so it is there whole or not at all: a rerun makes the missing
blocks. Blocks are the unit of work (a worker makes a block's particles one after
another), so every write goes to its own block and runs never share a chunk.

Read particles back with :func:`read_particle` (the analytic particle, bit for
bit the assembled one) and :func:`read_labels`.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from .errors import StereograinError

__all__ = ["STORE", "BLOCK", "block_path", "finished_blocks", "make_block", "read_rows", "read_particle", "read_labels"]

STORE = "library.zarr"
#: Particles per block (one Zarr group each).
BLOCK = 64
#: Chunk of the flattened label volumes (voxels).
_LABEL_CHUNK = 1 << 22


def block_path(out: str | Path, block: int) -> Path:
    """``OUT/library.zarr/blocks/NNNNNN``."""
    return Path(out) / STORE / "blocks" / f"{int(block):06d}"


def block_range(block: int, n: int) -> range:
    """Library indices of block ``block`` in a library of ``n`` particles."""
    return range(block * BLOCK, min(n, (block + 1) * BLOCK))


def create_store(out: Path, attrs: dict[str, Any]) -> None:
    """The store's root and ``blocks`` groups (first run; a rerun keeps them), and stale temporary blocks removed."""
    import zarr

    root = out / STORE
    if not (root / "zarr.json").is_file():
        g = zarr.open_group(str(root), mode="a")
        g.attrs.update(attrs)
        g.require_group("blocks")
    for stale in (root / "blocks").glob(".*.tmp"):  # left by a killed run; blocks are remade whole
        shutil.rmtree(stale, ignore_errors=True)


def finished_blocks(out: str | Path, n: int) -> set[int]:
    """Blocks of a library of ``n`` particles that are complete in ``OUT/library.zarr``."""
    folder = Path(out) / STORE / "blocks"
    if not folder.is_dir():
        return set()
    nb = -(-n // BLOCK)
    return {int(p.name) for p in folder.iterdir() if p.name.isdigit() and int(p.name) < nb and p.is_dir()}


def make_block(out: str | Path, block: int, n: int, config: Any) -> np.ndarray:
    """Make the particles of block ``block`` into the store and return their rows (k, C).

    Idempotent: a block already there is not remade; its rows are read back.
    """
    import zarr

    from .library import PARTICLE_COLUMNS, _models, _summary_row, built_folder, particle_rng
    from .particle import make_particle

    from . import __version__

    out = Path(out)
    final = block_path(out, block)
    if final.is_dir():
        return read_rows(out, block)
    shell_model, grain_model = _models(out / "models")
    rows, ps, tables, shapes, origins = [], [], [], [], []
    cols: list[str] = []
    with built_folder(final, f"block {block} into {out / STORE}") as tmp:
        g = zarr.open_group(str(tmp), mode="w")
        # label volumes are appended as they come: a block of 10 um particles at 50 nm is 4 GB
        labels = g.create_array("labels", shape=(0,), chunks=(_LABEL_CHUNK,), dtype=np.uint32) if config.voxelised else None
        for i in block_range(block, n):
            p = make_particle(
                shell_model, grain_model, particle_rng(config.seed, i), config.com_spacing_px,
                provenance={"library_seed": int(config.seed), "index": int(i), "stereograin_version": __version__},
            )
            lab = origin = None
            if labels is not None:
                lab, origin = p.label_volume(config.voxel_size_um)
                labels.append(lab.ravel())
                shapes.append(lab.shape)
                origins.append(origin)
            row, (cols, table) = _summary_row(i, p, lab, origin, config)
            rows.append(row)
            ps.append(p)
            tables.append(table)
        r = block_range(block, n)
        arrays: dict[str, np.ndarray] = {
            "index": np.arange(r.start, r.stop, dtype=np.int64),
            "particles": np.array(rows),
            "coefficients": np.stack([p.coefficients for p in ps]),
            "n_grains": np.array([p.n_grains for p in ps], np.int64),
            "seed_offset": np.concatenate([[0], np.cumsum([p.grains.n for p in ps])]).astype(np.int64),
            "box_px": np.stack([p.box_px for p in ps]),
            "com_spacing_px": np.array([p.com_spacing_px for p in ps]),
            "radius_px": np.array([np.nan if p.grains.radius_px is None else p.grains.radius_px for p in ps]),
            "centres_px": np.concatenate([p.centres_px for p in ps]),
            "volumes_px3": np.concatenate([p.volumes_px3 for p in ps]),
            "grains": np.concatenate(tables).astype(np.float64),
            "grain_offset": np.concatenate([[0], np.cumsum([len(t) for t in tables])]).astype(np.int64),
        }
        for name in ("positions", "noise", "gamma", "D", "r"):
            arrays[name] = np.concatenate([getattr(p.grains, name) for p in ps])
        if labels is not None:
            arrays["label_offset"] = np.concatenate([[0], np.cumsum([math.prod(s) for s in shapes])]).astype(np.int64)
            arrays["label_shape"] = np.array(shapes, np.int64)
            arrays["label_origin_um"] = np.array(origins, np.float64)
        for name, a in arrays.items():
            g.create_array(name, data=a)
        g.attrs.update({
            "particles": len(ps), "particle_columns": list(PARTICLE_COLUMNS), "grain_columns": list(cols),
            "ct_voxel_nm": float(ps[0].ct_voxel_nm), "px_nm": float(ps[0].grains.px_nm),
            "library_seed": int(config.seed), "stereograin_version": __version__,
            "voxel_size_um": float(config.voxel_size_um) if labels is not None else None,
        })
    return np.array(rows)


def _open_block(out: str | Path, block: int) -> Any:
    import zarr

    path = block_path(out, block)
    if not path.is_dir():
        raise StereograinError(f"{path.parent.parent} has no block {block}; the library is not finished (rerun `stereograin generate`)")
    try:
        return zarr.open_group(str(path), mode="r")
    except Exception as exc:  # noqa: BLE001 - zarr raises several kinds for a damaged group
        raise StereograinError(f"block {path} cannot be read ({exc}); delete it and rerun `stereograin generate` to remake it") from None


def read_rows(out: str | Path, block: int) -> np.ndarray:
    """The ``particles.csv`` rows (k, C) of a finished block."""
    return np.asarray(_open_block(out, block)["particles"][...])


def _locate(out: str | Path, index: int) -> tuple[Any, int]:
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
        raise StereograinError(f"particle index must be an integer >= 0, got {index!r}")
    g = _open_block(out, int(index) // BLOCK)
    j = int(index) - int(g["index"][0])
    if not 0 <= j < int(g.attrs["particles"]):
        raise StereograinError(f"the library has no particle {index}")
    return g, j


def read_particle(out: str | Path, index: int) -> Any:
    """Particle ``index`` of a Zarr-layout library (a :class:`~stereograin.particle.Particle`, bit for bit the assembled one)."""
    from .grains.model import GrainArchitecture
    from .particle import Particle

    g, j = _locate(out, index)
    s0, s1 = (int(v) for v in g["seed_offset"][j : j + 2])
    ng = np.asarray(g["n_grains"][...])
    c0 = int(ng[:j].sum())
    c1 = c0 + int(ng[j])
    radius = float(g["radius_px"][j])
    arch = GrainArchitecture(
        *(np.asarray(g[name][s0:s1]) for name in ("positions", "noise", "gamma", "D", "r")),
        px_nm=float(g.attrs["px_nm"]), radius_px=None if np.isnan(radius) else radius,
    )
    return Particle(
        coefficients=np.asarray(g["coefficients"][j]),
        ct_voxel_nm=float(g.attrs["ct_voxel_nm"]),
        grains=arch,
        n_grains=int(ng[j]),
        centres_px=np.asarray(g["centres_px"][c0:c1]),
        volumes_px3=np.asarray(g["volumes_px3"][c0:c1]),
        box_px=np.asarray(g["box_px"][j]),
        com_spacing_px=float(g["com_spacing_px"][j]),
        provenance={"library_seed": int(g.attrs["library_seed"]), "index": int(index),
                    "stereograin_version": g.attrs["stereograin_version"]},
    )


def read_labels(out: str | Path, index: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Particle ``index``'s label volume: ``(labels (Z, Y, X) uint32, origin_um (3,), voxel_size_um)``."""
    g, j = _locate(out, index)
    if "labels" not in g:
        raise StereograinError("the library is analytic (no label volumes); voxelise a particle with read_particle(...).label_volume(v)")
    a, b = (int(v) for v in g["label_offset"][j : j + 2])
    shape = tuple(int(v) for v in g["label_shape"][j])
    return np.asarray(g["labels"][a:b]).reshape(shape), np.asarray(g["label_origin_um"][j]), float(g.attrs["voxel_size_um"])
