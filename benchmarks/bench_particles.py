"""Particle speed: analytic particles, voxelisation, surface meshes, and analytic libraries.

    python benchmarks/bench_particles.py           # 10 particles per figure, libraries of 120
    python benchmarks/bench_particles.py --quick   # 4 particles per figure, libraries of 12

Models: the paper's shell model (Table 1) and the built-in default grain model.

Figures (wall clock):

* ``analytic_particle_s``: :func:`~stereograin.particle.make_particle` (shell,
  grains, assembly; no voxels) for a 10 um particle: a paper shell scaled to
  a volume-equivalent diameter of 10 um (a00 / sqrt(4 pi) = 5 um), median over
  particles. ``analytic_particle_paper_s``: the same for shells drawn from the
  paper model as they come (median; its log-normal size law has a heavy tail,
  ``paper_particle_diameter_um`` is their median volume-equivalent diameter).
* ``voxelised_particle_s``: :meth:`Particle.label_volume` of a 10 um particle
  at 50 nm voxels (``voxels_per_particle``, about 8e6 plus the grains that poke
  out), best of 3; ``voxels_per_s`` the rate.
* ``surface_mesh_s``: conforming grain surfaces (:func:`export.grain_surfaces`,
  VTK surface nets) of that volume.
* ``tet_mesh_s``: the conforming tetrahedral mesh with smoothed boundaries
  (:func:`tetmesh.tet_mesh`, 20 iterations) of the same particle at 0.2 um
  (``tets_per_particle`` tetrahedra, 6 per voxel).
* ``library_particles_per_s_1w`` / ``_2w``: an analytic library
  (``--format analytic``, paper shells) made by :func:`generate_library` with
  1 worker (in process) and 2 worker processes (start-up included).
  ``library_steady_particles_per_s_2w`` is the 2-worker rate once the workers
  run (from the first finished particle to the last, by the particle folders'
  times), ``library_startup_s_2w`` the time to the first finished particle,
  and ``library_1000_min_2w`` projects a 1,000-particle library: the start-up
  plus 999 particles at the steady rate. The paper model's log-normal size
  law has a heavy tail (one particle in a hundred has about 9 times the mean
  grain count), so the rate of a few dozen particles swings with the few
  large ones drawn: the full run makes 120.
* ``library_1000_measured_min_2w`` (not with ``--quick``): a real 1,000-particle
  analytic library of seed 0 with 2 worker processes, wall-clock minutes from
  the call to its return (the projection above rests on 120 particles; the
  1,000 include particle 650, a 47 um particle of 354,000 grains, on a coarser
  centre-of-mass grid; the library takes 2.8 GB in a temporary folder, removed after).
* ``library_particle_cpu_s_1t``: CPU seconds per particle of particles
  1..119 (1..11 with ``--quick``) of the same seed-0 analytic library, made one
  by one in this process on one thread (a worker's own cost); ``library_1000_cpu_min_2w``
  is 1,000 of them on two cores, start-up and scheduling left out (CPU time
  still moves with a shared host's load: 0.31-0.42 s in eight runs here).

The host may be shared: ``load_avg_1min`` is the load when the run started.
Prints progress lines, then one JSON line with the figures (last line).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from _common import best_of, machine, print_figures

#: Target diameter (um) of the benchmark's reference particle.
DIAMETER_UM = 10.0


def _models():
    from stereograin.grains.model import GrainModel
    from stereograin.shell import paper_model

    return paper_model(), GrainModel.load("default")


def _ten_um_shell(shell_model, rng: np.random.Generator) -> np.ndarray:
    """A paper shell rescaled so that a00 / sqrt(4 pi) is 5 um (CT voxels)."""
    a = shell_model.sample(1, rng, workers=1)[0]
    target = DIAMETER_UM / 2 * 1000.0 / shell_model.voxel_size_nm * math.sqrt(4 * math.pi)
    return a * (target / a[0])


def bench_particles(quick: bool) -> dict[str, float]:
    from stereograin.export import grain_surfaces
    from stereograin.particle import make_particle
    from stereograin.tetmesh import tet_mesh

    sm, gm = _models()
    n = 4 if quick else 10
    make_particle(sm, gm, np.random.default_rng(99))  # warm-up: compilation, caches
    print(f"{n} analytic 10 um particles ...", flush=True)
    times, last = [], None
    for i in range(n):
        rng = np.random.default_rng(i)
        shell = _ten_um_shell(sm, np.random.default_rng(1000 + i))
        t = time.perf_counter()
        last = make_particle(sm, gm, rng, coefficients=shell)
        times.append(time.perf_counter() - t)
    print(f"{n} analytic paper-model particles ...", flush=True)
    paper, diam = [], []
    for i in range(n):
        t = time.perf_counter()
        p = make_particle(sm, gm, np.random.default_rng(500 + i))
        paper.append(time.perf_counter() - t)
        diam.append(2 * p.coefficients[0] / math.sqrt(4 * math.pi) * sm.voxel_size_nm / 1000.0)
    print("voxelising one 10 um particle at 50 nm ...", flush=True)
    labels = None

    def vox():
        nonlocal labels
        labels = last.label_volume(0.05)

    t_vox = best_of(vox, 3)
    lab, origin = labels
    print("surface nets ...", flush=True)
    t = time.perf_counter()
    grain_surfaces(lab, 0.05, origin)
    t_mesh = time.perf_counter() - t
    print("tetrahedral mesh at 0.2 um ...", flush=True)
    coarse, corigin = last.label_volume(0.2)
    t = time.perf_counter()
    _, tets, _ = tet_mesh(coarse, 0.2, corigin)
    t_tet = time.perf_counter() - t
    return {
        "analytic_particle_s": float(np.median(times)),
        "grains_per_particle": float(last.n_grains),
        "analytic_particle_paper_s": float(np.median(paper)),
        "paper_particle_diameter_um": float(np.median(diam)),
        "voxelised_particle_s": t_vox,
        "voxels_per_particle": float(lab.size),
        "voxels_per_s": lab.size / t_vox,
        "surface_mesh_s": t_mesh,
        "tet_mesh_s": t_tet,
        "tets_per_particle": float(len(tets)),
    }


def bench_library(quick: bool) -> dict[str, float]:
    from stereograin.library import LibraryConfig, generate_library

    sm, gm = _models()
    n = 12 if quick else 120
    out: dict[str, float] = {}
    root = Path(tempfile.mkdtemp(prefix="bench_lib_"))
    try:
        for w in (1, 2):
            print(f"analytic library of {n} particles, {w} worker(s) ...", flush=True)
            t0 = time.time()
            generate_library(root / f"w{w}", n, LibraryConfig(0, "analytic"), sm, gm, workers=w, progress=False)
            out[f"library_particles_per_s_{w}w"] = n / (time.time() - t0)
        done = np.sort([p.stat().st_mtime for p in (root / "w2").glob("particle_*")])
        steady = (len(done) - 1) / (done[-1] - done[0])
        out["library_steady_particles_per_s_2w"] = steady
        out["library_startup_s_2w"] = float(done[0] - t0)
        out["library_1000_min_2w"] = (out["library_startup_s_2w"] + 999 / steady) / 60.0
        out.update(_library_cpu(root / "cpu", n - 1))  # the same particles as the libraries above
        if not quick:
            print("analytic library of 1,000 particles, 2 workers ...", flush=True)
            t0 = time.time()
            with warnings.catch_warnings():  # particle 650's coarser grid (docs/concepts/particles.md)
                warnings.simplefilter("ignore", UserWarning)
                generate_library(root / "w1000", 1000, LibraryConfig(0, "analytic"), sm, gm, workers=2, progress=False)
            out["library_1000_measured_min_2w"] = (time.time() - t0) / 60.0
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return out


def _library_cpu(folder: Path, n: int) -> dict[str, float]:
    """CPU seconds per library particle on one thread: particles 1..n of a seed-0 analytic library, one by one.

    A worker's own cost, without start-up or scheduling (the host's load still
    moves it: slower cores take more CPU time for the same work).
    """
    import numba
    import torch
    from threadpoolctl import threadpool_limits

    from stereograin.library import LibraryConfig, generate_library, make_library_particle

    print(f"{n} library particles one by one on one thread (CPU time) ...", flush=True)
    cfg = LibraryConfig(0, "analytic")
    generate_library(folder, 1, cfg, *_models(), workers=1, progress=False)  # the folder, its models, particle 0
    threads = (numba.get_num_threads(), torch.get_num_threads())
    numba.set_num_threads(1)
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            t = time.process_time()
            for i in range(1, n + 1):
                make_library_particle(folder, i, cfg)
            cpu = (time.process_time() - t) / n
    finally:
        numba.set_num_threads(threads[0])
        torch.set_num_threads(threads[1])
    return {"library_particle_cpu_s_1t": cpu, "library_1000_cpu_min_2w": 1000 * cpu / 2 / 60.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer particles (about a minute)")
    args = ap.parse_args()
    figures: dict[str, object] = {**machine(), "load_avg_1min": os.getloadavg()[0]}
    for bench in (bench_particles, bench_library):
        figures.update(bench(args.quick))
    print_figures(figures)


if __name__ == "__main__":
    main()
