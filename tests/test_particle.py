"""Particle assembly: shell radius bounds, centres of mass, kept grains, voxelisation, files."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from stereograin import sphere
from stereograin.errors import StereograinError
from stereograin.grains.model import GrainArchitecture, GrainModel
from stereograin.particle import (
    Particle,
    _CellCut,
    assemble,
    cell_moments,
    inside_shell,
    make_particle,
    shell_radius,
    shell_radius_range,
    shell_extent,
)
from stereograin.shell import paper_model
from stereograin.tessellation import grid_points

CT_NM = 128.0


def _architecture(n: int = 300, R: float = 36.0, seed: int = 0) -> GrainArchitecture:
    """Random anisotropic seeds and markers in a ball of radius R px (not a trained model)."""
    rng = np.random.default_rng(seed)
    u = rng.standard_normal((n, 3))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    pos = u * R * rng.random(n)[:, None] ** (1 / 3)
    return GrainArchitecture(
        pos, rng.random((n, 2)), rng.uniform(0, np.pi, n), rng.uniform(0.3, 3.0, (n, 3)), rng.uniform(1, 4, n), 50.0, R
    )


def _shell(radius_px: float, seed: int = 1, bumps: float = 0.08) -> np.ndarray:
    """A bumpy star-shaped shell (L = 4) of mean radius ``radius_px`` px, in CT voxels."""
    rng = np.random.default_rng(seed)
    a = np.zeros(25)
    r_vox = radius_px * 50.0 / CT_NM
    a[0] = r_vox * np.sqrt(4 * np.pi)
    a[1:] = rng.standard_normal(24) * bumps * r_vox
    return a


def test_shell_gap_decides_every_reach_like_the_expansion():
    from stereograin.particle import _shell_gap

    coefs = _shell(20.0, bumps=0.3)
    scale = CT_NM / 50.0
    x = np.random.default_rng(3).uniform(-40, 40, (4000, 3))
    x[0] = 0.0
    norm = np.linalg.norm(x, axis=1)
    gap_true = np.full(len(x), -1.0)  # the centre is inside
    gap_true[1:] = norm[1:] - shell_radius(coefs, x[1:]) * scale
    g = _shell_gap(coefs, scale, x, shell_radius_range(coefs), 2.0, 9.0)
    for reach in (2.0, 5.0, 9.0):
        np.testing.assert_array_equal(g <= reach, gap_true <= reach)
    exact = np.isfinite(g)
    assert 0 < exact.sum() < len(x)  # some decided by the radius bounds alone
    np.testing.assert_allclose(g[exact], gap_true[exact], rtol=1e-12)


def test_shell_radius_range_bounds_every_direction_and_is_tight():
    coefs = paper_model().sample(6, np.random.default_rng(0), workers=1)
    u = sphere.icosphere(7)[0]  # 163842 directions
    for a in coefs:
        r = shell_radius(a, u)
        lo, hi = shell_radius_range(a)
        assert lo <= r.min() and r.max() <= hi
        assert hi - r.max() < 0.1 * r.max() and r.min() - lo < 0.1 * r.max()


def test_shell_extent_holds_the_shell_and_is_tight():
    coefs = paper_model().sample(6, np.random.default_rng(1), workers=1)
    u = sphere.icosphere(7)[0]
    for a in coefs:
        x = shell_radius(a, u)[:, None] * u
        box = shell_extent(a)
        assert np.all(box[:, 0] <= x.min(axis=0)) and np.all(x.max(axis=0) <= box[:, 1])
        slack = np.concatenate([x.min(axis=0) - box[:, 0], box[:, 1] - x.max(axis=0)])
        assert slack.max() < 0.15 * np.abs(x).max()


def test_inside_shell_matches_direct_evaluation():
    a = _shell(20.0)
    rng = np.random.default_rng(4)
    x = rng.uniform(-12, 12, (4000, 3))
    direct = np.linalg.norm(x, axis=1) < shell_radius(a, x)
    np.testing.assert_array_equal(inside_shell(a, x), direct)
    assert 0.1 < direct.mean() < 0.9
    assert inside_shell(a, np.zeros((1, 3)))[0]


def test_cell_moments_match_numpy():
    rng = np.random.default_rng(2)
    lab = rng.integers(0, 4, (7, 9, 11)).astype(np.int32)  # labels 0-3 at random; 7 is absent
    lab[2:6, 3:8, 2:9] = 5  # a block: long runs along x, enclosing label 4, which encloses 6
    lab[3:5, 4:7, 4:7] = 4
    lab[3, 5, 5] = 6
    counts, mean, lo, hi, open_ = cell_moments(lab, 7)
    k, j, i = np.indices(lab.shape)
    zero = lab == 0
    near0 = np.zeros_like(zero)  # 6-neighbours of a 0 voxel
    for ax in range(3):
        a, b = [slice(None)] * 3, [slice(None)] * 3
        a[ax], b[ax] = slice(1, None), slice(None, -1)
        near0[tuple(a)] |= zero[tuple(b)]
        near0[tuple(b)] |= zero[tuple(a)]
    face = np.ones_like(zero)
    face[1:-1, 1:-1, 1:-1] = False
    assert counts[0] == zero.sum() and not open_[0] and np.all(np.isnan(mean[0]))
    for c in range(1, 8):
        sel = lab == c
        assert counts[c] == sel.sum()
        if sel.any():
            np.testing.assert_allclose(mean[c], [i[sel].mean(), j[sel].mean(), k[sel].mean()])
            np.testing.assert_array_equal(lo[c], [i[sel].min(), j[sel].min(), k[sel].min()])
            np.testing.assert_array_equal(hi[c], [i[sel].max(), j[sel].max(), k[sel].max()])
            assert open_[c] == np.any(sel & (near0 | face)), c
        else:
            assert np.all(np.isnan(mean[c])) and np.all(lo[c] == -1) and not open_[c]
    assert not open_[4] and not open_[6] and open_[5] and counts[7] == 0  # enclosed cells are closed
    with pytest.raises(StereograinError, match="0..7"):
        cell_moments(lab + 5, 7)


@pytest.mark.parametrize("block", [4, 3])
def test_cell_moments_with_a_mask_and_on_threads_equal_the_plain_scan(block, monkeypatch):
    # with a mask the open flags come from the masked blocks' faces, not from a neighbour scan,
    # and only the masked blocks are read
    import numba

    import stereograin.particle as particle_mod

    rng = np.random.default_rng(5)
    lab = rng.integers(1, 40, (23, 18, 29)).astype(np.int32)
    lab[:, :, :] = np.repeat(np.repeat(np.repeat(lab[::3, ::3, ::3], 3, 0), 3, 1), 3, 2)[:23, :18, :29]
    mask = rng.random(tuple(-(-v // block) for v in lab.shape)) < 0.45  # the last blocks stick out of the volume
    mask[0, 0, :] = False  # a row of blocks with nothing to read
    # a masked box of blocks (voxels at least 4..18 x 4..14 x 6..23) with unmasked blocks on its 6 sides
    b0 = np.array([4 // block, 4 // block, 6 // block])
    b1 = np.array([18 // block, 14 // block, 23 // block]) + 1
    box = tuple(slice(a, e) for a, e in zip(b0, b1))
    for ax in range(3):
        for at in (b0[ax] - 1, b1[ax]):
            side = list(box)
            side[ax] = at
            mask[tuple(side)] = False
    mask[box] = True
    full = mask.repeat(block, 0).repeat(block, 1).repeat(block, 2)[:23, :18, :29]
    lab[~full] = 0
    lab[8:13, 7:12, 11:19] = 41  # inside the box: closed
    lab[10, 9, 14] = 42  # inside 41: closed
    lo_v, hi_v = b0 * block, np.minimum(b1 * block, lab.shape) - 1
    mid = [10, 9, 14]
    for c, (ax, v) in enumerate([(a, e) for a in range(3) for e in (lo_v[a], hi_v[a])], start=43):
        at = list(mid)
        at[ax] = v
        lab[tuple(at)] = c  # one voxel on each face of the box: open through that face alone
    plain = cell_moments(lab, 50)
    assert not plain[4][41] and not plain[4][42] and plain[4][43:49].all()
    monkeypatch.setattr(particle_mod, "_MOMENTS_PARALLEL_VOXELS", 1)  # threads even on this small volume
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        # with the mask, voxels outside it are not read: stale labels there change nothing
        stale = lab.copy()
        stale[~full] = rng.integers(1, 51, int((~full).sum()))
        for got in (cell_moments(stale, 50, mask, block), cell_moments(lab, 50)):
            for a, b in zip(plain, got):
                np.testing.assert_array_equal(a, b)
    finally:
        numba.set_num_threads(before)
    assert plain[0][0] == (lab == 0).sum()
    with pytest.raises(StereograinError, match="does not fit"):
        cell_moments(lab, 50, mask[:-1], block)


@pytest.fixture(scope="module")
def tiny():
    arch = _architecture()
    coefs = _shell(15.0)
    p = assemble(coefs, CT_NM, arch, window_px=30.0, com_spacing_px=1.0)
    # fine reference: every cell's centre of mass on a 0.5 px grid over a cube holding it
    # (label_grid equals the brute-force argmin; tests/test_tessellation.py checks that)
    h, m = 0.5, 64
    ref = arch.gbpd().label_grid((2 * m + 1,) * 3, origin=-m * h, spacing=h)
    counts, mean, lo, hi, open_ = cell_moments(ref, arch.n)
    closed = (counts > 0) & ~open_
    centres = -m * h + h * mean
    return arch, coefs, p, centres, counts * h**3, closed


def test_assembly_keeps_grains_whose_whole_cell_centre_is_inside(tiny):
    arch, coefs, p, centres, volumes, closed = tiny
    ids = np.array([np.flatnonzero(np.all(arch.positions == s, axis=1))[0] for s in p.grains.positions[: p.n_grains]])
    assert np.all(closed[ids + 1])
    # centres of mass against the fine estimate: the midpoint rule at h = 1 px is within 0.2 px
    err = np.linalg.norm(p.centres_px - centres[ids + 1], axis=1)
    assert err.max() < 0.2, err.max()
    np.testing.assert_allclose(p.volumes_px3, volumes[ids + 1], rtol=0.05)
    # the kept set is the brute-force one, except for grains within the error of the shell surface
    c = centres[1:][closed[1:]]
    idx = np.flatnonzero(closed[1:])
    truth = set(idx[inside_shell(coefs, c * 50.0 / CT_NM)])
    rho = np.linalg.norm(c, axis=1) * 50.0 / CT_NM
    margin = np.abs(rho - shell_radius(coefs, np.where(rho[:, None] > 0, c, 1.0))) * CT_NM / 50.0
    unsure = set(idx[margin < 0.2])
    assert (set(ids) ^ truth) <= unsure
    assert 5 < p.n_grains < arch.n // 2


def test_voxels_are_the_union_of_kept_cells(tiny, monkeypatch):
    import stereograin.particle as particle_mod

    arch, _, p, _, _, _ = tiny
    lab, origin = p.label_volume(0.05)  # 1 px
    monkeypatch.setattr(particle_mod, "_LOOKUP_VOXELS", 1000)  # the relabelling pass on every thread
    np.testing.assert_array_equal(p.label_volume(0.05)[0], lab)
    assert lab.dtype == np.uint32 and lab.max() == p.n_grains
    assert set(np.unique(lab)) == set(range(p.n_grains + 1))
    # the particle stores every seed of the architecture: the brute force over it, relabelled
    assert p.grains.n == arch.n
    pts = grid_points(lab.shape, origin=origin / 0.05, spacing=1.0)
    full = arch.gbpd().label_points_bruteforce(pts).reshape(lab.shape)
    key = {int(np.flatnonzero(np.all(arch.positions == s, axis=1))[0]) + 1: g + 1
           for g, s in enumerate(p.grains.positions[: p.n_grains])}
    lut = np.zeros(arch.n + 1, np.uint32)
    lut[list(key)] = list(key.values())
    np.testing.assert_array_equal(lut[full], lab)
    # and exactly the brute force over the stored seeds
    stored = p.grains.gbpd().label_points_bruteforce(pts).reshape(lab.shape)
    stored[stored > p.n_grains] = 0
    np.testing.assert_array_equal(stored, lab)


def test_particle_file_round_trip_is_bit_exact(tiny, tmp_path):
    _, _, p, _, _, _ = tiny
    p.save(tmp_path / "particle.json")
    d = json.loads((tmp_path / "particle.json").read_text())
    assert d["format"] == "stereograin.particle" and d["units"]["px_nm"] == 50.0 and d["n_grains"] == p.n_grains
    q = Particle.load(tmp_path)  # a folder holding particle.json works too
    a, oa = p.label_volume(0.1)
    b, ob = q.label_volume(0.1)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(oa, ob)


def test_assembly_region_gives_the_whole_box_result_or_signals_a_cut(tiny):
    arch, coefs, p, _, _, _ = tiny
    # a padding wide enough to hold every kept cell: the same particle as the whole box
    q = assemble(coefs, CT_NM, arch, window_px=30.0, com_spacing_px=1.0, pad_px=14.0)
    assert q.n_grains == p.n_grains
    np.testing.assert_array_equal(q.grains.positions, p.grains.positions)
    np.testing.assert_array_equal(q.centres_px, p.centres_px)
    np.testing.assert_array_equal(q.volumes_px3, p.volumes_px3)
    # labelling from the shell alone (no padding) and growing around cut cells: the same particle
    g = assemble(coefs, CT_NM, arch, window_px=30.0, com_spacing_px=1.0, pad_px=14.0, start_pad_px=0.0)
    assert g.n_grains == p.n_grains
    np.testing.assert_array_equal(g.grains.positions, p.grains.positions)
    np.testing.assert_array_equal(g.centres_px, p.centres_px)
    np.testing.assert_array_equal(g.volumes_px3, p.volumes_px3)
    with pytest.raises(StereograinError, match="starting padding"):
        assemble(coefs, CT_NM, arch, window_px=30.0, com_spacing_px=1.0, pad_px=4.0, start_pad_px=5.0)
    # too little padding: kept cells reach the region's edge
    with pytest.raises(_CellCut):
        assemble(coefs, CT_NM, arch, window_px=30.0, com_spacing_px=1.0, pad_px=0.0)
    with pytest.raises(StereograinError, match="padding must be >= 0"):
        assemble(coefs, CT_NM, arch, window_px=30.0, com_spacing_px=1.0, pad_px=-1.0)


def test_cut_cells_signal_a_larger_window():
    arch = _architecture()
    with pytest.raises(_CellCut):
        assemble(_shell(15.0), CT_NM, arch, window_px=8.0, com_spacing_px=1.0)
    with pytest.raises(StereograinError, match="smaller than one grain"):
        assemble(_shell(0.3, bumps=0.0), CT_NM, arch, window_px=30.0, com_spacing_px=1.0)


def test_make_particle_is_reproducible_from_its_stream(monkeypatch):
    import stereograin.particle as particle

    sm = paper_model()
    sm = dataclasses.replace(sm, a00=dataclasses.replace(sm.a00, family="lognorm", params={"s": 0.05, "loc": 0.0, "scale": 60.0}))
    gm = GrainModel.load("default")
    a = make_particle(sm, gm, np.random.default_rng(7), provenance={"index": 7})
    b = make_particle(sm, gm, np.random.default_rng(7), provenance={"index": 7})
    np.testing.assert_array_equal(a.grains.positions, b.grains.positions)
    np.testing.assert_array_equal(a.coefficients, b.coefficients)
    assert a.n_grains == b.n_grains and a.provenance == {"index": 7}
    c = make_particle(sm, gm, np.random.default_rng(8))
    assert not np.array_equal(a.coefficients, c.coefficients)
    # far too little padding: cut cells force redraws with twice the padding, still deterministic
    monkeypatch.setattr(particle, "PAD_SPACINGS", 0.4)
    d = make_particle(sm, gm, np.random.default_rng(7))
    e = make_particle(sm, gm, np.random.default_rng(7))
    np.testing.assert_array_equal(d.grains.positions, e.grains.positions)


def test_bad_input_gives_one_line_errors(tiny, tmp_path):
    _, _, p, _, _, _ = tiny
    for bad in (-0.05, 0.0, float("nan")):
        with pytest.raises(StereograinError, match="voxel size must be positive"):
            p.label_volume(bad)
    with pytest.raises(StereograinError, match="choose a larger voxel size"):
        p.label_volume(1e-4, max_voxels=10**6)
    (tmp_path / "x.json").write_text(json.dumps({"format": "stereograin.grain-model"}))
    with pytest.raises(StereograinError, match="not a stereograin particle"):
        Particle.load(tmp_path / "x.json")
    with pytest.raises(StereograinError, match="spacing must be positive"):
        assemble(_shell(15.0), CT_NM, _architecture(), 30.0, com_spacing_px=0.0)


def test_padding_grows_half_a_spacing_per_doubling_of_the_grains():
    from stereograin.particle import PAD_SPACINGS, padding_spacings

    mu = 1e-3
    r4000 = (4000 / mu / (4 / 3 * np.pi)) ** (1 / 3)  # px: a ball of 4,000 grains

    def coefs(r_px):
        a = np.zeros(16)
        a[0] = r_px * np.sqrt(4 * np.pi)  # in "CT voxels" of scale 1
        return a

    assert padding_spacings(coefs(r4000 / 2), 1.0, mu) == PAD_SPACINGS
    assert padding_spacings(coefs(r4000), 1.0, mu) == pytest.approx(PAD_SPACINGS)
    assert padding_spacings(coefs(r4000 * 2 ** (1 / 3) * 2), 1.0, mu) == pytest.approx(PAD_SPACINGS + 2.0)  # 16x the grains
    assert padding_spacings(coefs(r4000 / 2.56), 2.56, mu) == pytest.approx(PAD_SPACINGS)  # CT voxels to px


def test_a_particle_too_large_for_the_grid_gets_a_coarser_spacing(tiny, monkeypatch):
    # a particle whose centre-of-mass grid would exceed the cap is made on the smallest spacing
    # (0.01 px steps) that fits, with a warning, and stores that spacing; the rule depends on the
    # box alone (same particle every time)
    import stereograin.particle as particle_mod

    arch, coefs, p, _, _, _ = tiny
    monkeypatch.setattr(particle_mod, "_MAX_COARSE_VOXELS", 40_000)  # the window has 61^3 points at 1 px
    with pytest.warns(UserWarning, match="hold 2.27e\\+05 points at 1 px.* uses 1.89 px instead"):
        coarse = assemble(coefs, CT_NM, arch, window_px=30.0, com_spacing_px=1.0)
    with pytest.warns(UserWarning):
        again = assemble(coefs, CT_NM, arch, window_px=30.0, com_spacing_px=1.0)
    assert coarse.com_spacing_px == again.com_spacing_px == 1.89
    np.testing.assert_array_equal(coarse.centres_px, again.centres_px)
    with pytest.warns(UserWarning):
        h, _, shape = particle_mod._assembly_grid(np.array([[-30.0, 30.0]] * 3), 1.0)
    assert h == 1.89 and np.prod(shape) == 33**3 <= 40_000
    assert abs(coarse.n_grains - p.n_grains) <= 0.1 * p.n_grains  # the same particle, centres a little coarser
