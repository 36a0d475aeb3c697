"""Validation of grain architectures: section statistics (Fig. 10b), cut heights (Fig. 11), 3D grains."""

from __future__ import annotations

import json
import math

import matplotlib.image
import numpy as np
import pytest
from conftest import one_line_error

from stereograin.grains import validation as val
from stereograin.plots_grains import plot_alpha_by_height, plot_grain_statistics_3d, plot_section_comparison
from stereograin.sections import GrainMap
from stereograin.sections_synth import isotropic_ball, radial_ball
from stereograin.tessellation import GBPD

R = 35.0


@pytest.fixture(scope="module")
def radial():
    return radial_ball(R, aspect=3.0, rng=0)


@pytest.fixture(scope="module")
def isotropic():
    return isotropic_ball(R, aspect=3.0, rng=0)


@pytest.fixture(scope="module")
def voronoi():
    return isotropic_ball(R, aspect=1.0, rng=0)


@pytest.fixture(scope="module")
def radial_maps(radial):
    return val.section_sample(radial, R, [0.0, 0.05], rng=1, per_height=2)


@pytest.fixture(scope="module")
def isotropic_maps(isotropic):
    return val.section_sample(isotropic, R, [0.0, 0.05], rng=1, per_height=2)


def _png(path):
    assert path.is_file() and path.stat().st_size > 1000
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    assert not list(path.parent.glob("*.tmp"))  # the atomic write left nothing behind
    return img


# --------------------------------------------------------------------------- sections


def test_section_sample_heights(radial):
    maps = val.section_sample(radial, R, [0.0, 0.6], rng=3, per_height=2)
    assert len(maps) == 4 and all(isinstance(m, GrainMap) for m in maps)
    assert [m.source for m in maps] == ["synthetic section h = 0.00 R"] * 2 + ["synthetic section h = 0.60 R"] * 2
    # the section disc has radius sqrt(R^2 - h^2): area pi (R^2 - h^2) px^2
    for m, h in zip(maps, [0.0, 0.0, 0.6, 0.6]):
        assert np.count_nonzero(m.labels) == pytest.approx(math.pi * R**2 * (1 - h * h), rel=0.03)
    # seeded: the same rng gives the same sections, random normals differ between sections
    again = val.section_sample(radial, R, [0.0, 0.6], rng=3, per_height=2)
    assert all(np.array_equal(a.labels, b.labels) for a, b in zip(maps, again))
    assert not np.array_equal(maps[0].labels, maps[1].labels)


def test_section_statistics_by_hand():
    lab = np.zeros((7, 8), np.int32)
    lab[1:3, 1:7] = 1  # 2 x 6 rectangle
    lab[3:6, 1:4] = 2  # 3 x 3 square
    lab[3, 4:6] = 3  # 2 px: under min_area_px = 5, treated as unindexed
    s = val.section_statistics([GrainMap(lab)])
    assert set(s) == {"area", "eta", "alpha", "chord"}
    np.testing.assert_allclose(s["area"], [12, 9])
    # eta = e1 / e2: x variance of 0..5 is 35/12, y variance of {0, 1} is 1/4; the square is round
    np.testing.assert_allclose(s["eta"], [35 / 3, 1.0])
    assert np.all((s["alpha"] >= 0) & (s["alpha"] <= math.pi / 2))
    # chords: rectangle 2 rows of 6 and 6 columns of 2, square 3 + 3 of 3; the small grain has none
    np.testing.assert_array_equal(np.sort(s["chord"]), [2] * 6 + [3] * 6 + [6] * 2)
    # min_area_px = 1 keeps the small grain (and its chords: one row of 2, two columns of 1)
    s1 = val.section_statistics([GrainMap(lab)], min_area_px=1)
    np.testing.assert_allclose(s1["area"], [12, 9, 2])
    assert s1["chord"].size == 14 + 3
    # two maps pool: everything doubles
    s2 = val.section_statistics([GrainMap(lab), GrainMap(lab)])
    assert s2["area"].size == 4 and s2["chord"].size == 28


