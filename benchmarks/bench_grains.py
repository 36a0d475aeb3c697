"""Grain-model speed: analytic sampling (seeds -> features -> markers) and GAN training steps.

    python benchmarks/bench_grains.py           # about 1e6 seeds: 40 balls of radius 150 px, and one 1e6-seed ball
    python benchmarks/bench_grains.py --quick   # about 1e5 seeds: 4 balls, and one 1e5-seed ball

One grain = one seed of the homogeneous Poisson process at the paper's
initial intensity ``mu_1 = 0.0018`` per px^3 in a ball (a particle of radius
150 px holds about 25,400 seeds), its 12 nearest neighbours, radial frame and
60 generator inputs, and its markers ``(D, r)`` from an untrained
``MarkerNet`` (60 -> 64 -> 64 -> 4, CPU float32): ``poisson_seeds`` +
``sample_markers``, particle after particle. The paper reports 7.06e-6 s per
grain (GPU).

Figures (seconds per grain, best of a few repeats, wall clock):

* ``s_per_grain``: the whole path for the batch of balls, on ``threads``
  threads (numba's thread count); ``s_per_grain_1_thread`` on one.
* ``seeds_s_per_grain`` (``poisson_seeds``, numpy), ``knn_s_per_grain``
  (cell grid + exact 12-NN, ``knn``), ``features_s_per_grain`` (what the
  fused feature pass of ``sample_markers`` costs on top of the neighbour
  search: grid order, frames and float32 rows), ``net_s_per_grain`` (the MLP
  on ready features, same batches and threads): the breakdown; the rest
  (storing the markers, thread hand-offs) is the difference.
* ``net_s_per_grain_torch_threads``: the MLP batch after batch in one thread
  with torch's own intra-op threads instead (``torch_threads``).
* ``s_per_grain_1e6_ball``: the whole path for one ball of about 1e6 seeds
  (``s_per_grain_1e5_ball``: 1e5 with ``--quick``).
* ``ckdtree_path_s_per_grain``: the previous implementation on one ball
  (cKDTree, numpy frames and einsum, ``net.markers`` on float64 features).
* ``seeds_per_sample``: mean seeds per ball.

Training: ``train_steps_per_s`` (one generator step of 64 cutouts and one
discriminator step of 128 + 128 cutouts, the paper's batch sizes, CPU),
``train_step_s`` and ``paper_schedule_min`` (200 x 100 steps at that rate);
``step_patterns_ms``, ``step_candidates_ms``, ``step_discriminator_ms`` and
``step_data_cutouts_ms``: the step's main parts timed one at a time
(``_step_parts``).

The host may be shared: ``load_avg_1min`` is the load when the run started.

Prints progress lines, then one JSON line with the figures (last line).
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Callable

import numpy as np
from _common import best_of, machine, print_figures

#: Paper, Sec. 4: analytic sampling time per grain on an RTX A4000.
PAPER_S_PER_GRAIN = 7.06e-6
#: Radius of a particle ball in px and the number of balls in a batch.
BALL_RADIUS = 150.0


def _seed_batch(n_balls: int, radius: float) -> list:
    from stereograin.grains.seeds import MU_1, poisson_seeds

    return [poisson_seeds(radius, MU_1, 1000 + b) for b in range(n_balls)]


def _ckdtree_path(net, seeds) -> None:
    """The implementation before the grid k-NN: cKDTree + radial_frames + einsum + net.markers."""
    import torch
    from scipy.spatial import cKDTree

    from stereograin.tessellation import radial_frames

    s = seeds.positions
    n = len(s)
    _, idx = cKDTree(s).query(s, k=13, workers=-1)
    is_self = idx == np.arange(n)[:, None]
    is_self[~is_self.any(axis=1), -1] = True
    idx = idx[~is_self].reshape(n, 12)
    Q = radial_frames(s, seeds.gamma)
    v = np.einsum("nab,nkb->nka", Q, s[idx] - s[:, None, :])
    feats = np.concatenate([v, seeds.noise[idx]], axis=2).reshape(n, 60)
    with torch.inference_mode():
        net.markers(feats)


def bench_sampling(quick: bool) -> dict[str, float]:
    import queue

    import torch

    from stereograin._threads import default_workers, run_all
    from stereograin.grains import generator as G
    from stereograin.grains import knn as K
    from stereograin.grains.seeds import MU_1, poisson_seeds

    n_balls = 4 if quick else 40
    repeats = 3
    net = G.MarkerNet()
    batch = _seed_batch(n_balls, BALL_RADIUS)
    n = sum(len(s) for s in batch)
    nw = default_workers()
    G.sample_markers(net, batch[0])  # compile / load the kernels
    K.knn(batch[0].positions, 12)

    def whole(workers: int | None = None) -> None:
        for b in range(n_balls):
            G.sample_markers(net, poisson_seeds(BALL_RADIUS, MU_1, 1000 + b), workers=workers)

    print(f"sampling {n_balls} balls of radius {BALL_RADIUS:g} px ({n} seeds) on {nw} threads ...", flush=True)
    t_all = best_of(whole, repeats)
    print("again on 1 thread ...", flush=True)
    t_all_1 = best_of(lambda: whole(1), repeats)
    t_seeds = best_of(lambda: _seed_batch(n_balls, BALL_RADIUS), repeats)
    t_knn = best_of(lambda: [K.knn(s.positions, 12) for s in batch], repeats)

    # the parts of sample_markers alone, same batches and threads: feature rows, then the MLP
    nf = 60
    fscale = net.in_scale.numpy().astype(np.float32)
    grids = [K.cell_grid(s.positions) for s in batch]
    plans = [K._cell_batches(g, K._batch_size(len(g), nw, G.SAMPLE_CHUNK)) for g in grids]
    rows = max(int(g.start[b] - g.start[a]) for g, p in zip(grids, plans) for a, b in p)
    feats = [np.empty((len(s), nf), np.float32) for s in batch]
    frames = [np.empty((len(s), 3, 3)) for s in batch]

    def feature_pass() -> None:
        for s, f, Q in zip(batch, feats, frames):
            grid = K.cell_grid(s.positions)
            nz_s, g_s = G._gather_marks(grid.order, s.noise, s.gamma)

            rank = np.arange(len(grid), dtype=np.int64)

            def job(cells: tuple[int, int], grid=grid, nz_s=nz_s, g_s=g_s, f=f, Q=Q, rank=rank) -> None:
                a = int(grid.start[cells[0]])
                G._run_features(grid, nz_s, g_s, 12, cells[0], cells[1], rank, a, fscale, f[a:], Q)

            run_all(job, K._cell_batches(grid, K._batch_size(len(grid), nw, G.SAMPLE_CHUNK)), nw)

    t_feat = best_of(feature_pass, repeats)
    mlps: queue.SimpleQueue = queue.SimpleQueue()
    for _ in range(nw):
        mlps.put(G._FastMLP(net, rows))

    def net_pass() -> None:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for g, p, f in zip(grids, plans, feats):

                def job(cells: tuple[int, int], g=g, f=f) -> None:
                    mlp = mlps.get()
                    with torch.inference_mode():
                        mlp(torch.from_numpy(f[g.start[cells[0]] : g.start[cells[1]]]))
                    mlps.put(mlp)

                run_all(job, p, nw)
        finally:
            torch.set_num_threads(threads)

    t_net = best_of(net_pass, repeats)
    mlp_one = G._FastMLP(net, rows)

    def net_intraop() -> None:  # torch's own threads, batch after batch
        with torch.inference_mode():
            for g, p, f in zip(grids, plans, feats):
                for a, b in p:
                    mlp_one(torch.from_numpy(f[g.start[a] : g.start[b]]))

    t_net_intraop = best_of(net_intraop, repeats)

    radius_big = ((1e5 if quick else 1e6) / (MU_1 * 4.0 / 3.0 * math.pi)) ** (1.0 / 3.0)
    big = poisson_seeds(radius_big, MU_1, 7)
    print(f"one ball of radius {radius_big:.0f} px ({len(big)} seeds) ...", flush=True)
    t_big = best_of(lambda: G.sample_markers(net, poisson_seeds(radius_big, MU_1, 7)), repeats)

    print("the previous implementation (cKDTree path) on one ball ...", flush=True)
    _ckdtree_path(net, batch[0])
    t_ref = best_of(lambda: _ckdtree_path(net, batch[0]), repeats)

    return {
        "s_per_grain": t_all / n,
        "seeds_s_per_grain": t_seeds / n,
        "knn_s_per_grain": t_knn / n,
        "features_s_per_grain": (t_feat - t_knn) / n,
        "net_s_per_grain": t_net / n,
        "s_per_grain_1_thread": t_all_1 / n,
        "net_s_per_grain_torch_threads": t_net_intraop / n,
        ("s_per_grain_1e5_ball" if quick else "s_per_grain_1e6_ball"): t_big / len(big),
        "ckdtree_path_s_per_grain": t_ref / len(batch[0]),
        "seeds_per_sample": n / n_balls,
        "n_seeds": float(n),
        "threads": nw,
        "torch_threads": torch.get_num_threads(),
        "paper_s_per_grain": PAPER_S_PER_GRAIN,
        "speedup_vs_paper": PAPER_S_PER_GRAIN * n / t_all,
    }


def _bench_sections(n: int = 4, seed: int = 0):
    """Fitted-section stand-ins: restricted 2D GBPDs with radial cells in discs of 100 px (about 380 cells)."""
    import math

    from stereograin.fit2d import FittedSection

    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        R = 100.0
        m = int(rng.poisson(0.012 * math.pi * R * R))
        rad = R * np.sqrt(rng.random(m))
        ang = rng.uniform(0.0, 2.0 * math.pi, m)
        s = np.stack([rad * np.cos(ang), rad * np.sin(ang)], axis=1)
        D = np.stack([rng.uniform(0.2, 0.5, m), rng.uniform(1.5, 3.0, m)], axis=1)
        out.append(FittedSection(f"bench {k}", 50.0, np.array([R + 2, R + 2]), s, D, rng.uniform(1.0, 4.0, m),
                                 np.arange(1, m + 1), 1.0, (205, 205), True))
    return out


def bench_training(quick: bool) -> dict[str, float]:
    """GAN training steps per second at the paper's batch sizes (CPU, default ``TrainConfig``).

    One step = one generator step on 64 soft cutouts and one discriminator step
    on 128 data + 128 model cutouts (``train_step``, exactly what ``train``
    runs), on four stand-in fitted sections; ``paper_schedule_min`` is the
    paper's 200 x 100 steps at that rate.
    """
    import torch

    from stereograin.grains.discriminator import Discriminator
    from stereograin.grains.generator import MarkerNet
    from stereograin.grains.training import TrainConfig, _SectionTable, train_step

    cfg = TrainConfig()
    secs = _SectionTable.of(_bench_sections())  # built once per run, as ``train`` does
    # The networks ``train`` builds from the config (the discriminator's widths are ``cfg.d_widths``).
    G = MarkerNet(hidden=cfg.hidden, seed=cfg.seed)
    D = Discriminator(in_channels=cfg.keep, widths=cfg.d_widths, seed=cfg.seed + 1)
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr)
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr)
    rng = np.random.default_rng(0)
    train_step(G, D, opt_g, opt_d, secs, cfg, cfg.mu_1, rng)  # warm-up: numba compilation
    print("GAN training steps (paper batch sizes) ...", flush=True)
    n = 3 if quick else 10
    t = time.perf_counter()
    for _ in range(n):
        train_step(G, D, opt_g, opt_d, secs, cfg, cfg.mu_1, rng)
    per_step = (time.perf_counter() - t) / n
    print("the step's parts, one at a time ...", flush=True)
    return {
        "train_steps_per_s": 1.0 / per_step,
        "train_step_s": per_step,
        "paper_schedule_min": 200 * 100 * per_step / 60.0,
        "torch_threads": float(torch.get_num_threads()),
        **_step_parts(G, D, secs, cfg, 2 if quick else 5),
    }


def _step_parts(G, D, table, cfg, repeats: int) -> dict[str, float]:
    """What one training step's parts cost, each timed alone at the step's sizes (ms, best of ``repeats``).

    * ``step_patterns_ms``: drawing the step's 6 seed patterns (2 for the
      generator's 64 cutouts, 4 for the discriminator's 128; about 16,000
      seeds each) with every seed's neighbours, frame and markers.
    * ``step_candidates_ms``: their exact candidates (16 per pixel for the
      generator's cutouts, the winner for the discriminator's).
    * ``step_discriminator_ms``: the discriminator's step (forward and
      backward on 128 + 128 one-hot cutouts) and the generator step's pass
      through it (forward and backward to its 64 soft cutouts).
    * ``step_data_cutouts_ms``: the 128 augmented data cutouts, labelled exactly.

    The rest of a step (soft maps, the generator's markers with gradients,
    one-hot images, Adam) is ``train_step_s`` minus their sum. A step of
    0.09 s (30 minutes for the paper's schedule) would have to fit all of it.
    """
    import torch

    from stereograin.grains.candidates import exact_candidates
    from stereograin.grains.cutouts import CUTOUT
    from stereograin.grains.training import _pattern_sizes, _real_onehot, _realisation

    rng = np.random.default_rng(1)
    sizes_g = _pattern_sizes(cfg.batch_g, cfg)
    sizes = sizes_g + _pattern_sizes(cfg.batch_d, cfg)
    n_g = len(sizes_g)
    reals: list = []

    def patterns() -> None:
        reals[:] = [_realisation(G, cfg, cfg.mu_1, m, rng) for m in sizes]

    def candidates() -> None:
        for i, re in enumerate(reals):
            k = cfg.candidates if i < n_g else 1
            exact_candidates(re.points.reshape(-1, 3), re.positions, re.M, re.r, k)

    onehot = torch.zeros(2 * cfg.batch_d, cfg.keep, CUTOUT, CUTOUT)
    onehot.scatter_(1, torch.randint(0, cfg.keep, (2 * cfg.batch_d, 1, CUTOUT, CUTOUT)), 1.0)
    soft = torch.rand(cfg.batch_g, cfg.keep, CUTOUT, CUTOUT, requires_grad=True)

    def discriminator() -> None:  # as train_step: the generator's backward pass also fills D's gradients
        D.eval()
        ((D(soft) - 1.0) ** 2).mean().backward()
        soft.grad = None
        D.train()
        D.zero_grad(set_to_none=True)
        out = D(onehot)
        ((out[: cfg.batch_d] - 1.0) ** 2).mean().add((out[cfg.batch_d :] ** 2).mean()).backward()
        D.zero_grad(set_to_none=True)

    def data_cutouts() -> None:
        _real_onehot(table, cfg, cfg.batch_d, rng)

    return {
        f"step_{name}_ms": 1e3 * best_of(fn, repeats)
        for name, fn in (("patterns", patterns), ("candidates", candidates), ("discriminator", discriminator),
                         ("data_cutouts", data_cutouts))
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="about 1e5 seeds instead of 1e6 (seconds)")
    args = ap.parse_args()
    figures: dict[str, object] = {**machine(), "load_avg_1min": os.getloadavg()[0]}
    # One function per figure group: fn(quick) -> dict of figures.
    benches: list[Callable[[bool], dict[str, float]]] = [bench_sampling, bench_training]
    for bench in benches:
        figures.update(bench(args.quick))
    print_figures(figures)


if __name__ == "__main__":
    main()
