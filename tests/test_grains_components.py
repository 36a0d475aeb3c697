"""Tests of the stereological GAN components (stereograin.grains)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from stereograin.errors import StereograinError
from stereograin.fit2d import FittedSection
from stereograin.grains import (
    MU_1,
    Discriminator,
    MarkerNet,
    Seeds,
    cutout_box,
    cutout_grid,
    cutout_points_3d,
    generate_markers,
    metrics,
    neighbour_features,
    poisson_seeds,
    reach_certificate,
    slab_geometry,
    t2d,
    t2d_batch,
    t3d,
    t3d_batch,
    to_nchw,
    training_slab,
    truncate_channels,
    visible_grains,
)
from stereograin.tessellation import GBPD, radial_frames


def _spicy_net(eps: float = 1e-2, seed: int = 0) -> MarkerNet:
    """An untrained net whose outputs span most of the marker ranges (larger last layer)."""
    net = MarkerNet(eps=eps, seed=seed)
    with torch.no_grad():
        net.mlp[-1].weight.mul_(25.0)
    return net


def _exact(seeds: np.ndarray, M: torch.Tensor, r: torch.Tensor, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact labels (0-based) and the gap between the two best costs at ``pts``."""
    g = GBPD(seeds, M.detach().double().numpy(), r.detach().double().numpy())
    cost = g.distances(pts)
    two = np.sort(cost, axis=1)[:, :2]
    return np.argmin(cost, axis=1), two[:, 1] - two[:, 0]


# ----------------------------------------------------------------------------- seeds


def test_poisson_count_and_window() -> None:
    box = np.array([[-20.0, 30.0], [0.0, 40.0], [-10.0, 10.0]])
    rng = np.random.default_rng(1)
    counts = []
    for _ in range(200):
        s = poisson_seeds(box, MU_1, rng)
        counts.append(len(s))
        assert s.inside(box).all()
        assert np.all((s.noise >= 0) & (s.noise <= 1)) and np.all((s.gamma >= 0) & (s.gamma <= math.pi))
    lam = MU_1 * 50 * 40 * 20
    assert abs(np.mean(counts) - lam) < 4 * math.sqrt(lam / 200)
    assert abs(np.var(counts) / lam - 1) < 0.35  # Poisson: variance = mean
    ball = poisson_seeds(30.0, MU_1, 2)
    assert np.all(np.linalg.norm(ball.positions, axis=1) <= 30.0)
    lam_b = MU_1 * 4 / 3 * math.pi * 30.0**3
    nb = [len(poisson_seeds(30.0, MU_1, k)) for k in range(100)]
    assert abs(np.mean(nb) - lam_b) < 4 * math.sqrt(lam_b / 100)
    with pytest.raises(StereograinError):
        poisson_seeds(box, -1.0, 0)


def test_slab_geometry_default_floor_clips_to_window() -> None:
    geo = slab_geometry(MU_1)
    assert geo.clipped and geo.h == 128.0 and geo.reach > 1000
    tight = slab_geometry(MU_1, d_floor=9.0)
    assert not tight.clipped and 50 < tight.h < 70
    assert tight.h == pytest.approx(tight.reach + tight.t_kappa)
    box = cutout_box(40.0, tight.h)
    assert box[0, 0] == pytest.approx(41 - tight.h) and box[2, 1] == pytest.approx(tight.h)


def test_doubling_slab_changes_no_cutout() -> None:
    """Seeds drawn in the doubled slab, restricted to the slab (a Poisson process there): same exact cutout."""
    eps = 9.0
    geo = slab_geometry(MU_1, d_floor=eps, window=None)
    net = _spicy_net(eps=eps, seed=3)
    rng = np.random.default_rng(7)
    for draw in range(3):
        p = float(80.0 * (1 - rng.random()))
        pts = cutout_points_3d(p)
        big_box = cutout_box(p, 2 * geo.h, window=None)
        big = poisson_seeds(big_box, MU_1, rng)
        small_box = cutout_box(p, geo.h, window=None)
        keep = np.flatnonzero(big.inside(small_box))
        labels, costs = [], []
        for sub_idx in (keep, np.arange(len(big))):
            sub = big.subset(sub_idx)
            with torch.no_grad():
                M, r, D, _ = generate_markers(net, sub)
            assert float(D.min()) > eps
            g = GBPD(sub.positions, M.double().numpy(), r.double().numpy())
            lab = g.label_points(pts) - 1
            labels.append(sub_idx[lab])
            dv = pts - sub.positions[lab]
            costs.append(np.sqrt(np.einsum("pi,pij,pj->p", dv, g.metrics[lab], dv)) - g.offsets[lab])
        np.testing.assert_array_equal(labels[0], labels[1])
        # the deterministic certificate for the realised markers holds for the small slab
        ok, need = reach_certificate(costs[0], pts, small_box, d_floor=eps, window=None)
        assert ok and need <= geo.reach, (draw, need, geo.reach)


