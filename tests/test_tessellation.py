"""Tessellations: radial frames, exact labelling against brute force, soft map, cell geometry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import stereograin.tessellation as tess
from stereograin.errors import StereograinError
from stereograin.tessellation import (
    GBPD,
    cell_geometry,
    grid_points,
    nearest_candidates,
    plane_points,
    radial_frames,
    restricted_metrics,
    soft_map,
)


def random_gbpd(rng, n, d, box, D_range=(1.0, 50.0), r_range=(1.0, 10.0)):
    """A restricted GBPD with seeds uniform in ``[0, box]^d`` and frames about the box centre."""
    seeds = rng.uniform(0, box, (n, d))
    D = rng.uniform(*D_range, (n, d))
    r = rng.uniform(*r_range, n)
    gamma = rng.uniform(0, np.pi, n)
    return GBPD(seeds, restricted_metrics(seeds - box / 2, D, gamma), r)


def random_frame(rng):
    u = rng.normal(size=3)
    u /= np.linalg.norm(u)
    v = np.cross(u, rng.normal(size=3))
    return u, v / np.linalg.norm(v)


# --------------------------------------------------------------------------- frames


@pytest.mark.parametrize("d", [2, 3])
def test_radial_frames_rotate_seed_direction_to_e1(d):
    rng = np.random.default_rng(0)
    s = rng.normal(size=(200, d)) * 30
    Q = radial_frames(s, rng.uniform(0, np.pi, 200))
    np.testing.assert_allclose(Q[:, 0], s / np.linalg.norm(s, axis=1, keepdims=True), atol=1e-12)
    np.testing.assert_allclose(Q @ np.swapaxes(Q, 1, 2), np.broadcast_to(np.eye(d), Q.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(Q), 1.0, atol=1e-12)


def test_radial_frames_degenerate_seeds():
    s = np.array([[0.0, 0.0, 0.0], [-5.0, 0.0, 0.0], [-1e-12, 0.0, 0.0], [3.0, 0.0, 0.0]])
    Q = radial_frames(s, np.array([0.3, 0.7, 0.0, 1.0]))
    assert np.all(np.isfinite(Q))
    np.testing.assert_allclose(Q @ np.swapaxes(Q, 1, 2), np.broadcast_to(np.eye(3), Q.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(Q), 1.0, atol=1e-12)
    np.testing.assert_allclose(Q[1, 0], [-1.0, 0.0, 0.0], atol=1e-12)  # s = -|s| e1
    np.testing.assert_allclose(Q[3, 0], [1.0, 0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(radial_frames(np.zeros((1, 2))), np.eye(2)[None])


def test_restricted_metrics_symmetric_positive_definite():
    rng = np.random.default_rng(1)
    s = rng.normal(size=(100, 3)) * 20
    D = rng.uniform(0.1, 50, (100, 3))
    M = restricted_metrics(s, D, rng.uniform(0, np.pi, 100))
    np.testing.assert_allclose(M, np.swapaxes(M, 1, 2), atol=1e-12)
    ev = np.linalg.eigvalsh(M)
    np.testing.assert_allclose(np.sort(ev, axis=1), np.sort(D, axis=1), rtol=1e-10)
    # the radial direction gets D[:, 0]
    u = s / np.linalg.norm(s, axis=1, keepdims=True)
    np.testing.assert_allclose(np.einsum("ni,nij,nj->n", u, M, u), D[:, 0], rtol=1e-10)


# --------------------------------------------------------------------------- exact labels


@pytest.mark.parametrize("D_range", [(1.0, 50.0), (0.1, 50.0)], ids=["paper", "anisotropic"])
def test_label_grid_3d_equals_bruteforce(D_range):
    rng = np.random.default_rng(2)
    shape = (16, 32, 64)  # (Z, Y, X)
    g = random_gbpd(rng, 250, 3, 64.0, D_range)
    origin, spacing = np.array([-1.5, 2.0, 0.25]), 1.1
    lab = g.label_grid(shape, origin, spacing)
    assert lab.dtype == np.int32 and lab.shape == shape
    ref = g.label_points_bruteforce(grid_points(shape, origin, spacing)).reshape(shape)
    np.testing.assert_array_equal(lab, ref)


@pytest.mark.parametrize("D_range", [(1.0, 50.0), (0.1, 50.0)], ids=["paper", "anisotropic"])
def test_label_grid_2d_and_points_equal_bruteforce(D_range):
    rng = np.random.default_rng(3)
    g = random_gbpd(rng, 300, 2, 200.0, D_range)
    shape = (100, 180)
    lab = g.label_grid(shape, origin=(-3.0, 4.5), spacing=0.97)
    ref = g.label_points_bruteforce(grid_points(shape, (-3.0, 4.5), 0.97)).reshape(shape)
    np.testing.assert_array_equal(lab, ref)
    pts = rng.uniform(-20, 220, (6000, 2))
    out = g.label_points(pts)
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, g.label_points_bruteforce(pts))


@pytest.mark.parametrize("block", [1, 3, 4, 8])
def test_label_grid_mask_labels_only_masked_blocks(block):
    g = random_gbpd(np.random.default_rng(11), 250, 3, 60.0, (0.3, 8.0))
    shape = (23, 30, 37)  # not multiples of the blocks or of the engine's leaves
    full = g.label_grid(shape, origin=-3.0, spacing=1.7)
    rng = np.random.default_rng(block)
    mask = rng.random(tuple(-(-s // block) for s in shape)) < 0.35
    out = g.label_grid(shape, origin=-3.0, spacing=1.7, mask=mask, mask_block=block)
    voxels = mask.repeat(block, 0).repeat(block, 1).repeat(block, 2)[: shape[0], : shape[1], : shape[2]]
    np.testing.assert_array_equal(out[voxels], full[voxels])
    assert np.all(out[~voxels] == 0) and 0.2 < voxels.mean() < 0.5
    empty = g.label_grid(shape, mask=np.zeros_like(mask), mask_block=block)
    assert empty.shape == shape and not empty.any()


@pytest.mark.parametrize("block", [1, 3, 4, 8])
def test_label_grid_into_out_in_disjoint_parts_equals_the_whole(block):
    g = random_gbpd(np.random.default_rng(12), 250, 3, 60.0, (0.3, 8.0))
    shape = (23, 30, 37)
    whole = g.label_grid(shape, origin=-3.0, spacing=1.7)
    mask = np.random.default_rng(block).random(tuple(-(-s // block) for s in shape)) < 0.4
    voxels = mask.repeat(block, 0).repeat(block, 1).repeat(block, 2)[: shape[0], : shape[1], : shape[2]]
    out = np.full(shape, -7, np.int32)
    assert g.label_grid(shape, origin=-3.0, spacing=1.7, mask=mask, mask_block=block, out=out) is out
    np.testing.assert_array_equal(out[voxels], whole[voxels])
    assert np.all(out[~voxels] == -7)  # the rest of ``out`` is kept, not cleared
    g.label_grid(shape, origin=-3.0, spacing=1.7, mask=~mask, mask_block=block, out=out)
    np.testing.assert_array_equal(out, whole)
    again = np.full(shape, -7, np.int32)  # no mask: every voxel written
    np.testing.assert_array_equal(g.label_grid(shape, origin=-3.0, spacing=1.7, out=again), whole)


def test_label_grid_out_bad_input():
    g = random_gbpd(np.random.default_rng(1), 20, 3, 10.0, (0.5, 2.0))
    for bad in (np.zeros((10, 10, 10)), np.zeros((10, 10, 9), np.int32), np.zeros((10, 10, 20), np.int32)[:, :, ::2],
                np.zeros((10, 10, 10), np.int32).view(), [0] * 1000):
        if isinstance(bad, np.ndarray) and bad.dtype == np.int32 and bad.shape == (10, 10, 10) and bad.flags.c_contiguous:
            bad.flags.writeable = False
        with pytest.raises(StereograinError, match="out must be a writeable C-contiguous int32 array of shape"):
            g.label_grid((10, 10, 10), out=bad)


@pytest.mark.parametrize("n", [3, 12, 40])
def test_few_large_cells_fill_whole_blocks_exactly(n):
    # blocks with a single surviving cell are filled without descending; masks must still hold
    rng = np.random.default_rng(n)
    g = random_gbpd(rng, n, 3, 60.0, (0.3, 10.0))
    shape = (40, 50, 61)
    ref = g.label_points_bruteforce(grid_points(shape, -2.0, 1.1)).reshape(shape)
    np.testing.assert_array_equal(g.label_grid(shape, -2.0, 1.1), ref)
    mask = rng.random(tuple(-(-x // 4) for x in shape)) < 0.6
    out = g.label_grid(shape, -2.0, 1.1, mask=mask, mask_block=4)
    full = mask.repeat(4, 0).repeat(4, 1).repeat(4, 2)[: shape[0], : shape[1], : shape[2]]
    np.testing.assert_array_equal(out[full], ref[full])
    assert not out[~full].any()


@pytest.mark.parametrize("n", [4, 300])
def test_long_rows_split_into_slabs_equal_bruteforce(n, monkeypatch):
    # rows longer than one slab buffer: several slabs (one task wide) per row, the last one partial
    monkeypatch.setattr(tess, "_SLAB_SITES", 1)
    rng = np.random.default_rng(20 + n)
    g = random_gbpd(rng, n, 3, 210.0, (0.3, 20.0))
    shape = (9, 10, 203)
    ref = g.label_points_bruteforce(grid_points(shape, 0.5, 1.0)).reshape(shape)
    np.testing.assert_array_equal(g.label_grid(shape, 0.5, 1.0), ref)
    mask = rng.random(tuple(-(-x // 4) for x in shape)) < 0.5
    out = g.label_grid(shape, 0.5, 1.0, mask=mask, mask_block=4)
    full = mask.repeat(4, 0).repeat(4, 1).repeat(4, 2)[: shape[0], : shape[1], : shape[2]]
    np.testing.assert_array_equal(out[full], ref[full])
    assert not out[~full].any()


@pytest.mark.parametrize("bound", ["octant", "given"])
@pytest.mark.parametrize("seed", range(4))
def test_block_pruning_keeps_every_winner(seed, bound):
    # a list long enough for the octant bound (_OCTANT_MIN): every cell that wins at a site of
    # the block survives, and the list still shrinks; with a given U (the leaf hints' path, here
    # the true max of min_i f_i) it shrinks further
    rng = np.random.default_rng(seed)
    n = max(400, tess._OCTANT_MIN)
    g = random_gbpd(rng, n, 3, 60.0, (0.2, 30.0) if seed % 2 else (1.0, 50.0))
    c = np.array([30.0, 28.0, 31.0])
    h = np.array([7.5, 7.5, 7.5])
    A = np.eye(3)
    S, Mu = g.seeds, g.metrics.reshape(n, 9)[:, [0, 1, 2, 4, 5, 8]]
    signs = np.array([[a, b, e] for a in (-1, 1) for b in (-1, 1) for e in (-1, 1)], float) * h
    R = np.sqrt(np.einsum("vi,nij,vj->nv", signs, g.metrics, signs).max(axis=1)) * (1 + 1e-12)
    pts = c + rng.uniform(-1, 1, (4000, 3)) * h
    pts = np.concatenate([pts, c + signs])  # the corners too
    winners = np.unique(g.label_points_bruteforce(pts) - 1)

    def kept(uh):
        soa = np.zeros((1, tess._NF, n + 16))
        soa[0, 0:3, :n] = S.T
        soa[0, 3:9, :n] = Mu.T
        soa[0, 9, :n] = g.offsets
        soa[0, 10, :n] = R
        qc, lin, sl, hi = (np.zeros(n + 16) for _ in range(4))
        keep = np.zeros(n, np.int64)
        m = tess._block_keep(soa, 0, n, *c, *h, A, qc, lin, sl, hi, keep, uh, True)
        return set(keep[:m].tolist())

    plain = kept(np.inf)
    assert set(winners) <= plain and len(plain) < n
    if bound == "given":
        fewer = kept(g.distances(pts).min(axis=1).max())
        assert set(winners) <= fewer and len(fewer) < len(plain)


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("case", ["inside", "beyond", "sparse"])
def test_leaf_hints_bound_every_leaf_and_pool_by_their_max(case, masked):
    # every leaf's hint is at least min_i f_i at each of its sites; masked-out leaves get -inf;
    # each level of the pyramid is the max over the blocks it holds. "beyond": a third of the
    # grid lies beyond the seeds, whose leaves have no seed in their 27 bins and take a
    # neighbour's hint; "sparse": a tenth of a seed per leaf, no hints at all
    rng = np.random.default_rng(21)
    g = random_gbpd(rng, 40 if case == "sparse" else 400, 3, 40.0, (1.0, 50.0))
    shape = (18, 21, 23)  # (Z, Y, X): leaves of 4 cut at the edges
    origin, spacing = np.array([-2.0, 1.0, 0.5 + 20.0 * (case == "beyond")]), 1.9
    S, Mu, r = tess._padded(g)
    A = np.eye(3) * spacing
    leaf = tess._LEAF_3D
    sxy, _ = tess._level_sizes(shape, leaf, False)
    H = np.stack([0.5 * (sxy - 1)] * 3, axis=1)
    Rtab, Gl = np.empty((len(H), g.n)), np.empty((g.n, 6))
    tess._tables(Mu, A, H, Rtab, Gl, 0, g.n)
    nl = tuple(-(-s // leaf) for s in shape)
    lmask = rng.random(nl) < 0.6 if masked else np.ones(nl, bool)
    vals, off, dims = tess._hint_pyramid(S, Mu, r, origin, A, shape, sxy, float(H[-1, 0]), Rtab[-1], Gl, lmask if masked else None)
    if case == "sparse":
        assert vals.size == 0 and len(off) == len(sxy) + 1
        return
    best = g.distances(grid_points(shape, origin, spacing)).min(axis=1).reshape(shape)
    pad = np.full(tuple(v * leaf for v in nl), -np.inf)
    pad[: shape[0], : shape[1], : shape[2]] = best
    true = pad.reshape(nl[0], leaf, nl[1], leaf, nl[2], leaf).max(axis=(1, 3, 5))
    hints = vals[off[-2]:off[-1]].reshape(dims[-1])
    assert np.all(hints[~lmask] == -np.inf)
    assert np.all(hints[lmask] >= true[lmask]) and np.all(np.isfinite(hints[lmask]))
    assert np.median(hints[lmask] - true[lmask]) < np.median(true[lmask])  # and tight enough to help
    for lv in range(len(sxy) - 1):
        fine = vals[off[lv + 1]:off[lv + 2]].reshape(dims[lv + 1])
        coarse = vals[off[lv]:off[lv + 1]].reshape(dims[lv])
        p = np.full(tuple(2 * v for v in coarse.shape), -np.inf)
        p[: fine.shape[0], : fine.shape[1], : fine.shape[2]] = fine
        np.testing.assert_array_equal(coarse, p.reshape(coarse.shape[0], 2, coarse.shape[1], 2, coarse.shape[2], 2).max(axis=(1, 3, 5)))


def test_fill_hints_carries_bounds_across_empty_leaves():
    # a leaf without a hint gets a neighbour's plus the step's length, along the shortest path of
    # steps; masked-out leaves (-inf) stay so and pass nothing on
    h = np.full((5, 6, 7), np.inf)
    h[4, 5, 6] = 1.0  # the far corner: the sweeps must carry it back across the whole grid
    h[2, :, :] = -np.inf
    h[2, 3, 3] = np.inf  # the only way through the masked plane
    step = np.array([0.5, 2.0, 3.0])  # x y z
    tess._fill_hints(h, step)
    k, j, i = np.indices(h.shape)
    above = k > 2
    np.testing.assert_allclose(h[above], 1.0 + (4 - k[above]) * 3.0 + (5 - j[above]) * 2.0 + (6 - i[above]) * 0.5)
    through = h[3, 3, 3] + 3.0
    assert h[2, 3, 3] == through and np.all(h[2][np.arange(6)[:, None] * 7 + np.arange(7) != 3 * 7 + 3] == -np.inf)
    below = k < 2
    np.testing.assert_allclose(h[below], through + (2 - k[below]) * 3.0 + np.abs(j[below] - 3) * 2.0 + np.abs(i[below] - 3) * 0.5)


@pytest.mark.parametrize("hints", [True, False])
def test_particle_like_region_equals_bruteforce(hints, monkeypatch):
    # a dense, mildly anisotropic diagram like a particle's (radial markers, ~5 grid steps per
    # cell) on a ball-shaped mask whose edge lies inside the seeds, labelled with and without
    # the leaf hints: the labels are exact either way
    monkeypatch.setattr(tess, "_HINTS", hints)
    rng = np.random.default_rng(22)
    n = 2500
    seeds = rng.uniform(-45.0, 45.0, (n, 3))
    D = np.stack([rng.uniform(10.0, 14.0, n), rng.uniform(40.0, 50.0, n), rng.uniform(40.0, 50.0, n)], axis=1)
    g = GBPD(seeds, restricted_metrics(seeds, D, rng.uniform(0, np.pi, n)), rng.uniform(4.5, 6.0, n))
    shape, spacing, origin = (37, 38, 39), 2.0, np.array([-38.0, -37.0, -36.0])
    nb = tuple(-(-s // 4) for s in shape)
    centres = np.stack(np.meshgrid(*[origin[a] + spacing * (4 * np.arange(nb[2 - a]) + 1.5) for a in (2, 1, 0)], indexing="ij"), -1)
    mask = np.linalg.norm(centres[..., ::-1], axis=-1) < 30.0
    lab = g.label_grid(shape, origin, spacing, mask=mask, mask_block=4)
    voxels = mask.repeat(4, 0).repeat(4, 1).repeat(4, 2)[: shape[0], : shape[1], : shape[2]]
    ref = g.label_points_bruteforce(grid_points(shape, origin, spacing)[voxels.ravel()])
    np.testing.assert_array_equal(lab[voxels], ref)
    assert np.all(lab[~voxels] == 0) and len(np.unique(ref)) > 400


def test_label_grid_mask_bad_input():
    g = random_gbpd(np.random.default_rng(1), 20, 3, 10.0, (0.5, 2.0))
    for kw, msg in (
        ({"mask": np.ones((2, 3, 3), bool), "mask_block": 4}, "must have shape"),
        ({"mask": np.ones((3, 3, 3)), "mask_block": 4}, "boolean array"),
        ({"mask": np.ones((3, 3, 3), bool), "mask_block": 0}, "positive integer"),
    ):
        with pytest.raises(StereograinError, match=msg):
            g.label_grid((10, 10, 10), **kw)
    g2 = random_gbpd(np.random.default_rng(1), 20, 2, 10.0, (0.5, 2.0))
    with pytest.raises(StereograinError, match="needs a 3D grid"):
        g2.label_grid((10, 10), mask=np.ones((10, 10), bool))


def test_label_plane_and_points_3d_equal_bruteforce():
    rng = np.random.default_rng(4)
    g = random_gbpd(rng, 250, 3, 60.0, (0.1, 50.0))
    for _ in range(2):
        u, v = random_frame(rng)
        origin = np.full(3, 30.0) - 40 * u - 35 * v + rng.normal(size=3)
        lab = g.label_plane(origin, u, v, (75, 90), spacing=0.9)
        assert lab.shape == (75, 90) and lab.dtype == np.int32
        ref = g.label_points_bruteforce(plane_points(origin, u, v, (75, 90), 0.9)).reshape(75, 90)
        np.testing.assert_array_equal(lab, ref)
    for pts in (rng.uniform(-10, 70, (8000, 3)), rng.normal(30, 3, (2000, 3)), np.full((5, 3), 7.0)):
        np.testing.assert_array_equal(g.label_points(pts), g.label_points_bruteforce(pts))


@pytest.mark.parametrize("screen", [True, False], ids=["float32-screen", "float64"])
def test_float32_screen_and_float64_leaves_agree(screen, monkeypatch):
    # the float32 leaf screen (with its float64 near-tie fallback) and the all-float64 leaf path
    monkeypatch.setattr(tess, "_F32_SCREEN", screen)
    rng = np.random.default_rng(11)
    g = random_gbpd(rng, 200, 3, 40.0, (0.01, 50.0))  # condition numbers up to 5000
    shape = (20, 24, 40)
    lab = g.label_grid(shape, origin=(0.3, -0.2, 0.1), spacing=1.05)
    np.testing.assert_array_equal(lab.ravel(), g.label_points_bruteforce(grid_points(shape, (0.3, -0.2, 0.1), 1.05)))
    u, v = random_frame(rng)
    origin = np.full(3, 20.0) - 25 * u - 25 * v
    sec = g.label_plane(origin, u, v, (50, 60), spacing=0.85)
    np.testing.assert_array_equal(sec.ravel(), g.label_points_bruteforce(plane_points(origin, u, v, (50, 60), 0.85)))
    g2 = random_gbpd(rng, 150, 2, 100.0, (0.01, 50.0))
    lab2 = g2.label_grid((70, 90), origin=(1.0, -2.0), spacing=1.1)
    np.testing.assert_array_equal(lab2.ravel(), g2.label_points_bruteforce(grid_points((70, 90), (1.0, -2.0), 1.1)))


def test_many_cells_equal_bruteforce():
    # > 4096 cells: the per-cell tables are built on several threads
    rng = np.random.default_rng(14)
    g = random_gbpd(rng, 5000, 3, 60.0, (0.05, 50.0))
    shape = (12, 16, 20)
    origin = np.array([20.0, 18.0, 25.0])
    lab = g.label_grid(shape, origin, 0.9)
    np.testing.assert_array_equal(lab.ravel(), g.label_points_bruteforce(grid_points(shape, origin, 0.9)))


def test_near_ties_below_float32_resolution_are_exact():
    # every cell twice, the copy's offset larger by 1e-9 (or its seed moved by 1e-7): the float32
    # values of a pair agree, so every site is a near tie that only the float64 fallback decides
    rng = np.random.default_rng(12)
    g = random_gbpd(rng, 40, 3, 20.0, (0.05, 50.0))
    seeds = np.concatenate([g.seeds, g.seeds + rng.choice([0.0, 1e-7], (40, 1)) * rng.normal(size=(40, 3))])
    r = np.concatenate([g.offsets, g.offsets + rng.choice([0.0, 1e-9, -1e-9], 40)])
    dup = GBPD(seeds, np.concatenate([g.metrics, g.metrics]), r)
    shape = (20, 20, 20)
    lab = dup.label_grid(shape)
    ref = dup.label_points_bruteforce(grid_points(shape)).reshape(shape)
    np.testing.assert_array_equal(lab, ref)
    assert np.any(lab > 40) and np.any(lab <= 40)  # both copies win somewhere
    u, v = random_frame(rng)
    origin = np.full(3, 10.0) - 12 * u - 12 * v
    sec = dup.label_plane(origin, u, v, (40, 40), spacing=0.6)
    np.testing.assert_array_equal(sec.ravel(), dup.label_points_bruteforce(plane_points(origin, u, v, (40, 40), 0.6)))


@pytest.mark.parametrize("scale", [1e5, 1e17], ids=["far", "float32-overflow"])
def test_large_coordinates(scale):
    # far from the origin float32 keeps few digits of q (wide error bounds, more float64 sites);
    # at 1e17 the float32 terms could overflow and the leaves are evaluated in float64
    rng = np.random.default_rng(13)
    spacing = 1.0 if scale < 1e10 else scale / 1e3  # 1e17: |x - s|_M^2 up to ~1e32, beyond the float32 limit 1e30
    g = random_gbpd(rng, 80, 3, 16.0 * spacing, (0.1, 50.0))
    g = GBPD(g.seeds + scale, g.metrics, g.offsets * spacing)
    shape = (12, 16, 16)
    origin = np.full(3, scale)
    lab = g.label_grid(shape, origin, spacing)
    np.testing.assert_array_equal(lab.ravel(), g.label_points_bruteforce(grid_points(shape, origin, spacing)))


def test_ties_go_to_the_lowest_index():
    # duplicated cells: identical values everywhere, the first copy must win
    rng = np.random.default_rng(5)
    g = random_gbpd(rng, 60, 3, 24.0)
    perm = rng.permutation(120) % 60  # every cell twice, in shuffled positions
    dup = GBPD(g.seeds[perm], g.metrics[perm], g.offsets[perm])
    first = np.array([np.flatnonzero(perm == c)[0] for c in range(60)])
    lab = dup.label_grid((24, 24, 24))
    ref = dup.label_points_bruteforce(grid_points((24, 24, 24))).reshape(lab.shape)
    np.testing.assert_array_equal(lab, ref)
    assert set(np.unique(lab - 1)) <= set(first)
    # exact Voronoi ties on grid points: integer seeds, identity metrics
    seeds = np.array([[2.0, 5.0], [8.0, 5.0], [5.0, 2.0], [5.0, 8.0], [5.0, 5.0]])
    vor = GBPD(seeds, np.tile(np.eye(2), (5, 1, 1)), np.zeros(5))
    lab2 = vor.label_grid((11, 11))
    np.testing.assert_array_equal(lab2.ravel(), vor.label_points_bruteforce(grid_points((11, 11))))
    assert lab2[2, 2] == 1 and lab2[8, 8] == 2  # (2, 2): cells 0 and 2 tie; (8, 8): cells 1 and 3 tie
    np.testing.assert_array_equal(vor.label_points(grid_points((11, 11))), lab2.ravel())


def test_labels_do_not_depend_on_the_order_of_the_cells():
    # the engine renumbers the cells in z-order of their seeds (speed only): any input order
    # gives the same partition, numbered as the input, on grids, planes and points
    rng = np.random.default_rng(11)
    g = random_gbpd(rng, 300, 3, 30.0, D_range=(0.5, 4.0), r_range=(0.0, 2.0))
    S, o, A = g.seeds, np.zeros(3), np.eye(3)
    perm = tess._spatial_order(S, o, A, 4)  # leaves of 4 sites: bins of 8
    assert sorted(perm.tolist()) == list(range(300))
    key = tess._morton_keys(S[perm], o, A, 8.0)
    assert np.all(np.diff(key) >= 0)
    assert tess._spatial_order(S[perm], o, A, 4) is None  # already in order: no gathers
    h, p = g.in_grid_order(origin=0.0, spacing=1.0)
    np.testing.assert_array_equal(p, perm)
    np.testing.assert_array_equal(h.seeds, g.seeds[perm])
    h2, p2 = h.in_grid_order(origin=0.0, spacing=1.0)
    assert h2 is h and np.array_equal(p2, np.arange(300))
    for order in (perm, rng.permutation(300)):
        h = GBPD(g.seeds[order], g.metrics[order], g.offsets[order])
        lab, lab_h = g.label_grid((30, 30, 30)), h.label_grid((30, 30, 30))
        np.testing.assert_array_equal(order[lab_h - 1], lab - 1)
        pts = rng.uniform(0, 30, (500, 3))
        np.testing.assert_array_equal(order[h.label_points(pts) - 1], g.label_points(pts) - 1)
        plane = ((0.0, 0.0, 15.3), (1.0, 0.0, 0.0), (0.0, 0.6, 0.8), (24, 24))
        np.testing.assert_array_equal(order[h.label_plane(*plane) - 1], g.label_plane(*plane) - 1)


def test_single_cell_and_tiny_grids():
    g = GBPD(np.array([[1.0, 2.0, 3.0]]), np.eye(3)[None] * 4.0, np.array([1.0]))
    assert np.all(g.label_grid((1, 1, 1)) == 1)
    assert np.all(g.label_grid((3, 1, 7)) == 1)
    g2 = random_gbpd(np.random.default_rng(6), 5, 2, 3.0)
    np.testing.assert_array_equal(g2.label_grid((1, 9)).ravel(), g2.label_points_bruteforce(grid_points((1, 9))))


@pytest.mark.parametrize(
    "call",
    [
        lambda g: g.label_grid((10, 10)),  # 2D shape for a 3D diagram
        lambda g: g.label_grid((10, 0, 10)),
        lambda g: g.label_grid((100000, 100000, 100000)),
        lambda g: g.label_grid((4, 4, 4), spacing=0.0),
        lambda g: g.label_grid((4, 4, 4), origin=(0.0, np.nan, 0.0)),
        lambda g: g.label_points(np.zeros((5, 2))),
        lambda g: g.label_points(np.full((5, 3), np.nan)),
        lambda g: g.label_plane(np.zeros(3), np.zeros(3), np.array([0.0, 1.0, 0.0]), (4, 4)),
        lambda g: g.label_plane(np.zeros(3), np.eye(3)[0], np.eye(3)[1], (4, 4, 4)),
    ],
)
def test_bad_labelling_input_raises_one_line_error(call):
    g = random_gbpd(np.random.default_rng(7), 10, 3, 10.0)
    with pytest.raises(StereograinError) as err:
        call(g)
    assert "\n" not in str(err.value)


def test_non_positive_definite_metrics_are_rejected():
    M = np.tile(np.eye(3), (3, 1, 1))
    M[1, 2, 2] = -1.0
    g = GBPD(np.zeros((3, 3)), M, np.zeros(3))
    with pytest.raises(StereograinError, match="cell 1 is not positive definite"):
        g.label_grid((4, 4, 4))
    M = np.tile(np.eye(2), (2, 1, 1))
    M[0, 0, 1] = 0.5
    with pytest.raises(StereograinError, match="symmetric"):
        GBPD(np.zeros((2, 2)), M, np.zeros(2)).label_points(np.zeros((1, 2)))
    with pytest.raises(StereograinError):
        GBPD(np.zeros((2, 2)), np.full((2, 2, 2), np.nan), np.zeros(2))


# --------------------------------------------------------------------------- soft map


def _torch_case(rng, B, P, n, d, dtype=torch.float64, requires_grad=True):
    x = torch.tensor(rng.uniform(0, 10, (B, P, d)), dtype=dtype)
    s = torch.tensor(rng.uniform(0, 10, (B, n, d)), dtype=dtype)
    A = torch.tensor(rng.normal(size=(B, n, d, d)), dtype=dtype)
    M = A @ A.transpose(-1, -2) + torch.eye(d, dtype=dtype)
    r = torch.tensor(rng.uniform(0, 2, (B, n)), dtype=dtype)
    for t in (s, M, r):
        t.requires_grad_(requires_grad)
    return x, s, M, r


@pytest.mark.parametrize("kernel", [True, False], ids=["numba", "torch"])
@pytest.mark.parametrize("d", [2, 3])
def test_soft_map_gradcheck(kernel, d, monkeypatch):
    monkeypatch.setattr(tess, "_SOFT_MAP_KERNEL", kernel)
    rng = np.random.default_rng(8)
    x, s, M0, r = _torch_case(rng, 2, 4, 5, d)
    M0 = M0.detach().requires_grad_(True)
    idx = nearest_candidates(x, s, 3)

    def f(s_, M_, r_):
        Ms = 0.5 * (M_ + M_.transpose(-1, -2))  # perturbations stay symmetric
        return soft_map(x, s_, Ms, r_, temperature=0.7, candidates=idx)

    assert torch.autograd.gradcheck(f, (s, M0, r), eps=1e-6, atol=1e-6)
    assert torch.autograd.gradcheck(lambda s_, r_: soft_map(x, s_, M0.detach(), r_, 0.7), (s, r), eps=1e-6, atol=1e-6)


def test_soft_map_kernel_matches_torch_path(monkeypatch):
    rng = np.random.default_rng(9)
    x, s, M, r = _torch_case(rng, 3, 50, 20, 3)
    x.requires_grad_(True)
    idx = nearest_candidates(x, s, 6)
    outs = []
    for kernel in (True, False):
        monkeypatch.setattr(tess, "_SOFT_MAP_KERNEL", kernel)
        for t in (x, s, M, r):
            t.grad = None
        y = soft_map(x, s, M, r, 1.3, idx)
        (y * torch.linspace(0, 1, y.numel(), dtype=y.dtype).reshape(y.shape)).sum().backward()
        outs.append([y.detach()] + [t.grad.clone() for t in (x, s, M, r)])
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    # dense path equals the candidates path when every cell is a candidate
    full = soft_map(x, s, M, r, 1.3)
    allc = torch.arange(20).expand(3, 50, 20)
    torch.testing.assert_close(full, soft_map(x, s, M, r, 1.3, allc), rtol=1e-9, atol=1e-12)


def test_soft_map_float32_batched_and_broadcast():
    rng = np.random.default_rng(10)
    x, s, M, r = _torch_case(rng, 4, 64, 30, 3, dtype=torch.float32)
    idx = nearest_candidates(x, s, 8)
    assert idx.shape == (4, 64, 8) and idx.dtype == torch.long
    y = soft_map(x, s, M, r, 1.0, idx)
    assert y.dtype == torch.float32 and y.shape == (4, 64, 8)
    torch.testing.assert_close(y.sum(-1), torch.ones(4, 64))
    y.sum().backward()
    assert s.grad.shape == s.shape and M.grad.shape == M.shape and r.grad.shape == r.shape
    # one seed set shared by a batch of point sets
    y2 = soft_map(x, s[0].detach(), M[0].detach(), r[0].detach(), 1.0, nearest_candidates(x, s[0], 8))
    assert y2.shape == (4, 64, 8)
    y3 = soft_map(x[1], s[0].detach(), M[0].detach(), r[0].detach(), 1.0, nearest_candidates(x[1], s[0], 8))
    torch.testing.assert_close(y2[1], y3)


def test_soft_argmax_equals_exact_labels_away_from_boundaries():
    rng = np.random.default_rng(11)
    g = random_gbpd(rng, 150, 3, 40.0)
    pts = rng.uniform(0, 40, (4000, 3))
    dist = g.distances(pts)
    two = np.sort(dist, axis=1)[:, :2]
    clear = two[:, 1] - two[:, 0] > 0.5
    exact = g.label_points(pts) - 1
    t = lambda a: torch.tensor(a)  # noqa: E731
    dense = soft_map(t(pts), t(g.seeds), t(g.metrics), t(g.offsets), temperature=0.05)
    np.testing.assert_array_equal(dense.argmax(-1).numpy()[clear], exact[clear])
    idx = nearest_candidates(pts, g.seeds, 24)
    cand = soft_map(t(pts), t(g.seeds), t(g.metrics), t(g.offsets), 0.05, idx)
    pick = torch.gather(idx, -1, cand.argmax(-1, keepdim=True))[:, 0].numpy()
    covered = (idx.numpy() == exact[:, None]).any(axis=1)
    assert covered.mean() > 0.99
    np.testing.assert_array_equal(pick[clear & covered], exact[clear & covered])


def test_soft_map_bad_input():
    x = torch.zeros(4, 3)
    s = torch.zeros(2, 3)
    M = torch.eye(3).expand(2, 3, 3)
    r = torch.zeros(2)
    for kwargs in (dict(temperature=0.0), dict(temperature=float("nan"))):
        with pytest.raises(StereograinError):
            soft_map(x, s, M, r, **kwargs)
    with pytest.raises(StereograinError):
        soft_map(x, s[:, :2], M, r)
    with pytest.raises(StereograinError):
        soft_map(x, s, M, r, candidates=torch.zeros(4, 2, dtype=torch.int32))
    with pytest.raises(StereograinError):
        soft_map(x, s, M, r, candidates=torch.full((4, 2), 5, dtype=torch.long))
    with pytest.raises(StereograinError):
        nearest_candidates(x, s, 3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_soft_map_on_cuda():
    rng = np.random.default_rng(12)
    x, s, M, r = (t.detach().cuda().requires_grad_(t.requires_grad) for t in _torch_case(rng, 2, 100, 40, 3, torch.float32))
    idx = nearest_candidates(x, s, 8)
    assert idx.device.type == "cuda"
    y = soft_map(x, s, M, r, 1.0, idx)
    y.sum().backward()
    ref = soft_map(x.cpu(), s.detach().cpu(), M.detach().cpu(), r.detach().cpu(), 1.0, idx.cpu())
    torch.testing.assert_close(y.cpu(), ref, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- cell geometry


def test_cell_geometry_of_ellipses():
    H, W = 120, 160
    jj, ii = np.mgrid[:H, :W].astype(float)
    lab = np.zeros((H, W), np.int32)
    cells = [((40.0, 50.0), (25.0, 10.0), 0.4), ((110.0, 70.0), (15.0, 12.0), -1.1)]
    for k, ((cx, cy), (a, b), th) in enumerate(cells):
        u = (ii - cx) * np.cos(th) + (jj - cy) * np.sin(th)
        v = -(ii - cx) * np.sin(th) + (jj - cy) * np.cos(th)
        lab[(u / a) ** 2 + (v / b) ** 2 <= 1] = k + 1
    geo = cell_geometry(lab, n=3, spacing=2.0)
    for k, ((cx, cy), (a, b), th) in enumerate(cells):
        np.testing.assert_allclose(geo.centroid[k], 2.0 * np.array([cx, cy]), atol=0.1)
        np.testing.assert_allclose(geo.size[k], 4.0 * np.pi * a * b, rtol=0.02)
        assert abs(abs(geo.axes[k, 0] @ [np.cos(th), np.sin(th)]) - 1) < 1e-3
        np.testing.assert_allclose(geo.eigenvalues[k], 4.0 * np.array([a, b]) ** 2 / 4, rtol=0.03)
    assert geo.size[2] == 0 and np.all(np.isnan(geo.centroid[2]))


def test_cell_geometry_of_an_ellipsoid():
    z, y, x = np.mgrid[:40, :50, :60].astype(float)
    R = np.linalg.qr(np.random.default_rng(13).normal(size=(3, 3)))[0]
    P = np.stack([x - 30, y - 24, z - 20], -1) @ R.T  # rows of R: the ellipsoid axes
    lab = ((P[..., 0] / 18) ** 2 + (P[..., 1] / 10) ** 2 + (P[..., 2] / 6) ** 2 <= 1).astype(np.int64)
    geo = cell_geometry(lab)
    np.testing.assert_allclose(geo.centroid[0], [30, 24, 20], atol=0.05)
    np.testing.assert_allclose(geo.size[0], 4 / 3 * np.pi * 18 * 10 * 6, rtol=0.01)
    np.testing.assert_allclose(geo.eigenvalues[0] / geo.eigenvalues[0, 0], np.array([18, 10, 6]) ** 2 / 18**2, rtol=0.03)
    for k in range(3):
        assert abs(abs(geo.axes[0, k] @ R[k]) - 1) < 2e-3
    with pytest.raises(StereograinError):
        cell_geometry(np.zeros(5, np.int32))
    with pytest.raises(StereograinError):
        cell_geometry(np.full((3, 3), -1))
    with pytest.raises(StereograinError):
        cell_geometry(np.ones((3, 3)), n=0)


def test_cell_geometry_of_an_exact_labelling():
    g = random_gbpd(np.random.default_rng(14), 50, 3, 30.0)
    lab = g.label_grid((30, 30, 30))
    geo = cell_geometry(lab, n=g.n)
    assert geo.size.sum() == 30**3
    present = geo.size > 0
    inside = np.all((geo.centroid[present] >= 0) & (geo.centroid[present] <= 29), axis=1)
    assert inside.all()
    assert np.all(np.diff(geo.eigenvalues[present], axis=1) <= 1e-9)
