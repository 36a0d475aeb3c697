import numpy as np
import pytest

from stereograin import sphere
from stereograin.errors import StereograinError


@pytest.mark.parametrize("level", [0, 1, 2, 3, 4])
def test_icosphere_counts_and_symmetry(level):
    v, f = sphere.icosphere(level)
    assert v.shape == (10 * 4**level + 2, 3)
    assert f.shape == (20 * 4**level, 3)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-12)
    anti = sphere.antipodes(level)
    np.testing.assert_allclose(v[anti], -v, atol=1e-12)
    # outward orientation: every face normal points away from the origin
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    assert np.all(np.einsum("nd,nd->n", np.cross(b - a, c - a), a + b + c) > 0)


def test_paper_directions_are_642():
    assert sphere.icosphere(3)[0].shape[0] == 642
    assert sphere.n_coefficients(9) == 100


def test_orthonormality_by_quadrature():
    v, _ = sphere.icosphere(6)
    w = sphere.quadrature_weights(6)
    assert w.sum() == pytest.approx(4 * np.pi)
    Y = sphere.real_sph_harm(9, v)
    gram = (Y * w[:, None]).T @ Y
    assert np.abs(gram - np.eye(100)).max() < 1e-3


def test_low_degree_closed_forms():
    u = np.random.default_rng(0).normal(size=(50, 3))
    n = u / np.linalg.norm(u, axis=1, keepdims=True)
    Y = sphere.real_sph_harm(1, u)
    c = np.sqrt(3 / (4 * np.pi))
    np.testing.assert_allclose(Y[:, 0], 1 / (2 * np.sqrt(np.pi)))
    np.testing.assert_allclose(Y[:, 2], c * n[:, 2], atol=1e-12)  # Y_10 ~ z
    np.testing.assert_allclose(np.abs(Y[:, 3]), c * np.abs(n[:, 0]), atol=1e-12)  # Y_11 ~ x
    np.testing.assert_allclose(np.abs(Y[:, 1]), c * np.abs(n[:, 1]), atol=1e-12)  # Y_1-1 ~ y


def test_fit_without_rotation_recovers_coefficients():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(5, 100))
    u, _ = sphere.icosphere(3)
    r = sphere.evaluate(a)
    np.testing.assert_allclose(sphere.fit_coefficients(r, u, 9, rotate=False), a, atol=1e-9)


def test_rotated_fit_keeps_degree_power_and_is_seeded():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(4, 100))
    u, _ = sphere.icosphere(3)
    r = sphere.evaluate(a)
    b = sphere.fit_coefficients(r, u, 9, rng=7)
    assert not np.allclose(a, b)  # rotated particles have other coefficients ...
    deg = sphere.degrees(9)
    for l in range(10):  # ... but the same power per degree (rotation invariant)
        np.testing.assert_allclose((a[:, deg == l] ** 2).sum(1), (b[:, deg == l] ** 2).sum(1), rtol=1e-8)
    np.testing.assert_allclose(sphere.fit_coefficients(r, u, 9, rng=7), b)
    assert not np.allclose(sphere.fit_coefficients(r, u, 9, rng=8), b)
    # the rotated fit reproduces the function at the rotated directions: P~(R u) = P(u)
    np.testing.assert_allclose(b[:, 0], a[:, 0], rtol=1e-9)


def test_evaluate_batch_and_single_agree():
    a = np.random.default_rng(3).normal(size=(3, 16))
    u, _ = sphere.icosphere(2)
    np.testing.assert_allclose(sphere.evaluate(a, level=2)[1], sphere.evaluate(a[1], level=2))
    np.testing.assert_allclose(sphere.evaluate(a, u), sphere.evaluate(a, level=2))


def test_bad_input():
    u, _ = sphere.icosphere(1)
    with pytest.raises(StereograinError, match="at least 100 directions"):
        sphere.fit_coefficients(np.ones(42), u, 9)
    with pytest.raises(StereograinError, match="NaN"):
        sphere.fit_coefficients(np.full(42, np.nan), u, 2)
    with pytest.raises(StereograinError, match="level"):
        sphere.icosphere(-1)
    with pytest.raises(StereograinError, match="degree"):
        sphere.real_sph_harm(-2, u)
    with pytest.raises(StereograinError, match=r"\(L\+1\)\*\*2"):
        sphere.evaluate(np.ones(7))


def test_real_sph_harm_equals_scipy_convention():
    # the recurrence must reproduce the module's stated convention, built from SciPy's complex Y_l^m
    import scipy.special

    rng = np.random.default_rng(3)
    u = np.vstack([rng.standard_normal((200, 3)), [[0, 0, 1], [0, 0, -2], [1e-9, 0, 1], [3, 0, 0]]])
    n = u / np.linalg.norm(u, axis=1, keepdims=True)
    theta = np.arccos(np.clip(n[:, 2], -1, 1))
    phi = np.mod(np.arctan2(n[:, 1], n[:, 0]), 2 * np.pi)
    L = 9
    Yc = scipy.special.sph_harm_y_all(L, L, theta, phi)
    ref = np.empty((len(u), (L + 1) ** 2))
    for l in range(L + 1):
        ref[:, l * l + l] = Yc[l, 0].real
        for m in range(1, l + 1):
            ref[:, l * l + l + m] = np.sqrt(2) * Yc[l, m].real
            ref[:, l * l + l - m] = np.sqrt(2) * Yc[l, m].imag
    Y = sphere.real_sph_harm(L, u)
    # SciPy's arccos loses the 1e-9 polar angle of row 202; the recurrence keeps it
    np.testing.assert_allclose(np.delete(Y, 202, 0), np.delete(ref, 202, 0), atol=1e-12)
    np.testing.assert_allclose(Y[202], ref[202], atol=1e-8)


def test_evaluate_one_expansion_at_directions_equals_the_basis_product():
    rng = np.random.default_rng(3)
    for L in (0, 1, 4, 9, 14):
        a = rng.standard_normal((L + 1) ** 2)
        u = rng.standard_normal((500, 3)) * rng.uniform(0.1, 5.0, (500, 1))  # any length
        u[0], u[1], u[2] = (0, 0, 2.0), (0, 0, -0.5), (1e-9, 0, 1.0)  # poles and near-pole
        np.testing.assert_allclose(sphere.evaluate(a, u), sphere.real_sph_harm(L, u) @ a, rtol=0, atol=1e-12 * np.abs(a).sum())
    with pytest.raises(StereograinError):
        sphere.evaluate(np.ones(16), np.zeros((3, 3)))
