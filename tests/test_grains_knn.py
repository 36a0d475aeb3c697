"""Tests of the exact grid k-NN (stereograin.grains.knn) and the fast generator paths built on it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from stereograin.errors import StereograinError
from stereograin.grains.generator import MarkerNet, neighbour_features, sample_markers
from stereograin.grains.knn import cell_grid, knn
from stereograin.grains.seeds import MU_1, Seeds, poisson_seeds
from stereograin.tessellation import radial_frames


def brute_knn(p: np.ndarray, k: int) -> np.ndarray:
    """All pairs: ``lexsort((j, d2))`` over ``j != i``, d2 summed as ``ex^2 + ey^2 + ez^2``."""
    p = np.asarray(p, dtype=np.float64)
    n = len(p)
    ex = p[None, :, 0] - p[:, None, 0]
    ey = p[None, :, 1] - p[:, None, 1]
    ez = p[None, :, 2] - p[:, None, 2]
    d2 = ex * ex + ey * ey + ez * ez
    j = np.arange(n)
    out = np.empty((n, k), np.int64)
    for i in range(n):
        keep = j != i
        out[i] = j[keep][np.lexsort((j[keep], d2[i, keep]))[:k]]
    return out


def ckdtree_features(s: np.ndarray, noise: np.ndarray, gamma: np.ndarray, kappa: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """The previous implementation (cKDTree + radial_frames + einsum), the reference of the kernel."""
    n = len(s)
    _, idx = cKDTree(s).query(s, k=kappa + 1)
    is_self = idx == np.arange(n)[:, None]
    is_self[~is_self.any(axis=1), -1] = True
    idx = idx[~is_self].reshape(n, kappa)
    Q = radial_frames(s, gamma)
    v = np.einsum("nab,nkb->nka", Q, s[idx] - s[:, None, :])
    return np.concatenate([v, noise[idx]], axis=2).reshape(n, 5 * kappa), Q


def _point_sets(rng: np.random.Generator):
    """(name, points): uniform, clustered, duplicated, flat, outliers, lattice."""
    yield "uniform", rng.random((300, 3)) * 100
    yield "ball", poisson_seeds(25.0, MU_1, rng).positions
    yield "clusters", np.concatenate([rng.normal(0, 0.05, (150, 3)), rng.normal(40, 2.0, (100, 3)), rng.random((10, 3)) * 400])
    yield "duplicates", np.round(rng.random((200, 3)) * 3)  # 64 sites, ~3 copies each: ties everywhere
    yield "all_equal", np.ones((20, 3))
    yield "flat", np.c_[rng.random((150, 2)) * 50, np.zeros(150)]
    yield "line", np.c_[rng.random(80) * 1e3, np.zeros((80, 2))]
    yield "outliers", np.concatenate([rng.random((100, 3)), [[1e3, 0, 0], [-500, 200, 1], [0, 0, 1e4]]])
    g = np.arange(5.0)
    yield "lattice", np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
    yield "far_offset", rng.random((120, 3)) + 1e6


@pytest.mark.parametrize("k", [1, 5, 12])
def test_knn_equals_brute_force(k: int) -> None:
    rng = np.random.default_rng(k)
    for name, p in _point_sets(rng):
        if len(p) <= k:
            continue
        np.testing.assert_array_equal(knn(p, k), brute_knn(p, k), err_msg=name)


def test_knn_does_not_depend_on_grid_occupancy_or_dtype() -> None:
    rng = np.random.default_rng(3)
    p = np.concatenate([rng.random((400, 3)) * 30, rng.normal(5, 0.2, (100, 3))])
    ref = brute_knn(p, 12)
    for ppc in (0.3, 1.0, 2.0, 7.0, 50.0, 1e4):
        np.testing.assert_array_equal(knn(p, 12, points_per_cell=ppc), ref, err_msg=str(ppc))
    np.testing.assert_array_equal(knn(p.astype(np.float32), 12), brute_knn(p.astype(np.float32), 12))
    np.testing.assert_array_equal(knn(np.asfortranarray(p), 12), ref)


def test_knn_large_set_matches_ckdtree_for_any_thread_count() -> None:
    """Many batches and cells (ball and box faces, the general fallback): equal to cKDTree (no ties)."""
    s = poisson_seeds(np.array([[-60.0, 60.0], [-60.0, 60.0], [-20.0, 20.0]]), MU_1 * 8, 4).positions
    _, ref = cKDTree(s).query(s, k=13)
    assert np.all(ref[:, 0] == np.arange(len(s)))
    for workers in (1, 3):
        np.testing.assert_array_equal(knn(s, 12, workers=workers), ref[:, 1:])
    b = poisson_seeds(60.0, MU_1, 5).positions
    _, ref = cKDTree(b).query(b, k=9)
    np.testing.assert_array_equal(knn(b, 8, points_per_cell=1.0), ref[:, 1:])


def test_knn_ties_lower_index_first_and_self_excluded_by_index() -> None:
    p = np.zeros((6, 3))
    p[3:] = 1.0  # two sites, three copies each
    out = knn(p, 4)
    np.testing.assert_array_equal(out[0], [1, 2, 3, 4])  # duplicates of 0 first (distance 0), then by index
    np.testing.assert_array_equal(out[4], [3, 5, 0, 1])
    assert not np.any(out == np.arange(6)[:, None])


def test_knn_tiny_sets() -> None:
    rng = np.random.default_rng(0)
    for k in (1, 2, 12):
        p = rng.random((k + 1, 3))
        out = knn(p, k)  # every other point, sorted
        np.testing.assert_array_equal(out, brute_knn(p, k))
        assert all(set(out[i]) == set(range(k + 1)) - {i} for i in range(k + 1))
    np.testing.assert_array_equal(knn(np.array([[0.0, 0, 0], [1, 0, 0], [3, 0, 0]]), 2), [[1, 2], [0, 2], [1, 0]])


def test_knn_bad_input() -> None:
    p = np.random.default_rng(0).random((20, 3))
    for bad, match in (
        (lambda: knn(np.zeros((2, 3)), 2), "more than k"),
        (lambda: knn(np.zeros((3, 3)), 3), "more than k"),
        (lambda: knn(np.zeros((3, 2)), 1), "shape"),
        (lambda: knn(np.zeros(9), 1), "shape"),
        (lambda: knn(p, 0), "at least 1"),
        (lambda: knn(np.where(np.arange(60).reshape(20, 3) == 7, np.nan, p), 3), "NaN"),
        (lambda: knn(np.where(np.arange(60).reshape(20, 3) == 7, np.inf, p), 3), "NaN or infinite"),
        (lambda: knn(p.astype(complex), 3), "real"),
        (lambda: knn(p, 3, points_per_cell=0.0), "points_per_cell"),
        (lambda: knn(p, 3, workers=0), "workers"),
    ):
        with pytest.raises(StereograinError, match=match):
            bad()


def test_cell_grid_sorts_points_by_cell() -> None:
    rng = np.random.default_rng(1)
    p = rng.random((500, 3)) * [10, 20, 5]
    g = cell_grid(p, 2.0)
    assert len(g) == 500 and g.start[-1] == 500 and np.all(np.diff(g.start) >= 0)
    np.testing.assert_array_equal(np.sort(g.order), np.arange(500))
    np.testing.assert_array_equal(g.points, p[g.order])
    assert np.all(np.diff(g.cell) >= 0)
    for c in np.unique(g.cell):  # increasing original index within a cell
        assert np.all(np.diff(g.order[g.start[c] : g.start[c + 1]]) > 0)
    assert 500 / 2.0 / 3 < np.prod(g.dims) < 500 / 2.0 * 3


# ----------------------------------------------------------------------------- features


def test_features_equal_ckdtree_reference() -> None:
    for seed, R in ((0, 20.0), (1, 40.0)):
        s = poisson_seeds(R, MU_1 if R > 30 else 0.01, seed)
        f, Q = neighbour_features(s.positions, s.noise, s.gamma, return_frames=True)
        fr, Qr = ckdtree_features(s.positions, s.noise, s.gamma)
        np.testing.assert_allclose(f, fr, rtol=0, atol=1e-12)
        np.testing.assert_allclose(Q, Qr, rtol=0, atol=1e-12)
    # kappa other than 12, seeds at the centre and on the -x axis (degenerate frames)
    rng = np.random.default_rng(2)
    pos = rng.normal(0, 10, (60, 3))
    pos[0] = 0.0
    pos[1] = [-7.0, 0.0, 0.0]
    nz, g = rng.random((60, 2)), rng.uniform(0, math.pi, 60)
    f, Q = neighbour_features(pos, nz, g, kappa=5, return_frames=True)
    fr, Qr = ckdtree_features(pos, nz, g, kappa=5)
    np.testing.assert_allclose(f, fr, rtol=0, atol=1e-12)
    np.testing.assert_allclose(Q, Qr, rtol=0, atol=1e-12)


def test_features_do_not_depend_on_threads() -> None:
    import numba

    s = poisson_seeds(np.array([[-50.0, 50.0], [-50.0, 50.0], [-25.0, 25.0]]), MU_1, 8)
    f, Q = neighbour_features(s.positions, s.noise, s.gamma, return_frames=True)
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        f1, Q1 = neighbour_features(s.positions, s.noise, s.gamma, return_frames=True)
    finally:
        numba.set_num_threads(threads)
    np.testing.assert_array_equal(f1, f)
    np.testing.assert_array_equal(Q1, Q)


def test_features_bad_input() -> None:
    s = poisson_seeds(20.0, 0.01, 0)
    n = len(s)
    pos_nan = s.positions.copy()
    pos_nan[3, 1] = np.nan
    nz_nan = s.noise.copy()
    nz_nan[0, 0] = np.nan
    for args, kw in (
        ((s.positions[:12], s.noise[:12], s.gamma[:12]), {}),  # n <= kappa
        ((s.positions[:5], s.noise[:5], s.gamma[:5]), {"kappa": 5}),
        ((pos_nan, s.noise, s.gamma), {}),
        ((s.positions, nz_nan, s.gamma), {}),
        ((s.positions, s.noise, np.full(n, np.inf)), {}),
        ((s.positions[:, :2], s.noise, s.gamma), {}),
        ((s.positions, s.noise[:, :1], s.gamma), {}),
        ((s.positions, s.noise, s.gamma[:-1]), {}),
        ((s.positions, s.noise, s.gamma), {"kappa": 0}),
    ):
        with pytest.raises(StereograinError):
            neighbour_features(*args, **kw)


# ----------------------------------------------------------------------------- sample_markers


def _spicy_net(seed: int = 0) -> MarkerNet:
    net = MarkerNet(seed=seed)
    with torch.no_grad():
        net.mlp[-1].weight.mul_(25.0)  # outputs spread over the marker ranges
    return net


def test_sample_markers_equals_net_markers_and_chunking() -> None:
    net = _spicy_net()
    s = poisson_seeds(40.0, MU_1, 5)
    feats, Qr = ckdtree_features(s.positions, s.noise, s.gamma)
    with torch.no_grad():
        Dm, rm = net.markers(feats)
    threads = torch.get_num_threads()
    D, r, Q = sample_markers(net, s)
    assert D.dtype == r.dtype == Q.dtype == np.float64
    assert D.shape == (len(s), 3) and r.shape == (len(s),) and Q.shape == (len(s), 3, 3)
    assert float(D.max() - D.min()) > 20  # the net spans the range
    np.testing.assert_allclose(D, Dm.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(r, rm.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(Q, Qr, rtol=0, atol=1e-12)
    for chunk, workers in ((1, None), (7, 2), (100, 3), (10**9, 1)):
        Dc, rc, Qc = sample_markers(net, s, chunk=chunk, workers=workers)
        np.testing.assert_allclose(Dc, D, rtol=1e-6, atol=1e-5)
        np.testing.assert_allclose(rc, r, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(Qc, Q)
    assert torch.get_num_threads() == threads  # restored


def test_sample_markers_for_a_subset_uses_all_seeds_as_neighbours() -> None:
    net = _spicy_net()
    s = poisson_seeds(40.0, MU_1, 5)
    D, r, Q = sample_markers(net, s)
    need = np.linalg.norm(s.positions, axis=1) < 25.0  # an inner ball: its rim's neighbours lie outside
    assert 10 < need.sum() < len(s) - 10
    for workers in (1, 2):
        Dn, rn, Qn = sample_markers(net, s, workers=workers, need=need)
        np.testing.assert_allclose(Dn[need], D[need], rtol=1e-6, atol=1e-5)
        np.testing.assert_allclose(rn[need], r[need], rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(Qn[need], Q[need])
        assert np.all(np.isnan(Dn[~need])) and np.all(np.isnan(rn[~need]))
    none = sample_markers(net, s, need=np.zeros(len(s), bool))[0]
    assert np.all(np.isnan(none))
    for bad in (need.astype(int), need[:-1]):
        with pytest.raises(StereograinError, match="need must be a boolean array"):
            sample_markers(net, s, need=bad)
    # the float64 path honours it too
    Dd = sample_markers(net.double(), s, need=need)[0]
    np.testing.assert_allclose(Dd[need], D[need], rtol=1e-5, atol=1e-5)
    assert np.all(np.isnan(Dd[~need]))


def test_sample_markers_float64_net_takes_the_general_path() -> None:
    net = _spicy_net(1).double()
    s = poisson_seeds(25.0, MU_1, 6)
    D, r, Q = sample_markers(net, s, chunk=50)
    with torch.no_grad():
        Dm, rm = net.markers(neighbour_features(s.positions, s.noise, s.gamma))
    np.testing.assert_allclose(D, Dm.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(r, rm.numpy(), rtol=1e-12, atol=1e-12)


def test_sample_markers_no_grad_and_bad_input() -> None:
    net = MarkerNet()
    s = poisson_seeds(20.0, 0.01, 0)
    D, r, Q = sample_markers(net, s)
    assert isinstance(D, np.ndarray) and np.all((r >= 1) & (r <= 10)) and np.all(D > net.eps)
    assert all(p.grad is None for p in net.parameters())
    bad_pos = s.positions.copy()
    bad_pos[0] = np.nan
    for bad in (
        lambda: sample_markers(net, Seeds(bad_pos, s.noise, s.gamma)),
        lambda: sample_markers(net, s.subset(np.arange(12))),
        lambda: sample_markers(net, s, chunk=0),
        lambda: sample_markers(net, s, chunk=2.5),
        lambda: sample_markers(net, s, workers=0),
        lambda: sample_markers(net, s.positions),
        lambda: sample_markers(MarkerNet(kappa=5), s.subset(np.arange(5))),
    ):
        with pytest.raises(StereograinError):
            bad()
