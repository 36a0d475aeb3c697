"""Tests of the exact top-k candidate cells (stereograin.grains.candidates)."""

from __future__ import annotations

import numba
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from stereograin.errors import StereograinError
from stereograin.grains.candidates import bruteforce_candidates, exact_candidates
from stereograin.tessellation import GBPD, restricted_metrics


def _markers(rng: np.random.Generator, seeds: np.ndarray, ratio: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Restricted metrics with ``D`` log-uniform in ``[50 / ratio, 50]`` (ratios up to ``ratio``), ``r`` in [1, 10]."""
    n, d = seeds.shape
    D = np.exp(rng.uniform(np.log(50.0 / ratio), np.log(50.0), (n, d)))
    gamma = rng.uniform(0, np.pi, n) if d == 3 else None
    return restricted_metrics(seeds, D, gamma), rng.uniform(1.0, 10.0, n), D


def _ball(rng: np.random.Generator, n: int, radius: float, d: int = 3) -> np.ndarray:
    u = rng.normal(size=(n, d))
    u /= np.linalg.norm(u, axis=1)[:, None]
    return u * radius * rng.random(n)[:, None] ** (1.0 / d)


def _plane_cutouts(rng: np.random.Generator, count: int, size: int = 16, p_max: float = 20.0) -> np.ndarray:
    """Cutout-like grids ``R (x + p, y - (size + 1) / 2, 0)``, ``x, y = 1..size``, in random planes through 0."""
    a = np.arange(1, size + 1, dtype=np.float64)
    out = []
    for _ in range(count):
        x, y = np.meshgrid(a + rng.uniform(0, p_max), a - (size + 1) / 2.0, indexing="ij")
        g = np.stack([x.ravel(), y.ravel(), np.zeros(x.size)], axis=1)
        out.append(g @ Rotation.random(random_state=rng).as_matrix().T)
    return np.concatenate(out)


def _einsum_reference(points, seeds, metrics, offsets, k):
    """An independent reference: GBPD.distances (einsum) and a stable argsort."""
    cost = GBPD(seeds, metrics, offsets).distances(points)
    return np.argsort(cost, axis=1, kind="stable")[:, :k]


def _check_equal(points, seeds, metrics, offsets, k, **kw):
    idx, cost = exact_candidates(points, seeds, metrics, offsets, k, with_costs=True, **kw)
    ref_idx, ref_cost = bruteforce_candidates(points, seeds, metrics, offsets, k, with_costs=True)
    assert idx.shape == (len(points), k) and idx.dtype == np.int64
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_array_equal(cost, ref_cost)  # bit for bit
    np.testing.assert_array_equal(exact_candidates(points, seeds, metrics, offsets, k, **kw), idx)
    return idx


# ----------------------------------------------------------------------------- equality with brute force


@pytest.mark.parametrize("ratio", [1.0, 50.0, 5000.0])
@pytest.mark.parametrize("k", [1, 16])
def test_3d_cutout_planes_match_bruteforce(ratio: float, k: int) -> None:
    rng = np.random.default_rng(int(ratio) + k)
    seeds = _ball(rng, 600, 40.0)
    M, r, _ = _markers(rng, seeds, ratio)
    pts = _plane_cutouts(rng, 6)
    idx = _check_equal(pts, seeds, M, r, k)
    if ratio < 100:  # no near-ties in these draws: the einsum reference agrees too
        np.testing.assert_array_equal(idx, _einsum_reference(pts, seeds, M, r, k))


@pytest.mark.parametrize("k", [1, 7, 300])
def test_3d_random_points_match_bruteforce(k: int) -> None:
    rng = np.random.default_rng(k)
    seeds = rng.uniform(-30, 30, (300, 3))
    M, r, _ = _markers(rng, seeds, 5000.0)
    pts = rng.uniform(-40, 40, (700, 3))  # also outside the seeds' box
    _check_equal(pts, seeds, M, r, k)


@pytest.mark.parametrize("k", [1, 16, 250])
def test_2d_sections_match_bruteforce(k: int) -> None:
    rng = np.random.default_rng(10 + k)
    seeds = _ball(rng, 250, 60.0, d=2)
    M, r, _ = _markers(rng, seeds, 5000.0)
    a = np.arange(1, 33, dtype=np.float64)
    grids = []
    for _ in range(3):  # rotated 2D cutouts (Eq. 14) and random points
        x, y = np.meshgrid(a + rng.uniform(0, 30), a - 16.5, indexing="ij")
        b = rng.uniform(0, 2 * np.pi)
        c, s = np.cos(b), np.sin(b)
        grids.append(np.stack([c * x.ravel() - s * y.ravel(), s * x.ravel() + c * y.ravel()], axis=1))
    pts = np.concatenate(grids + [rng.uniform(-70, 70, (300, 2))])
    idx = _check_equal(pts, seeds, M, r, k)
    if k == 16:
        np.testing.assert_array_equal(idx[:, 0], GBPD(seeds, M, r).label_points_bruteforce(pts) - 1)


def test_lambda_min_and_thread_count_do_not_change_the_result() -> None:
    rng = np.random.default_rng(3)
    seeds = _ball(rng, 800, 45.0)
    M, r, D = _markers(rng, seeds, 500.0)
    pts = _plane_cutouts(rng, 4, size=32)
    ref = _check_equal(pts, seeds, M, r, 16)
    np.testing.assert_array_equal(exact_candidates(pts, seeds, M, r, 16, lambda_min=D.min(axis=1)), ref)
    np.testing.assert_array_equal(exact_candidates(pts, seeds, M, r, 16, lambda_min=0.5 * D.min(axis=1)), ref)
    old = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        np.testing.assert_array_equal(exact_candidates(pts, seeds, M, r, 16), ref)
    finally:
        numba.set_num_threads(old)


def test_duplicate_seeds_and_exact_ties_go_to_the_lower_index() -> None:
    rng = np.random.default_rng(5)
    base = rng.uniform(-20, 20, (60, 3))
    M0, r0, _ = _markers(rng, base, 100.0)
    perm = rng.permutation(120)  # every cell twice, scattered over the indices
    seeds, M, r = np.concatenate([base, base])[perm], np.concatenate([M0, M0])[perm], np.concatenate([r0, r0])[perm]
    pts = rng.uniform(-25, 25, (400, 3))
    idx = _check_equal(pts, seeds, M, r, 10)
    cost = exact_candidates(pts, seeds, M, r, 10, with_costs=True)[1]
    base_of = perm % 60  # the base cell at each index: copies come in adjacent pairs, lower index first
    assert (base_of[idx[:, 0::2]] == base_of[idx[:, 1::2]]).all()
    assert (idx[:, 0::2] < idx[:, 1::2]).all()
    assert (cost[:, 0::2] == cost[:, 1::2]).all()


def test_lattice_ties_isotropic() -> None:
    """Integer seeds, metrics and points: many costs tie exactly (also between different cells)."""
    g = np.arange(-4.0, 5.0, 2.0)
    seeds = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
    n = len(seeds)
    M = np.tile(4.0 * np.eye(3), (n, 1, 1))
    r = np.zeros(n)
    h = np.arange(-5.0, 6.0)
    pts = np.stack(np.meshgrid(h, h, h, indexing="ij"), -1).reshape(-1, 3)
    for k in (1, 8, n):
        idx = _check_equal(pts, seeds, M, r, k)
        np.testing.assert_array_equal(idx, _einsum_reference(pts, seeds, M, r, k))


def test_non_symmetric_metrics_use_m_as_given() -> None:
    rng = np.random.default_rng(8)
    seeds = rng.uniform(-20, 20, (200, 3))
    M, r, _ = _markers(rng, seeds, 50.0)
    A = rng.normal(size=M.shape)
    M = M + 0.3 * (A - A.transpose(0, 2, 1))  # same quadratic form, different entries
    _check_equal(rng.uniform(-22, 22, (300, 3)), seeds, M, r, 12)


def test_degenerate_inputs() -> None:
    rng = np.random.default_rng(9)
    seeds = rng.uniform(-10, 10, (40, 3))
    M, r, _ = _markers(rng, seeds, 10.0)
    same = np.tile([[1.0, 2.0, 3.0]], (50, 1))  # all points equal
    _check_equal(same, seeds, M, r, 5)
    far = rng.uniform(-1, 1, (30, 3)) + 1e4  # far from every seed
    _check_equal(far, seeds, M, r, 5)
    one = _check_equal(rng.uniform(-5, 5, (20, 3)), seeds[:1], M[:1], r[:1], 1)  # a single cell
    assert (one == 0).all()
    empty, costs = exact_candidates(np.zeros((0, 3)), seeds, M, r, 3, with_costs=True)
    assert empty.shape == (0, 3) and costs.shape == (0, 3)


def test_large_k_grows_the_list_store() -> None:
    """``k`` near ``n`` keeps every cell on every level: the per-thread list store must grow."""
    rng = np.random.default_rng(11)
    seeds = rng.uniform(-30, 30, (2100, 3))
    M, r, _ = _markers(rng, seeds, 20.0)
    _check_equal(rng.uniform(-30, 30, (40, 3)), seeds, M, r, 1500)


# ----------------------------------------------------------------------------- errors


def test_bad_input_raises_one_line_errors() -> None:
    rng = np.random.default_rng(12)
    seeds = rng.uniform(-10, 10, (20, 3))
    M, r, _ = _markers(rng, seeds, 10.0)
    pts = rng.uniform(-10, 10, (30, 3))
    bad = [
        (pts[:, :2], seeds, M, r, 4, {}),  # dimension mismatch
        (pts, seeds[:, :1], M, r, 4, {}),  # 1D seeds
        (pts, seeds, M[:, :2, :2], r, 4, {}),  # metric shape
        (pts, seeds, M, r[:-1], 4, {}),  # offsets shape
        (np.where(np.arange(30)[:, None] == 3, np.nan, pts), seeds, M, r, 4, {}),  # NaN point
        (pts, seeds, np.where(np.arange(20)[:, None, None] == 2, np.inf, M), r, 4, {}),  # inf metric
        (pts, seeds, M, r, 0, {}),  # k too small
        (pts, seeds, M, r, 21, {}),  # k > n
        (pts, seeds, M, r, 2.5, {}),  # k not an int
        (pts, seeds, M, r, True, {}),  # bool is not a count
        (pts, seeds, M, r, 4, {"lambda_min": np.ones(3)}),  # lambda_min shape
        (pts, seeds, M, r, 4, {"lambda_min": -np.ones(20)}),  # lambda_min sign
    ]
    for args in bad:
        with pytest.raises(StereograinError) as e:
            exact_candidates(*args[:5], **args[5])
        assert "\n" not in str(e.value)
    neg = M.copy()
    neg[7] = -neg[7]  # negative definite
    indef = M.copy()
    indef[4] = np.diag([1.0, -1.0, 2.0])  # indefinite
    for bad_m in (neg, indef):
        with pytest.raises(StereograinError, match="positive definite"):
            exact_candidates(pts, seeds, bad_m, r, 4)
    with pytest.raises(StereograinError):
        bruteforce_candidates(pts, seeds, M, r, 0)
