"""2D GBPD fit to grain label images (paper ref. 43): accuracy, unindexed pixels, files, augmentation."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from stereograin import StereograinError, __version__
from stereograin.fit2d import (
    D_MAX,
    R_RANGE,
    FittedSection,
    _candidates,
    _loss_and_grad,
    _pixel_points,
    fit_section,
    plot_fit,
    _rle,
    _unrle,
    read_sections,
    synthetic_section_map,
    write_sections,
)
from stereograin.tessellation import soft_map


@pytest.fixture(scope="module")
def section():
    labels, truth, origin = synthetic_section_map(96, 80, np.random.default_rng(3), unindexed_fraction=0.04)
    return labels, truth, origin


@pytest.fixture(scope="module")
def fitted(section):
    labels, _, origin = section
    return fit_section(labels, origin, file="synthetic.ctf", seed=1)


def _one_line_error(fn, *args, match: str | None = None, **kw) -> str:
    with pytest.raises(StereograinError, match=match) as exc:
        fn(*args, **kw)
    msg = str(exc.value)
    assert "\n" not in msg and msg
    return msg


def test_synthetic_map_is_the_truth_tessellation(section):
    labels, truth, origin = section
    inside = labels > 0
    assert 0.02 < np.mean(labels[np.hypot(*np.indices(labels.shape) - origin[::-1, None, None]) <= 46] == 0) < 0.06
    pts = _pixel_points(inside, origin)
    np.testing.assert_array_equal(truth.label_points_bruteforce(pts), labels[inside])


def test_fit_reaches_agreement_and_exact_labels(section, fitted):
    labels, _, origin = section
    indexed = labels > 0
    assert fitted.pixel_agreement >= 0.95
    # the agreement is that of the exact (brute-force) labelling of the stored tessellation
    cells = fitted.gbpd().label_points_bruteforce(_pixel_points(indexed, origin)) - 1
    assert np.mean(fitted.grain_labels[cells] == labels[indexed]) == pytest.approx(fitted.pixel_agreement, abs=1e-4)
    image = fitted.label_image()
    assert image.shape == labels.shape
    inside = fitted.mask  # the particle: outside it the image is 0
    all_cells = fitted.gbpd().label_points_bruteforce(_pixel_points(inside, origin)) - 1
    assert np.mean(image[inside] == fitted.grain_labels[all_cells]) > 0.9999
    np.testing.assert_array_equal(np.sort(fitted.grain_labels), np.unique(labels[indexed]))
    np.testing.assert_array_equal(fitted.origin, origin)
    assert fitted.shape == labels.shape and fitted.step_nm == 50.0 and fitted.file == "synthetic.ctf"
    # markers in the GAN generator's ranges (gauge documented in the module)
    assert fitted.in_generator_range
    assert np.all(fitted.D > 0) and np.all(fitted.D <= D_MAX)
    assert R_RANGE[0] - 1e-9 <= fitted.r.min() and fitted.r.max() <= R_RANGE[1] + 1e-9


def test_fit_fills_unindexed_pixels_with_the_right_grain(section, fitted):
    labels, truth, origin = section
    holes = (labels == 0) & (np.hypot(*np.indices(labels.shape) - origin[::-1, None, None]) <= 40)
    assert holes.sum() > 100
    want = truth.label_points_bruteforce(_pixel_points(holes, origin))
    assert np.mean(fitted.label_image()[holes] == want) >= 0.9


def test_unindexed_pixels_do_not_enter_the_fit(section):
    labels, _, origin = section
    a = fit_section(labels, origin, iterations=40)
    padded = np.pad(labels, ((5, 2), (7, 0)))  # more unindexed pixels, same indexed ones relative to origin
    b = fit_section(padded, origin + np.array([7.0, 5.0]), iterations=40)
    np.testing.assert_allclose(b.seeds, a.seeds, rtol=0, atol=1e-9)
    np.testing.assert_allclose(b.D, a.D, rtol=1e-9)
    np.testing.assert_allclose(b.r, a.r, rtol=1e-9)
    assert b.pixel_agreement == a.pixel_agreement and b.shape == padded.shape


def test_seeded_fit_is_deterministic(section):
    labels, _, origin = section
    a, b = (fit_section(labels, origin, iterations=40, seed=5) for _ in range(2))
    for name in ("seeds", "D", "r"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def test_analytic_gradient_matches_torch_soft_map(section):
    labels, _, origin = section
    labels = labels[30:60, 30:60]
    mask = labels > 0
    grains, target = np.unique(labels[mask], return_inverse=True)
    pts = _pixel_points(mask, origin - 30)
    rng = np.random.default_rng(0)
    seeds = np.stack([np.bincount(target, pts[:, k]) for k in range(2)], 1) / np.bincount(target)[:, None]
    seeds += rng.normal(0, 0.5, seeds.shape)
    logd = rng.normal(0, 0.4, seeds.shape)
    r = rng.uniform(1, 4, len(seeds))
    cand = _candidates(pts, seeds, np.exp(logd - logd.mean()), r, target.ravel(), 5)
    loss, gs, gld, gr = _loss_and_grad(pts, cand, seeds, logd, r, 0.7)

    s_t = torch.tensor(seeds, requires_grad=True)
    ld_t = torch.tensor(logd, requires_grad=True)
    r_t = torch.tensor(r, requires_grad=True)
    D_t = torch.exp(ld_t - ld_t.mean())
    u = s_t / torch.linalg.norm(s_t, dim=1, keepdim=True)
    Q = torch.stack([u, torch.stack([-u[:, 1], u[:, 0]], 1)], 1)  # rows: radial, tangential
    M = Q.transpose(1, 2) @ torch.diag_embed(D_t) @ Q
    p = soft_map(torch.tensor(pts), s_t, M, r_t, temperature=0.7, candidates=torch.tensor(cand))
    ref = -torch.log(p[:, 0]).mean()
    ref.backward()
    assert loss == pytest.approx(ref.item(), rel=1e-9)
    np.testing.assert_allclose(gs, s_t.grad.numpy(), atol=1e-10)
    np.testing.assert_allclose(gld, ld_t.grad.numpy(), atol=1e-10)
    np.testing.assert_allclose(gr, r_t.grad.numpy(), atol=1e-10)


def test_candidates_hold_the_measured_cell_first_and_are_distinct(section):
    labels, _, origin = section
    mask = labels > 0
    _, target = np.unique(labels[mask], return_inverse=True)
    pts = _pixel_points(mask, origin)
    n = target.max() + 1
    rng = np.random.default_rng(1)
    seeds = rng.uniform(-40, 40, (n, 2))
    cand = _candidates(pts, seeds, np.ones((n, 2)), rng.uniform(1, 3, n), target.ravel(), 8)
    assert cand.shape == (len(pts), 8)
    np.testing.assert_array_equal(cand[:, 0], target.ravel())
    s = np.sort(cand, axis=1)
    assert not np.any(s[:, 1:] == s[:, :-1])


def test_dict_and_file_round_trip(tmp_path, fitted):
    again = FittedSection.from_dict(json.loads(json.dumps(fitted.to_dict())))
    for name in ("origin", "seeds", "D", "r", "grain_labels", "mask"):
        np.testing.assert_array_equal(getattr(again, name), getattr(fitted, name))
    assert again.central is None and dataclasses.replace(fitted, central=True).to_dict()["central"] is True
    assert (again.file, again.step_nm, again.shape, again.pixel_agreement) == (
        fitted.file, fitted.step_nm, fitted.shape, fitted.pixel_agreement,
    )
    path = tmp_path / "sections.json"
    write_sections(path, [fitted, fitted.augment(0)])
    raw = json.loads(path.read_text())
    assert raw["format"] == "stereograin.sections" and raw["format_version"] == 1
    assert raw["stereograin_version"] == __version__ and "units" in raw
    entry = raw["sections"][0]
    for key in ("file", "step_nm", "pixel_agreement", "seeds", "D", "r", "origin", "grain_labels", "shape"):
        assert key in entry
    back = read_sections(path)
    assert len(back) == 2
    np.testing.assert_array_equal(back[0].seeds, fitted.seeds)
    np.testing.assert_array_equal(back[1].r, fitted.augment(0).r)
    assert not list(tmp_path.glob(".*.tmp"))


def test_mask_is_the_particle_and_bounds_the_label_image(section, fitted):
    labels, _, _ = section
    mask = fitted.mask
    assert mask is not None and mask.shape == labels.shape
    assert mask[labels > 0].all() and not mask.all()  # every grain pixel; not the corners
    img = fitted.label_image()
    assert np.all(img[~mask] == 0) and np.all(img[mask] > 0)
    for m in (np.zeros((3, 4), bool), np.ones((3, 4), bool), np.eye(3, 4, dtype=bool)):
        np.testing.assert_array_equal(_unrle(_rle(m), m.shape), m)
    _one_line_error(_unrle, [5, 2], (3, 4), match="does not cover")


def test_malformed_files_and_dicts_give_one_line_errors(tmp_path, fitted):
    good = fitted.to_dict()
    path = tmp_path / "s.json"
    _one_line_error(read_sections, tmp_path / "missing.json", match="does not exist")
    path.write_text("{not json")
    _one_line_error(read_sections, path, match="not valid JSON")
    path.write_text(json.dumps({"sections": [good]}))
    _one_line_error(read_sections, path, match="not a stereograin sections file")
    path.write_text(json.dumps({"format": "stereograin.sections", "format_version": 99, "sections": []}))
    _one_line_error(read_sections, path, match="format_version")
    head = {"format": "stereograin.sections", "format_version": 1}
    path.write_text(json.dumps({**head, "sections": {}}))
    _one_line_error(read_sections, path, match="'sections' list")
    for bad, match in (
        ({k: v for k, v in good.items() if k != "r"}, "lacks key"),
        ({**good, "D": good["D"][:-1]}, "D must have shape"),
        ({**good, "seeds": [[0.0, "a"]] * len(good["seeds"])}, "seeds"),
        ({**good, "D": [[-1.0, 1.0]] * len(good["D"])}, "positive"),
        ({**good, "step_nm": "fifty"}, "step_nm"),
        ({**good, "shape": [96]}, "shape"),
        ({**good, "pixel_agreement": 1.5}, "pixel_agreement"),
        ({**good, "grain_labels": [1] * len(good["r"])}, "distinct"),
        ({**good, "origin": [float("nan"), 0.0]}, "finite"),
    ):
        path.write_text(json.dumps({**head, "sections": [bad]}))  # NaN is written as the token NaN
        msg = _one_line_error(read_sections, path, match=match)
        assert "section 0" in msg
    _one_line_error(FittedSection.from_dict, [1, 2], match="JSON object")
    _one_line_error(write_sections, tmp_path / "x.json", [good], match="FittedSection")


def test_augment_scales_markers_only(fitted):
    aug = fitted.augment(np.random.default_rng(0))
    fD, fr = aug.D / fitted.D, aug.r / fitted.r
    for f in (fD, fr):
        assert np.all((f > 0.8) & (f < 1.2))
        assert f.std() > 0.05  # independent factors
    np.testing.assert_array_equal(aug.seeds, fitted.seeds)
    np.testing.assert_array_equal(aug.grain_labels, fitted.grain_labels)
    np.testing.assert_array_equal(aug.origin, fitted.origin)
    np.testing.assert_array_equal(fitted.augment(3).r, fitted.augment(3).r)
    narrow = fitted.augment(1, low=0.95, high=1.05)
    assert np.all(np.abs(narrow.r / fitted.r - 1) < 0.05)
    _one_line_error(fitted.augment, 0, low=1.2, high=0.8, match="0 < low <= high")
    with pytest.raises(Exception):
        fitted.seeds[0, 0] = 1.0  # frozen arrays


@pytest.mark.parametrize(
    "labels, origin, match",
    [
        (np.pad(np.ones((5, 5), int), 2), (4.0, 4.0), "1 grain"),
        (np.zeros((8, 8), int), (4.0, 4.0), "0 grain"),
        (np.ones((4, 4, 4), int), (2.0, 2.0), "2D"),
        (np.arange(10), (2.0, 2.0), "2D"),
        (np.array([[1, 2], [2, 1]]), (np.nan, 0.0), "finite"),
        (np.array([[1, 2], [2, 1]]), (0.0, 0.0, 0.0), "origin must have shape"),
        (np.array([[1.0, 2.0], [2.0, 1.0]]), (0.0, 0.0), "integer"),
        (np.array([[1, -1], [2, 1]]), (0.0, 0.0), ">= 0"),
    ],
)
def test_bad_input_gives_one_line_errors(labels, origin, match):
    _one_line_error(fit_section, labels, np.asarray(origin), match=match)


def test_bad_options_give_one_line_errors(section):
    labels, _, origin = section
    _one_line_error(fit_section, labels, origin, step_nm=0, match="step_nm")
    _one_line_error(fit_section, labels, origin, iterations=-1, match="iterations")
    _one_line_error(fit_section, labels, origin, temperature=(1.0, 0.0), match="positive")
    _one_line_error(fit_section, labels, origin, candidates=1, match="candidates")
    _one_line_error(synthetic_section_map, 4, 10, match="size")


def test_plot_fit_writes_png(tmp_path, section, fitted):
    labels, _, _ = section
    path = tmp_path / "fit.png"
    plot_fit(labels, fitted, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    _one_line_error(plot_fit, labels, fitted, tmp_path / "fit.pdf", match="PNG")
    _one_line_error(plot_fit, labels[:-1], fitted, path, match="shape")
