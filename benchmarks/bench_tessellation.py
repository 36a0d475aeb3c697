"""Tessellation speed: exact 3D labelling, plane sections and soft-map training steps.

    python benchmarks/bench_tessellation.py           # 256^3 grid, 20,000 seeds (a few minutes at most)
    python benchmarks/bench_tessellation.py --quick   # 128^3 grid, 2,500 seeds (same seed density)
    python benchmarks/bench_tessellation.py --label-only   # only the exact-labelling figures

Diagram: a restricted GBPD (Eq. 12) with seeds uniform in the grid's box
(frames relative to the box centre), diagonal markers D uniform in (1, 50)
(the generator's output range (0, 50] without its near-singular low end),
offsets r uniform in [1, 10] and spins gamma uniform in [0, pi]; units are
voxels. Figures:

* ``label_voxels_per_s``: exact labelling of the whole grid (``GBPD.label_grid``).
* ``section_pixels_per_s``: exact labelling of a 1024 x 1024 section through
  the box centre at a random orientation (``GBPD.label_plane``), spacing
  ``size / 1024`` voxels so that it spans the box.
* ``softmap_step_ms``: soft map (Eq. 11) forward + backward for 64 cutouts of
  32 x 32 pixels in the plane z = 0 (Eq. 16: points ``(x + p, y - 16.5, 0)``,
  ``p`` uniform in (0, 80]), float32, each with the seeds of a slab
  ``|z| <= 16`` around the plane at the paper's initial intensity 0.0018 per
  voxel, and the 16 Euclidean-nearest seeds of each pixel as candidates.
  ``softmap_step_ms_torch`` is the same step through plain torch autograd.
Timings are best-of-N wall clock on all numba threads.

Prints progress lines, then one JSON line with the figures (last line).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _common import best_of, machine, print_figures


def paper_diagram(size: int, n: int, rng: np.random.Generator):
    """Restricted GBPD of ``n`` seeds uniform in ``[0, size]^3`` (markers as in the module docstring)."""
    from stereograin.tessellation import GBPD, restricted_metrics

    seeds = rng.uniform(0, size, (n, 3))
    D = rng.uniform(1.0, 50.0, (n, 3))
    r = rng.uniform(1.0, 10.0, n)
    gamma = rng.uniform(0.0, np.pi, n)
    return GBPD(seeds, restricted_metrics(seeds - size / 2, D, gamma), r)


def bench_labelling(size: int, n: int, repeats: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    g = paper_diagram(size, n, rng)
    shape = (size, size, size)
    g.label_grid(shape)  # compile / load the kernels
    t = best_of(lambda: g.label_grid(shape), repeats)
    # a random plane through the centre
    u = rng.normal(size=3)
    u /= np.linalg.norm(u)
    v = np.cross(u, rng.normal(size=3))
    v /= np.linalg.norm(v)
    spacing = size / 1024
    origin = np.full(3, size / 2) - 512 * spacing * (u + v)
    g.label_plane(origin, u, v, (1024, 1024), spacing)
    t_sec = best_of(lambda: g.label_plane(origin, u, v, (1024, 1024), spacing), repeats)
    return {
        "label_voxels_per_s": size**3 / t,
        "label_s": t,
        "section_pixels_per_s": 1024 * 1024 / t_sec,
        "section_s": t_sec,
    }


def _softmap_batch(rng: np.random.Generator, batch: int = 64, mu: float = 0.0018, half: float = 16.0, k: int = 16):
    """Cutout points, slab seeds and markers for one GAN generator step (float32 tensors)."""
    import torch

    from stereograin.tessellation import nearest_candidates, restricted_metrics

    # window around the cutouts: x in [-half, 112 + half], y and z in [-16.5 - half, 16.5 + half] / [-half, half]
    lo = np.array([-half, -16.5 - half, -half])
    hi = np.array([112.0 + half, 16.5 + half, half])
    n = int(round(mu * np.prod(hi - lo)))
    seeds = rng.uniform(lo, hi, (batch, n, 3))
    D = rng.uniform(1.0, 50.0, (batch, n, 3))
    r = rng.uniform(1.0, 10.0, (batch, n))
    gamma = rng.uniform(0.0, np.pi, (batch, n))
    M = restricted_metrics(seeds.reshape(-1, 3), D.reshape(-1, 3), gamma.reshape(-1)).reshape(batch, n, 3, 3)
    xx, yy = np.meshgrid(np.arange(1, 33), np.arange(1, 33), indexing="xy")
    p = rng.uniform(0, 80, batch)
    pts = np.zeros((batch, 1024, 3))
    pts[:, :, 0] = xx.ravel()[None] + p[:, None]
    pts[:, :, 1] = yy.ravel()[None] - 16.5
    t = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    x = t(pts)
    s = t(seeds).requires_grad_(True)
    Mt = t(M).requires_grad_(True)
    rt = t(r).requires_grad_(True)
    idx = nearest_candidates(x, s, k)
    return x, s, Mt, rt, idx, n


def bench_softmap(repeats: int) -> dict[str, float]:
    import torch

    import stereograin.tessellation as tess

    x, s, M, r, idx, n = _softmap_batch(np.random.default_rng(1))

    def step() -> None:
        for a in (s, M, r):
            a.grad = None
        y = tess.soft_map(x, s, M, r, 1.0, idx)
        (y * y).sum().backward()

    out: dict[str, float] = {"softmap_seeds_per_cutout": float(n)}
    step()
    out["softmap_step_ms"] = 1e3 * best_of(step, repeats)
    tess._SOFT_MAP_KERNEL = False
    try:
        step()
        out["softmap_step_ms_torch"] = 1e3 * best_of(step, max(2, repeats // 2))
    finally:
        tess._SOFT_MAP_KERNEL = True
    t = time.perf_counter()
    tess.nearest_candidates(x, s, 16)
    out["softmap_candidates_ms"] = 1e3 * (time.perf_counter() - t)
    out["torch_threads"] = float(torch.get_num_threads())
    return out


def bench_fit2d(quick: bool) -> dict[str, float]:
    """``fit2d_s_per_map``: fit a restricted 2D GBPD to a synthetic 225 x 225 map of ~500 grains.

    The map is a radial 2D restricted GBPD cut to a disc with 2 % unindexed
    pixels (``stereograin.fit2d.synthetic_section_map``); ``--quick`` uses 96 x 96.
    """
    from stereograin.fit2d import benchmark_fit

    benchmark_fit(size=64, n_grains=40, iterations=5)  # compile the kernels first
    res = benchmark_fit(size=96, n_grains=90) if quick else benchmark_fit()
    return {"fit2d_s_per_map": res["fit2d_s_per_map"], "fit2d_pixel_agreement": res["pixel_agreement"],
            "fit2d_grains": float(res["n_grains"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="128^3 grid and 2,500 seeds (seconds)")
    ap.add_argument("--label-only", action="store_true", help="only the exact-labelling figures (no soft map, no 2D fit)")
    args = ap.parse_args()
    size, n = (128, 2500) if args.quick else (256, 20000)
    repeats = 3 if args.quick else 5
    import numba

    figures: dict[str, object] = {
        **machine(),
        "numba_threads": numba.get_num_threads(),
        "grid": size,
        "seeds": n,
        "markers": "D ~ U(1, 50), r ~ U(1, 10), gamma ~ U(0, pi), seeds uniform in the box, frames about its centre",
    }
    print(f"exact labelling: {size}^3 grid and a 1024^2 section, {n} seeds (best of {repeats}) ...", flush=True)
    figures.update(bench_labelling(size, n, repeats))
    print(f"  {figures['label_voxels_per_s'] / 1e6:.1f} M voxels/s, section {figures['section_pixels_per_s'] / 1e6:.1f} M pixels/s", flush=True)
    if args.label_only:
        print_figures(figures)
        return
    print("soft map: 64 cutouts of 32 x 32 px, float32, 16 candidates per pixel ...", flush=True)
    figures.update(bench_softmap(repeats))
    print(f"  {figures['softmap_step_ms']:.1f} ms per forward + backward", flush=True)
    print("2D fit of a synthetic EBSD map ...", flush=True)
    figures.update(bench_fit2d(args.quick))
    print_figures(figures)


if __name__ == "__main__":
    main()