def test_compare_sections_identical_and_different(radial_maps, isotropic_maps):
    same = val.compare_sections(radial_maps, radial_maps)
    assert list(same) == ["area", "eta", "alpha", "chord"]
    for d in same.values():
        assert d["ks"] == 0.0 and d["wasserstein"] == 0.0 and d["n_generated"] == d["n_truth"] > 0
    json.dumps(same, allow_nan=False)  # JSON-ready, no NaN
    diff = val.compare_sections(isotropic_maps, radial_maps)
    json.dumps(diff, allow_nan=False)
    # radial grains point at the centre, isotropic ones do not: alpha separates them most
    assert diff["alpha"]["ks"] > 0.4 and diff["alpha"]["wasserstein"] > 0.3
    assert diff["alpha"]["unit"] == "rad" and diff["area"]["unit"] == "px^2"
    # statistics in, same numbers out
    stats = val.compare_sections(val.section_statistics(isotropic_maps), val.section_statistics(radial_maps))
    assert stats == diff


def test_alpha_preference_fades_with_height(radial, isotropic):
    res = val.alpha_by_height(radial, R, [0.8, 0.0], rng=4, per_height=2)
    assert isinstance(res, dict) and list(res) == [0.0, 0.8]  # increasing heights
    assert all(np.all((a >= 0) & (a <= math.pi / 2)) for a in res.values())
    s = res.summary
    assert s[0.0] > 0.7  # a central section: most grains within 30 deg of the radius
    assert s[0.8] < 0.5 and s[0.0] - s[0.8] > 0.3
    assert s[0.0] == val.aligned_fraction(res[0.0])
    js = res.to_json()
    json.dumps(js, allow_nan=False)
    assert js["heights"] == [0.0, 0.8] and js["n_grains"] == [res[0.0].size, res[0.8].size]
    # no radial architecture, no preference at the centre either (the rim even favours tangential grains)
    iso = val.alpha_by_height(isotropic, R, [0.0], rng=4, per_height=2)
    assert iso.summary[0.0] < 0.5 < s[0.0]


def test_aligned_fraction():
    assert val.aligned_fraction(np.array([0.1, 0.2, 1.0, np.nan])) == pytest.approx(2 / 3)
    u = np.random.default_rng(0).uniform(0, math.pi / 2, 20000)
    assert val.aligned_fraction(u) == pytest.approx(val.ALIGNED_BASELINE, abs=0.01)
    assert math.isnan(val.aligned_fraction(np.array([])))


# --------------------------------------------------------------------------- 3D grains


def _one_ellipsoid(centre, axes, semi):
    """Two cells with one seed: cell 1 is exactly the ellipsoid ``|x - c|_A < 1`` (A = Q^T diag(1/semi^2) Q).

    f1 = |x - c|_A - 1/2 and f2 = |x - c|_A / 2 (metric A / 4): f1 < f2 iff |x - c|_A < 1.
    """
    A = axes.T @ np.diag(1.0 / np.asarray(semi, float) ** 2) @ axes
    seeds = np.array([centre, centre], float)
    return GBPD(seeds, np.stack([A, A / 4.0]), np.array([0.5, 0.0]))


def test_grain_statistics_3d_single_cell_by_hand():
    t = math.radians(30.0)
    u1 = np.array([math.cos(t), 0.0, math.sin(t)])  # long axis, 30 deg off the radius (+x)
    u2 = np.array([0.0, 1.0, 0.0])
    u3 = np.cross(u1, u2)
    g = _one_ellipsoid([10.0, 0.0, 0.0], np.stack([u1, u2, u3]), [8.0, 4.0, 3.0])
    for spacing in (1.0, 0.5):
        s = val.grain_statistics_3d(g, 24.0, spacing=spacing)
        # cell 2 (everything else) reaches outside the ball: left out; cell 1 is the only grain
        np.testing.assert_array_equal(s["label"], [1])
        assert s["volume"][0] == pytest.approx(4 / 3 * math.pi * 8 * 4 * 3, rel=0.03)  # 402 px^3
        # equivalent-ellipsoid semi-axes 8 and 3 (voxel discretisation adds ~1/12 px^2 per eigenvalue)
        assert s["elongation"][0] == pytest.approx(8 / 3, abs=0.08)
        assert s["radial_angle"][0] == pytest.approx(30.0, abs=1.5)
        assert s["distance"][0] == pytest.approx(10.0, abs=0.1)
    # the same ellipsoid poking out of a smaller ball (reaches |x| = 18 px) is cut: no grain
    assert val.grain_statistics_3d(g, 16.0)["volume"].size == 0