def test_training_slab_is_inside_window() -> None:
    s, box = training_slab(MU_1, 0, p=None, geometry=slab_geometry(MU_1, d_floor=9.0))
    assert s.inside(box).all() and np.all(np.abs(box) <= 128.0)
    assert box[0, 0] < 1 and box[0, 1] == 128.0  # covers every p in (0, 80]


# ----------------------------------------------------------------------------- generator


def test_features_shape_and_neighbours() -> None:
    s = poisson_seeds(20.0, 0.01, 0)
    f, Q = neighbour_features(s.positions, s.noise, s.gamma, return_frames=True)
    assert f.shape == (len(s), 60)
    v = f.reshape(len(s), 12, 5)
    d = np.linalg.norm(v[:, :, :3], axis=2)  # Q orthogonal: norms are neighbour distances
    assert np.all(d > 0)  # self excluded
    assert np.all(np.diff(d, axis=1) >= -1e-9)
    all_d = np.linalg.norm(s.positions[:, None] - s.positions[None], axis=2)
    np.fill_diagonal(all_d, np.inf)
    np.testing.assert_allclose(d, np.sort(all_d, axis=1)[:, :12], rtol=1e-10)
    # displacement back to world: Q^T v = s_j - s_i
    j = np.argsort(all_d, axis=1)[:, :12]
    np.testing.assert_allclose(np.einsum("nba,nkb->nka", Q, v[:, :, :3]), s.positions[j] - s.positions[:, None], atol=1e-9)
    np.testing.assert_array_equal(v[:, :, 3:], s.noise[j])
    with pytest.raises(StereograinError):
        neighbour_features(s.positions[:5], s.noise[:5], s.gamma[:5])


def test_marker_ranges_metric_and_global_rng() -> None:
    state = torch.random.get_rng_state()
    net = _spicy_net()
    assert torch.equal(state, torch.random.get_rng_state())
    s = poisson_seeds(25.0, 0.01, 1)
    M, r, D, Q = generate_markers(net, s)
    assert torch.all((r >= 1) & (r <= 10)) and torch.all((D > net.eps) & (D <= 50))
    assert float((D.max() - D.min()).detach()) > 20  # the test net actually spans the range
    Md = M.detach().double().numpy()
    np.testing.assert_allclose(Md, np.swapaxes(Md, 1, 2), atol=1e-5)
    w, vec = np.linalg.eigh(Md)
    assert np.all(w > 0)
    u = s.positions / np.linalg.norm(s.positions, axis=1, keepdims=True)
    np.testing.assert_allclose(np.einsum("nij,nj->ni", Md, u), D.detach().numpy()[:, :1] * u, rtol=1e-4, atol=1e-4)
    # same seed, same net
    torch.testing.assert_close(MarkerNet(seed=5).markers(np.ones((2, 60)))[0], MarkerNet(seed=5).markers(np.ones((2, 60)))[0])
    # M differentiable in D
    Dg = D.detach().clone().requires_grad_(True)
    metrics(Q, Dg).sum().backward()
    assert Dg.grad is not None and torch.isfinite(Dg.grad).all()


