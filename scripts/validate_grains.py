"""Does the stereological GAN recover 3D grains it only saw in 2D? (the check the paper could not make)

A known 3D truth: synthetic NMC811-like particles
(:func:`stereograin.sections_synth.nmc_like_particle`, radial restricted GBPDs).
Their central sections (with EBSD-like unindexed pixels) are fitted with 2D
GBPDs and a grain model is trained on them, as a user would with EBSD maps.
Then 3D architectures drawn from the model are compared with the truth in 3D:
grain volume, 3D elongation ``sqrt(lambda1 / lambda3)`` and the angle between
a grain's long axis and the radius (grains wholly inside a ball, see
:func:`stereograin.grains.validation.grain_statistics_3d`), by KS statistic and
Wasserstein distance, next to the same comparison for an *untrained* generator
(the baseline the training must beat) and the 2D section comparison.

Prints progress, then one JSON line with the figures (last line); writes
``grains3d.png``, ``sections.png`` and ``validation.json`` to ``--out``.
Runnable alone (``python scripts/validate_grains.py``; ``--quick`` for a short
schedule) and from the slow test ``tests/test_validate_grains.py``
(``pytest -m slow``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np


def _pooled_3d(archs, radius: float) -> dict[str, np.ndarray]:
    from stereograin.grains.validation import grain_statistics_3d

    parts = [grain_statistics_3d(g, radius) for g in archs]
    return {k: np.concatenate([p[k] for p in parts]) for k in ("volume", "elongation", "radial_angle")}


def run(out: Path, maps: int, epochs: int, steps: int, radius: float, particles: int, seed: int,
        batch_g: int = 64, batch_d: int = 128) -> dict[str, object]:
    from stereograin.fit2d import fit_section
    from stereograin.grains.generator import MarkerNet
    from stereograin.grains.model import GrainModel
    from stereograin.grains.training import TrainConfig, train
    from stereograin.grains.validation import compare_grains_3d, compare_sections, section_sample, section_statistics
    from stereograin.plots_grains import plot_grain_statistics_3d, plot_section_comparison
    from stereograin.sections import central_section_test
    from stereograin.sections_synth import cut_section, nmc_like_particle

    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    aspects = rng.uniform(2.5, 4.0, maps)
    truth_3d = [nmc_like_particle(radius, float(a), rng=rng) for a in aspects]
    print(f"truth: {maps} particles of radius {radius:g} px", flush=True)
    fitted, truth_maps = [], []
    for k, g3 in enumerate(truth_3d):
        g = cut_section(g3, radius, 0.0, rng=rng)
        truth_maps.append(g)
        v = central_section_test(g)
        fs = fit_section(g.labels, g.centre, seed=0, file=f"truth section {k}")
        fitted.append(dataclasses.replace(fs, central=bool(v.central)))
        print(f"  section {k}: {g.n_grains} grains, central {v.central}, fit agreement {fs.pixel_agreement:.3f}", flush=True)
    cfg = TrainConfig(epochs=epochs, steps=steps, batch_g=batch_g, batch_d=batch_d, seed=seed)
    model = train(fitted, out / "model", cfg, progress=True)
    untrained = GrainModel(MarkerNet(seed=seed), cfg.mu_1)

    results: dict[str, object] = {"maps": maps, "epochs": epochs, "steps": steps, "radius_px": radius,
                                  "mu": model.mu}
    truth_stats = _pooled_3d(truth_3d, radius)
    for name, m in (("trained", model), ("untrained", untrained)):
        archs = [m.sample(radius, rng).gbpd() for _ in range(particles)]
        stats = _pooled_3d(archs, radius)
        cmp3 = compare_grains_3d(stats, truth_stats)
        gen_maps = [g for a in archs for g in section_sample(a, radius, [0.0], rng)]
        cmp2 = compare_sections(gen_maps, truth_maps)
        results[name] = {"grains_3d": cmp3, "sections": cmp2,
                         "median_3d": {k: float(np.median(v)) for k, v in stats.items()}}
        for k, d in cmp3.items():
            results[f"{name}_{k}_ks"] = d["ks"]
        if name == "trained":
            plot_grain_statistics_3d(truth_stats, stats, ("truth", "model"), out / "grains3d.png", comparison=cmp3)
            plot_section_comparison(section_statistics(gen_maps), section_statistics(truth_maps), cmp2,
                                    out / "sections.png", labels=("truth", "model"))
    results["median_3d_truth"] = {k: float(np.median(v)) for k, v in truth_stats.items()}
    results["seconds"] = time.perf_counter() - t0
    (out / "validation.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("build/validate-grains"))
    ap.add_argument("--quick", action="store_true", help="4 maps, 6 x 20 steps (minutes)")
    ap.add_argument("--maps", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--radius", type=float, default=90.0, help="particle radius, px")
    ap.add_argument("--particles", type=int, default=4, help="model particles compared in 3D")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if a.quick:
        a.maps, a.epochs, a.steps, a.particles = 4, 6, 20, 2
    res = run(a.out, a.maps, a.epochs, a.steps, a.radius, a.particles, a.seed)
    flat = {k: v for k, v in res.items() if isinstance(v, (int, float))}
    print(json.dumps({k: float(f"{v:.4g}") for k, v in flat.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
