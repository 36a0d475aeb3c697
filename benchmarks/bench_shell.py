"""Shell-model speed: shells sampled per second and CT segmentation throughput.

    python benchmarks/bench_shell.py           # 200,000 shells, 256^3 CT volume
    python benchmarks/bench_shell.py --quick   # 20,000 shells, 128^3 CT volume

One shell = coefficients drawn from the paper model (with the validity
checks), its radius function on the 642 icosphere directions, and d_max,
aspect ratio and sphericity (volume + surface area of the star polyhedron).
The paper reports 2.37e-3 s per shell (Ryzen 9 5900X + RTX A4000).

Prints progress lines, then one JSON line with the figures (last line).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _common import best_of, machine, print_figures


def bench_shells(n: int, repeats: int) -> dict[str, float]:
    from stereograin.descriptors import describe_coefficients
    from stereograin.shell import paper_model

    model = paper_model()

    def run() -> None:
        d = describe_coefficients(model.sample(n, 1, level=3), level=3, compactness=False)
        assert np.isfinite(d["sphericity"]).all()

    describe_coefficients(model.sample(1000, 0), level=3, compactness=False)  # warm caches (basis, numba)
    t = best_of(run, repeats)
    t_draw = best_of(lambda: model.sample(n, 1, level=3), repeats)
    return {"shells_per_s": n / t, "s_per_shell": t / n, "sample_only_shells_per_s": n / t_draw}


def bench_compactness(n: int) -> dict[str, float]:
    from stereograin.descriptors import describe_coefficients
    from stereograin.shell import paper_model

    coefs = paper_model().sample(n, 2, level=3)
    t = time.perf_counter()
    describe_coefficients(coefs, level=3, compactness=True)
    return {"compactness_shells_per_s": n / (time.perf_counter() - t)}


def bench_segment(size: int) -> dict[str, float]:
    from stereograin.segmentation import segment
    from stereograin.synthetic import synthetic_ct

    n_particles = max(4, int(0.6 * (size / 40) ** 3))
    ct = synthetic_ct(shape=(size, size, size), n_particles=n_particles, radius_range=(6, 12), rng=3, gap=1.0)
    t = time.perf_counter()
    labels = segment(ct.volume)
    dt = time.perf_counter() - t
    return {
        "segment_voxels_per_s": ct.volume.size / dt,
        "segment_volume_voxels": float(ct.volume.size),
        "segment_particles_true": float(n_particles),
        "segment_particles_found": float(labels.max()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes (seconds)")
    args = ap.parse_args()
    n = 20_000 if args.quick else 200_000
    size = 128 if args.quick else 256
    figures: dict[str, object] = {
        **machine(),
        "n_shells": n,
    }
    print(f"sampling {n} shells ...", flush=True)
    figures.update(bench_shells(n, repeats=3))
    print(f"compactness (convex hulls) on {n // 10} shells ...", flush=True)
    figures.update(bench_compactness(n // 10))
    print(f"segmenting a {size}^3 synthetic CT volume ...", flush=True)
    figures.update(bench_segment(size))
    figures["paper_s_per_shell"] = 2.37e-3
    figures["speedup_vs_paper"] = figures["paper_s_per_shell"] / figures["s_per_shell"]
    print_figures(figures)


if __name__ == "__main__":
    main()