def test_rotation_equivariance() -> None:
    """With spins gamma' = gamma - phi(R, s), rotating the pattern keeps features and gives M' = R M R^T."""
    s = poisson_seeds(25.0, 0.01, 3)
    net = _spicy_net(seed=1)
    for k, R in enumerate(Rotation.random(3, random_state=4).as_matrix()):
        rs = s.positions @ R.T
        Q0, Q0r = radial_frames(s.positions), radial_frames(rs)
        P = Q0r @ R @ np.swapaxes(Q0, 1, 2)  # rotations about e1
        np.testing.assert_allclose(P[:, 0], np.tile([1.0, 0, 0], (len(s), 1)), atol=1e-9)
        phi = np.arctan2(P[:, 2, 1], P[:, 1, 1])
        rot = Seeds(rs, s.noise, s.gamma - phi)
        f, Q = neighbour_features(s.positions, s.noise, s.gamma, return_frames=True)
        fr, Qr = neighbour_features(rot.positions, rot.noise, rot.gamma, return_frames=True)
        np.testing.assert_allclose(Qr, Q @ R.T, atol=1e-9)
        np.testing.assert_allclose(fr, f, atol=1e-8)
        M, *_ = generate_markers(net, s)
        Mr, *_ = generate_markers(net, rot)
        Rt = torch.as_tensor(R, dtype=M.dtype)
        torch.testing.assert_close(Mr, Rt @ M @ Rt.T, atol=2e-4, rtol=1e-4)
    # without the spin correction the features do change
    rot0 = Seeds(rs, s.noise, s.gamma)
    assert not np.allclose(neighbour_features(rot0.positions, rot0.noise, rot0.gamma), f, atol=1e-3)


# ----------------------------------------------------------------------------- cutouts


def test_cutout_grid_eq14() -> None:
    g = cutout_grid(10.0).reshape(32, 32, 2)
    np.testing.assert_allclose(g[0, 0], [11.0, -15.5])
    np.testing.assert_allclose(g[0, 31], [11.0, 15.5])
    np.testing.assert_allclose(g[31, 0], [42.0, -15.5])
    x, y = np.meshgrid(np.arange(1, 33), np.arange(1, 33), indexing="ij")
    g90 = cutout_grid(10.0, math.pi / 2).reshape(32, 32, 2)
    np.testing.assert_allclose(g90[..., 0], -(y - 16.5), atol=1e-12)
    np.testing.assert_allclose(g90[..., 1], x + 10.0, atol=1e-12)
    np.testing.assert_allclose(cutout_points_3d(10.0)[:, :2], g.reshape(-1, 2))
    assert np.all(cutout_points_3d(10.0)[:, 2] == 0)


def _slab_markers(net: MarkerNet, p: float, seed: int):
    s, _ = training_slab(MU_1, seed, p=p, geometry=slab_geometry(MU_1, d_floor=9.0))
    M, r, D, Q = generate_markers(net, s)
    return s, M, r