def test_grain_statistics_3d_radial_vs_isotropic(radial, isotropic, voronoi):
    r, i, v = (val.grain_statistics_3d(g, R) for g in (radial, isotropic, voronoi))
    for s in (r, i, v):
        assert s["volume"].size >= 20
        assert np.all(s["volume"] >= 8) and np.all((s["radial_angle"] >= 0) & (s["radial_angle"] <= 90))
        assert np.all(s["distance"] + np.cbrt(s["volume"]) / 2 < R)  # complete grains only
    assert np.nanmean(r["radial_angle"]) < 30 < 45 < np.nanmean(i["radial_angle"])
    # aspect 3 along the radius vs equiaxed Voronoi grains
    assert np.median(r["elongation"]) > 2.5 > 2.2 > np.median(v["elongation"])
    same = val.compare_grains_3d(r, r)
    assert all(d["ks"] == 0.0 and d["wasserstein"] == 0.0 for d in same.values())
    diff = val.compare_grains_3d(r, i)
    json.dumps(diff, allow_nan=False)
    assert diff["radial_angle"]["ks"] > 0.6 and diff["radial_angle"]["unit"] == "deg"


# --------------------------------------------------------------------------- plots


def test_plots(tmp_path, radial, radial_maps, isotropic_maps, voronoi):
    gs, ts = val.section_statistics(radial_maps), val.section_statistics(isotropic_maps)
    cmp = val.compare_sections(gs, ts)
    plot_section_comparison(gs, ts, cmp, tmp_path / "sections.png", dpi=60)
    img = _png(tmp_path / "sections.png")
    assert 0.6 < img.shape[0] / img.shape[1] < 1.2  # 2 x 2 panels
    res = val.alpha_by_height(radial, R, [0.0, 0.4, 0.8], rng=5)
    plot_alpha_by_height(res, tmp_path / "heights.png", dpi=60)
    _png(tmp_path / "heights.png")
    plot_alpha_by_height(res, tmp_path / "heights_truth.png", truth=ts, dpi=60)
    _png(tmp_path / "heights_truth.png")
    plot_alpha_by_height(res, tmp_path / "heights_both.png", truth=res, dpi=60)
    _png(tmp_path / "heights_both.png")
    a, b = val.grain_statistics_3d(radial, R), val.grain_statistics_3d(voronoi, R)
    plot_grain_statistics_3d(a, b, ("radial", "voronoi"), tmp_path / "grains.png", dpi=60)
    img = _png(tmp_path / "grains.png")
    assert img.shape[1] > 2 * img.shape[0]  # 1 x 3 panels


# --------------------------------------------------------------------------- bad input


def test_bad_input(tmp_path, radial, radial_maps):
    ss = val.section_sample
    assert "empty" in one_line_error(ss, radial, R, [])
    assert "[0, 1)" in one_line_error(ss, radial, R, [0.2, 1.0])
    assert "[0, 1)" in one_line_error(ss, radial, R, [-0.1])
    assert "radius_px" in one_line_error(ss, radial, 0.0, [0.0])
    assert "radius_px" in one_line_error(ss, radial, -3.0, [0.0])
    assert "per_height" in one_line_error(ss, radial, R, [0.0], per_height=0)
    g2 = GBPD(np.zeros((2, 2)) + [[0, 0], [1, 0]], np.stack([np.eye(2)] * 2), np.zeros(2))
    assert "3D GBPD" in one_line_error(ss, g2, R, [0.0])
    assert "empty" in one_line_error(val.section_statistics, [])
    assert "GrainMap" in one_line_error(val.section_statistics, [np.ones((4, 4), int)])
    assert "empty" in one_line_error(val.compare_sections, [], radial_maps)
    assert "lack" in one_line_error(val.compare_sections, {"area": [1.0]}, radial_maps)
    assert "distinct" in one_line_error(val.alpha_by_height, radial, R, [0.0, 0.0])
    assert "[0, 1)" in one_line_error(val.alpha_by_height, radial, R, [1.5])
    gs3 = val.grain_statistics_3d
    assert "radius_px" in one_line_error(gs3, radial, 0.0)
    assert "spacing" in one_line_error(gs3, radial, R, spacing=0.0)
    assert "margin_px" in one_line_error(gs3, radial, R, margin_px=0.5)
    assert "lacks 'volume'" in one_line_error(val.compare_grains_3d, {}, {})
    stats = val.section_statistics(radial_maps)
    assert ".png" in one_line_error(plot_section_comparison, stats, stats, None, tmp_path / "x.pdf")
    assert "lacks" in one_line_error(plot_section_comparison, {}, stats, None, tmp_path / "x.png")
    assert "alpha_by_height" in one_line_error(plot_alpha_by_height, {}, tmp_path / "x.png")
    assert "two names" in one_line_error(plot_grain_statistics_3d, {}, {}, "ab", tmp_path / "x.png")
    assert not list(tmp_path.iterdir())
