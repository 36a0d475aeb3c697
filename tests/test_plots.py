"""Figures: each writes a readable PNG; bad input gives a one-line error."""

from __future__ import annotations

import warnings

import matplotlib.image
import numpy as np
import pytest

from stereograin import plots
from stereograin.descriptors import compare_samples
from stereograin.errors import StereograinError


def _read_png(path):
    assert path.is_file() and path.stat().st_size > 1000
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    return img


def _one_line_error(match, fn, *args, **kwargs):
    with pytest.raises(StereograinError, match=match) as info:
        fn(*args, **kwargs)
    assert "\n" not in str(info.value)


def _samples(rng, n=500):
    data = {"d_max": rng.gamma(8, 10, n), "sphericity": rng.beta(20, 1.5, n), "compactness": np.full(n, np.nan)}
    model = {"d_max": rng.gamma(8, 10.5, n), "sphericity": rng.beta(19, 1.5, n), "compactness": np.full(n, np.nan)}
    return data, model


def _coefs(rng, n=300, L=4):
    a = rng.standard_t(3, size=(n, (L + 1) ** 2)) * 2.0
    a[:, 0] = 120 + 25 * rng.standard_normal(n)
    return a


def test_descriptor_histograms(tmp_path):
    rng = np.random.default_rng(0)
    data, model = _samples(rng)
    distances = compare_samples(data, model)
    path = tmp_path / "hist.png"
    plots.descriptor_histograms(data, model, path, distances=distances, units={"d_max": "um"}, dpi=60)
    img = _read_png(path)
    # two panels side by side (the all-NaN compactness is skipped): wider than tall
    assert img.shape[1] > 1.5 * img.shape[0]
    assert not list(tmp_path.glob("*.tmp"))  # the atomic write left nothing behind


def test_descriptor_histograms_bad_input(tmp_path):
    rng = np.random.default_rng(1)
    data, model = _samples(rng)
    path = tmp_path / "h.png"
    hist = plots.descriptor_histograms
    _one_line_error("'volume' is missing from model", hist, data | {"volume": [1.0]}, model, path)
    _one_line_error("'x' is missing from data", hist, data, model, path, names=["x"])
    _one_line_error("no finite values of 'compactness'", hist, data, model, path, names=["compactness"])
    _one_line_error("distances has no entry for 'd_max'", hist, data, model, path, distances={})
    _one_line_error("ending in .png", plots.descriptor_histograms, data, model, tmp_path / "h.pdf")
    assert not path.exists()


def test_coefficient_laws(tmp_path):
    rng = np.random.default_rng(2)
    a = _coefs(rng)
    fits = {
        0: {"family": "lognorm", "params": {"s": 0.2, "loc": 0.0, "scale": 120.0}},
        1: {"family": "t", "params": {"df": 3.0, "loc": 0.0, "scale": 2.0}},
        "2": {"family": "norm", "params": {"loc": 0.0, "scale": 2.5}},  # JSON-style key
        # degrees 3 and 4 without a fit: histogram only
    }
    path = tmp_path / "laws.png"
    plots.coefficient_laws(a, fits, path, unit="voxel", dpi=50)
    _read_png(path)


def test_few_particles_plot_without_empty_histograms(tmp_path):
    # two particles: the robust window holds data, so no density histogram divides 0 by 0
    a = _coefs(np.random.default_rng(3))[:2]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        plots.coefficient_laws(a, {}, tmp_path / "two.png", dpi=50)
    _read_png(tmp_path / "two.png")
    lo, hi = plots._robust_range(np.array([1.0, 3.0]))
    assert (lo, hi) == (1.0, 3.0)


def test_coefficient_laws_bad_input(tmp_path):
    a = _coefs(np.random.default_rng(3))
    path = tmp_path / "laws.png"
    laws = plots.coefficient_laws
    _one_line_error("up to L=4", laws, a, {7: {"family": "t", "params": {"df": 2}}}, path)
    _one_line_error("not a continuous scipy.stats", laws, a, {1: {"family": "nope", "params": {}}}, path)
    _one_line_error("do not fit t", laws, a, {1: {"family": "t", "params": {"s": 1.0}}}, path)
    _one_line_error("invalid for norm", laws, a, {1: {"family": "norm", "params": {"scale": -1.0}}}, path)
    _one_line_error("'family'", laws, a, {1: {"params": {}}}, path)
    _one_line_error("entries", laws, a[:, :20], {}, path)


def test_distance_correlations(tmp_path):
    path = tmp_path / "dc.png"
    plots.distance_correlations(np.linspace(0.05, 0.12, 9), path, dpi=60)
    _read_png(path)
    _one_line_error("1D", plots.distance_correlations, np.ones((2, 3)), path)
    _one_line_error("NaN", plots.distance_correlations, np.array([0.1, np.nan]), path)


def test_shell_gallery(tmp_path):
    rng = np.random.default_rng(4)
    a = _coefs(rng, n=3)
    a[:, 1:] *= 0.3
    path = tmp_path / "gallery.png"
    plots.shell_gallery(a, path, level=2, ncols=3, unit="voxel", dpi=50)
    img = _read_png(path)
    assert img.shape[1] > 2 * img.shape[0]  # one row of three
    _one_line_error("1..64 shells", plots.shell_gallery, np.ones((65, 4)), path)