def test_t3d_matches_exact_labels_and_is_differentiable() -> None:
    net = _spicy_net(seed=2)
    p = 50.0
    s, M, r = _slab_markers(net, p, 11)
    img, ids = t3d(s.positions, M, r, p, return_ids=True)
    assert img.shape[:2] == (32, 32) and img.shape[2] == len(ids)
    torch.testing.assert_close(img.sum(-1), torch.ones(32, 32))
    pts = cutout_points_3d(p)
    lab, gap = _exact(s.positions, M, r, pts)
    soft_lab = ids[img.reshape(-1, img.shape[2]).argmax(1).numpy()]
    away = gap > 1e-2
    assert away.mean() > 0.95
    np.testing.assert_array_equal(soft_lab[away], lab[away])
    # gradient of a scalar of the cutout w.r.t. the generator's parameters
    w = torch.as_tensor(np.random.default_rng(0).random(img.shape), dtype=img.dtype)
    (truncate_channels(img) * w[..., :12]).sum().backward()
    grads = [q.grad for q in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_t3d_anisotropic_markers_exact() -> None:
    """Strongly anisotropic random markers (D from 0.2 to 5): argmax still equals the exact labels."""
    rng = np.random.default_rng(5)
    s = poisson_seeds(cutout_box(30.0, 30.0, window=None), MU_1, rng)
    D = torch.as_tensor(rng.uniform(0.2, 5.0, (len(s), 3)), dtype=torch.float32)
    r = torch.as_tensor(rng.uniform(1, 10, len(s)), dtype=torch.float32)
    M = metrics(radial_frames(s.positions, s.gamma), D)
    img, ids = t3d(s.positions, M, r, 30.0, return_ids=True)
    lab, gap = _exact(s.positions, M, r, cutout_points_3d(30.0))
    away = gap > 1e-2
    np.testing.assert_array_equal(ids[img.reshape(1024, -1).argmax(1).numpy()][away], lab[away])


def test_t3d_batch_matches_single() -> None:
    net = _spicy_net(seed=2)
    tess, ps = [], [20.0, 75.0]
    for k, p in enumerate(ps):
        s, M, r = _slab_markers(net, p, 20 + k)
        tess.append((s.positions, M, r))
    batch = t3d_batch(tess, ps)
    assert batch.images.shape == (2, 32, 32, 12)
    for b, (s, M, r) in enumerate(tess):
        single = t3d(s, M, r, ps[b])
        torch.testing.assert_close(batch.images[b], truncate_channels(single), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(batch.visible[b], visible_grains(single))
    batch.images.sum().backward()  # differentiable end to end
    assert any(q.grad is not None for q in net.parameters())


def test_truncate_channels_order_and_padding() -> None:
    rng = np.random.default_rng(0)
    sums = rng.permutation(20).astype(np.float32) + 1
    img = torch.ones(32, 32, 20) * torch.as_tensor(sums)
    out = truncate_channels(img)
    assert out.shape == (32, 32, 12)
    np.testing.assert_array_equal(out[0, 0].numpy(), np.sort(sums)[::-1][:12])
    small = truncate_channels(img[..., :5])
    np.testing.assert_array_equal(small[0, 0, :5].numpy(), np.sort(sums[:5])[::-1])
    assert torch.all(small[..., 5:] == 0)
    batched = truncate_channels(torch.stack([img, img.flip(-1)]))
    assert batched.shape == (2, 32, 32, 12) and torch.equal(batched[0], batched[1])


def test_visible_grains() -> None:
    img = torch.zeros(2, 32, 32, 5)
    img[0, :16, :, 0] = 1
    img[0, 16:, :, 3] = 1
    img[1, ..., 2] = 1
    torch.testing.assert_close(visible_grains(img), torch.tensor([2.0, 1.0]) / 1024)


def _hand_section(seed: int = 0) -> FittedSection:
    rng = np.random.default_rng(seed)
    n = 900
    rad = 150 * np.sqrt(rng.random(n))
    phi = rng.uniform(0, 2 * math.pi, n)
    seeds = np.stack([rad * np.cos(phi), rad * np.sin(phi)], 1)
    D = np.stack([rng.uniform(0.3, 1, n), rng.uniform(1, 3, n)], 1)
    return FittedSection("", 50.0, np.array([150.0, 150.0]), seeds, D, rng.uniform(1, 4, n), np.arange(1, n + 1), 1.0, (301, 301))


def test_t2d_matches_exact_fitted_labels() -> None:
    sec = _hand_section()
    for p, beta in ((30.0, 0.0), (70.0, 2.0)):
        img, ids = t2d(sec, p, beta, rng=0, augment=False, return_ids=True)
        pts = cutout_grid(p, beta)
        g = sec.gbpd()
        cost = g.distances(pts)
        two = np.sort(cost, axis=1)[:, :2]
        away = two[:, 1] - two[:, 0] > 1e-2
        exact = g.label_points_bruteforce(pts) - 1
        np.testing.assert_array_equal(ids[img.reshape(1024, -1).argmax(1).numpy()][away], exact[away])
    aug = t2d(sec, 30.0, 0.0, rng=1, augment=True)
    assert aug.shape[:2] == (32, 32) and not torch.allclose(truncate_channels(aug), truncate_channels(t2d(sec, 30.0, 0.0, augment=False)))
    b1, b2 = t2d_batch([sec, _hand_section(1)], 4, rng=3), t2d_batch([sec, _hand_section(1)], 4, rng=3)
    assert b1.images.shape == (4, 32, 32, 12) and torch.equal(b1.images, b2.images)
    assert torch.all(b1.visible > 0)


# ----------------------------------------------------------------------------- discriminator


def test_discriminator_shape_and_determinism() -> None:
    state = torch.random.get_rng_state()
    x = torch.rand(4, 12, 32, 32, generator=torch.Generator().manual_seed(0))
    a, b, c = Discriminator(seed=0), Discriminator(seed=0), Discriminator(seed=1)
    assert torch.equal(state, torch.random.get_rng_state())
    out = a(x)
    assert out.shape == (4, 1)
    torch.testing.assert_close(out, b(x))
    assert not torch.allclose(out, c(x))
    with pytest.raises(StereograinError):
        a(x.permute(0, 2, 3, 1))
    assert a(to_nchw(x.permute(0, 2, 3, 1))).shape == (4, 1)
