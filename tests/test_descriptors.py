"""Shell descriptors against closed forms, and distribution distances."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import ball_masks
from scipy.special import ellipeinc, ellipkinc

from stereograin import sphere
from stereograin.descriptors import (
    SHELL_DESCRIPTORS,
    compare_samples,
    describe_coefficients,
    describe_mask,
    describe_radii,
)
from stereograin.errors import StereograinError


def _ellipsoid_radii(level: int, a: float, b: float, c: float) -> np.ndarray:
    u, _ = sphere.icosphere(level)
    return 1.0 / np.sqrt((u[:, 0] / a) ** 2 + (u[:, 1] / b) ** 2 + (u[:, 2] / c) ** 2)


def _ellipsoid_area(a: float, b: float, c: float) -> float:
    """Exact surface area for a > b > c (Legendre's form with incomplete elliptic integrals)."""
    phi = math.acos(c / a)
    m = a * a * (b * b - c * c) / (b * b * (a * a - c * c))
    s = math.sin(phi)
    return 2 * math.pi * c * c + 2 * math.pi * a * b / s * (ellipeinc(phi, m) * s * s + ellipkinc(phi, m) * (1 - s * s))


def _paper_like_coefs(n: int, rng: np.random.Generator) -> np.ndarray:
    scales = (3.5, 2.8, 1.0, 0.56, 0.37, 0.28, 0.21, 0.17, 0.15)
    a = np.empty((n, 100))
    a[:, 0] = 140 + 20 * rng.standard_normal(n)
    for l, s in enumerate(scales, start=1):
        a[:, l * l : (l + 1) ** 2] = s * rng.standard_t(2.5, size=(n, 2 * l + 1))
    return a


def _one(d: dict) -> dict:
    return {k: float(v[0]) for k, v in d.items()}


# ---------------------------------------------------------------- closed forms


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_sphere_closed_form(dtype):
    R = 7.5
    k = len(sphere.icosphere(4)[0])
    d = describe_radii(np.full((3, k), R, dtype=dtype), level=4)
    assert tuple(d) == SHELL_DESCRIPTORS
    assert all(v.shape == (3,) and v.dtype == np.float64 for v in d.values())
    s = _one(d)
    assert s["volume"] == pytest.approx(4 / 3 * math.pi * R**3, rel=0.01)
    assert s["surface_area"] == pytest.approx(4 * math.pi * R**2, rel=0.01)
    assert s["sphericity"] == pytest.approx(1.0, rel=0.01)
    assert s["d_max"] == pytest.approx(2 * R, rel=1e-12)
    assert s["d_min"] == pytest.approx(2 * R, rel=1e-12)
    assert s["aspect_ratio"] == pytest.approx(1.0, rel=1e-12)
    assert s["compactness"] == pytest.approx(1.0, abs=1e-6)


def test_inscribed_polyhedron_error_shrinks_with_level():
    # the polyhedron is inscribed: V and A are low, by less at finer levels
    err = []
    for level in (2, 3, 4):
        k = len(sphere.icosphere(level)[0])
        s = _one(describe_radii(np.ones(k), level, compactness=False))
        err.append(1 - s["volume"] / (4 / 3 * math.pi))
    assert 0 < err[2] < err[1] < err[0]
    assert err[1] < 0.01 and err[2] < 0.003


def test_ellipsoid_closed_form():
    a, b, c = 3.0, 2.0, 1.0
    s = _one(describe_radii(_ellipsoid_radii(4, a, b, c), level=4))
    assert s["volume"] == pytest.approx(4 / 3 * math.pi * a * b * c, rel=0.01)
    assert s["surface_area"] == pytest.approx(_ellipsoid_area(a, b, c), rel=0.01)
    # the icosphere holds the coordinate axes (edge midpoints of the icosahedron)
    assert s["d_max"] == pytest.approx(2 * a, rel=1e-9)
    assert s["d_min"] == pytest.approx(2 * c, rel=1e-9)
    assert s["aspect_ratio"] == pytest.approx(3.0, rel=1e-9)
    assert 0.995 < s["compactness"] <= 1.0 + 1e-9  # convex body, inscribed polyhedron
    V, A = 4 / 3 * math.pi * a * b * c, _ellipsoid_area(a, b, c)
    assert s["sphericity"] == pytest.approx(math.pi ** (1 / 3) * (6 * V) ** (2 / 3) / A, rel=0.01)


def test_ellipsoid_area_formula():
    # the reference itself: sphere limit and a prolate spheroid's closed form
    assert _ellipsoid_area(1.0 + 1e-7, 1.0, 1.0 - 1e-7) == pytest.approx(4 * math.pi, rel=1e-5)
    a = 2.0  # oblate spheroid a = b > c: the formula needs b slightly above c only
    e = math.sqrt(1 - (1.0 / 2.0) ** 2)
    oblate = 2 * math.pi * a * a * (1 + (1 - e * e) / e * math.atanh(e))
    assert _ellipsoid_area(a, a - 1e-9, 1.0) == pytest.approx(oblate, rel=1e-6)


def test_nonconvex_shell_compactness_below_one():
    # a sphere with one radius pushed in: volume drops, the hull barely changes
    level = 3
    k = len(sphere.icosphere(level)[0])
    r = np.full((2, k), 10.0)
    r[1, ::7] = 6.0
    d = describe_radii(r, level)
    assert d["compactness"][0] == pytest.approx(1.0, abs=1e-6)
    assert d["compactness"][1] < 0.99
    assert d["volume"][1] < d["volume"][0]


def test_zero_radii_are_degenerate_but_finite():
    level = 3
    k = len(sphere.icosphere(level)[0])
    r = np.full((3, k), 5.0)
    r[1, 0] = 0.0
    r[1, sphere.antipodes(level)[0]] = 0.0  # both ends of one diameter
    r[2] = 0.0
    d = describe_radii(r, level)
    assert d["d_min"][1] == 0.0 and np.isinf(d["aspect_ratio"][1])
    for name in ("volume", "surface_area", "sphericity", "compactness", "d_max"):
        assert np.isfinite(d[name][1]) and d[name][1] > 0
    assert d["volume"][2] == 0 and d["surface_area"][2] == 0
    assert np.isnan(d["sphericity"][2]) and np.isnan(d["compactness"][2]) and np.isnan(d["aspect_ratio"][2])


# ---------------------------------------------------------------- coefficients


def test_coefficients_match_radii_path():
    rng = np.random.default_rng(1)
    a = _paper_like_coefs(300, rng)
    d1 = describe_coefficients(a, level=3, chunk=128)  # several chunks -> thread pool
    r = np.maximum(sphere.evaluate(a, level=3), 0.0)
    d2 = describe_radii(r, level=3)
    for name in SHELL_DESCRIPTORS:
        np.testing.assert_allclose(d1[name], d2[name], rtol=2e-5, err_msg=name)
    # realistic shells: elongated a bit, nearly convex
    assert 1.0 < np.median(d1["aspect_ratio"]) < 1.6
    assert 0.9 < np.median(d1["compactness"]) <= 1.0
    assert 0.85 < np.median(d1["sphericity"]) <= 1.0


def test_compactness_off_is_nan_and_rest_unchanged():
    a = _paper_like_coefs(50, np.random.default_rng(2))
    on = describe_coefficients(a)
    off = describe_coefficients(a, compactness=False, progress=False)
    assert np.all(np.isnan(off["compactness"]))
    for name in ("d_max", "d_min", "volume", "surface_area", "sphericity"):
        np.testing.assert_array_equal(on[name], off[name])


def test_pure_a00_is_a_sphere():
    a00 = 140.0
    R = a00 / (2 * math.sqrt(math.pi))
    a = np.zeros(100)
    a[0] = a00
    s = _one(describe_coefficients(a, level=4))
    assert s["d_max"] == pytest.approx(2 * R, rel=1e-6)
    assert s["d_min"] == pytest.approx(2 * R, rel=1e-6)
    assert s["volume"] == pytest.approx(4 / 3 * math.pi * R**3, rel=0.01)
    assert s["sphericity"] == pytest.approx(1.0, rel=0.01)


def test_negative_radii_are_clipped():
    # a_10 > a_00 / sqrt(3) makes the radius negative around -z
    a = np.zeros(4)
    a[0], a[2] = 10.0, 8.0
    r = sphere.evaluate(a, level=3)
    assert r.min() < 0
    d1 = _one(describe_coefficients(a, level=3))
    d2 = _one(describe_radii(np.maximum(r, 0), level=3))
    for name in SHELL_DESCRIPTORS:
        assert d1[name] == pytest.approx(d2[name], rel=1e-5)


def test_empty_batch():
    d = describe_coefficients(np.zeros((0, 100)))
    assert all(v.shape == (0,) for v in d.values())


# ---------------------------------------------------------------- masks


def test_mask_ball():
    R = 20.0
    mask = ball_masks((50, 50, 50), [(24.3, 25.0, 25.6)], [R]) > 0
    s = describe_mask(mask)
    assert s["volume"] == pytest.approx(4 / 3 * math.pi * R**3, rel=0.02)
    assert s["surface_area"] == pytest.approx(4 * math.pi * R**2, rel=0.03)
    assert s["sphericity"] == pytest.approx(1.0, rel=0.05)
    assert s["d_max"] == pytest.approx(2 * R, rel=0.05)
    assert s["d_min"] == pytest.approx(2 * R, rel=0.05)
    assert s["compactness"] == pytest.approx(1.0, abs=0.02)
    # physical units scale as they should
    t = describe_mask(mask, spacing=0.128)
    assert t["volume"] == pytest.approx(s["volume"] * 0.128**3, rel=1e-12)
    assert t["d_max"] == pytest.approx(s["d_max"] * 0.128, rel=1e-12)
    assert t["sphericity"] == pytest.approx(s["sphericity"], rel=1e-6)


def test_mask_ellipsoid_axes_and_shell_agreement():
    # semi-axes (rz, ry, rx) = (8, 12, 24) voxels; x is the long axis of the direction set
    mask = ball_masks((30, 40, 64), [(15, 20, 32)], [(8.0, 12.0, 24.0)]) > 0
    s = describe_mask(mask)
    assert s["d_max"] == pytest.approx(48, rel=0.05)
    assert s["d_min"] == pytest.approx(16, rel=0.07)
    assert s["aspect_ratio"] == pytest.approx(3.0, rel=0.08)
    shell = _one(describe_radii(_ellipsoid_radii(3, 24.0, 12.0, 8.0), level=3))
    assert s["sphericity"] == pytest.approx(shell["sphericity"], rel=0.05)
    assert s["volume"] == pytest.approx(4 / 3 * math.pi * 24 * 12 * 8, rel=0.02)


def test_mask_concave_body():
    # two overlapping balls: a dumbbell, compactness clearly below 1
    mask = ball_masks((30, 30, 60), [(15, 15, 17), (15, 15, 43)], [10.0, 10.0]) > 0
    mask |= ball_masks((30, 30, 60), [(15, 15, 30)], [(4.0, 4.0, 14.0)]) > 0
    s = describe_mask(mask, smooth=0.0)
    assert s["compactness"] < 0.85
    assert s["d_max"] == pytest.approx(47, rel=0.05)  # x from 7 to 53 voxel centres


# ---------------------------------------------------------------- bad input


def _one_line_error(match, fn, *args, **kwargs):
    with pytest.raises(StereograinError, match=match) as info:
        fn(*args, **kwargs)
    assert "\n" not in str(info.value)


def test_bad_input_messages():
    k = len(sphere.icosphere(3)[0])
    _one_line_error("pass the level", describe_radii, np.ones((2, 100)), 3)
    r = np.ones((2, k))
    r[0, 3] = np.nan
    _one_line_error("NaN", describe_radii, r, 3)
    _one_line_error(">= 0", describe_radii, -np.ones((1, k)), 3)
    _one_line_error("shape", describe_radii, np.ones((2, 2, k)), 3)
    _one_line_error("entries", describe_coefficients, np.ones((2, 99)))
    _one_line_error("NaN", describe_coefficients, np.full((1, 4), np.nan))
    _one_line_error("chunk", describe_coefficients, np.ones((1, 4)), chunk=0)
    _one_line_error("empty", describe_mask, np.zeros((4, 4, 4), bool))
    _one_line_error("3D", describe_mask, np.ones((4, 4), bool))
    _one_line_error("spacing", describe_mask, np.ones((3, 3, 3), bool), spacing=-1)


# ---------------------------------------------------------------- comparison


def test_compare_samples_same_and_shifted_normals():
    rng = np.random.default_rng(0)
    n = 20000
    a = {"x": rng.normal(0, 1, n), "y": rng.normal(0, 1, n)}
    b = {"x": rng.normal(0, 1, n), "y": rng.normal(1, 1, n)}
    out = compare_samples(a, b)
    assert set(out) == {"x", "y"}
    assert out["x"]["ks"] < 0.02 and out["x"]["ks_pvalue"] > 0.001
    assert out["x"]["wasserstein"] < 0.03
    assert out["y"]["wasserstein"] == pytest.approx(1.0, abs=0.05)
    # KS of N(0,1) vs N(1,1) is 2 Phi(1/2) - 1 = 0.383
    assert out["y"]["ks"] == pytest.approx(0.383, abs=0.02)
    assert out["y"]["ks_pvalue"] < 1e-100
    assert out["x"]["n_a"] == n and out["y"]["n_b"] == n


def test_compare_samples_ignores_non_finite():
    a = {"v": np.array([1.0, 2.0, np.nan, np.inf, 3.0]), "c": np.full(5, np.nan)}
    b = {"v": np.array([1.0, 2.0, 3.0]), "c": np.full(3, np.nan)}
    out = compare_samples(a, b)  # default names: all-NaN 'c' is skipped
    assert set(out) == {"v"}
    assert out["v"]["n_a"] == 3 and out["v"]["wasserstein"] == 0.0
    _one_line_error("no finite values of 'c'", compare_samples, a, b, names=["c"])


def test_compare_samples_bad_input():
    _one_line_error("missing from sample b", compare_samples, {"x": [1.0]}, {"y": [1.0]})
    _one_line_error("'z' is missing from sample a", compare_samples, {"x": [1.0]}, {"x": [1.0]}, names=["z"])
    _one_line_error("no finite values", compare_samples, {"x": []}, {"x": [1.0]}, names=["x"])
    _one_line_error("mappings", compare_samples, [1.0], {"x": [1.0]})


def test_compare_descriptor_samples_end_to_end():
    rng = np.random.default_rng(3)
    d1 = describe_coefficients(_paper_like_coefs(400, rng), compactness=False)
    d2 = describe_coefficients(_paper_like_coefs(400, rng), compactness=False)
    out = compare_samples(d1, d2)
    assert "compactness" not in out
    assert set(out) == set(SHELL_DESCRIPTORS) - {"compactness"}
    assert all(v["ks"] < 0.15 for v in out.values())
