"""Tests for stereograin.sections (readers, grain reconstruction, 2D descriptors, central-section test)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from conftest import one_line_error as _one_line_error
import skimage.measure
import tifffile
from ebsd_synth import grain_orientations, voronoi_labels, write_ang, write_ctf
from PIL import Image

from stereograin.errors import StereograinError
from stereograin.sections import (
    GrainMap,
    central_section_test,
    chord_length_distribution,
    chord_lengths,
    particle_centre,
    particle_mask,
    read_section,
    section_descriptors,
)
from stereograin.sections_synth import _label_pruned, cut_section, nmc_like_sections, radial_ball, synthetic_sections
from stereograin.tessellation import plane_points


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to renumbering: same zero pixels and a one-to-one map between the labels."""
    if a.shape != b.shape or not np.array_equal(a == 0, b == 0):
        return False
    nz = a > 0
    pairs = np.unique(np.stack([a[nz], b[nz]]), axis=1)
    return pairs.shape[1] == np.unique(a[nz]).size == np.unique(b[nz]).size


def _expected_grains(truth: np.ndarray, indexed: np.ndarray, min_px: int) -> np.ndarray:
    """The grains a correct reconstruction finds: connected indexed pieces of each true grain, >= min_px."""
    lab = skimage.measure.label(np.where(indexed, truth, 0), background=0, connectivity=1)
    sizes = np.bincount(lab.ravel())
    lab[(sizes < min_px)[lab] & (lab > 0)] = 0
    return lab


@pytest.fixture(scope="module")
def ebsd_truth() -> dict[str, np.ndarray]:
    """A 40 x 40 map: 12 Voronoi grains in a disc, 3 % of the disc at low CI, two NaN pixels."""
    rng = np.random.default_rng(7)
    truth = voronoi_labels((40, 40), 12, rng)
    euler = grain_orientations(truth, rng, noise_deg=0.5, symmetric_variants=True)
    ci = np.where(truth > 0, rng.uniform(0.3, 0.9, truth.shape), -1.0)
    inside = np.flatnonzero(truth.ravel() > 0)
    low = rng.choice(inside, size=int(0.03 * inside.size), replace=False)
    ci.ravel()[low] = 0.05  # below the default threshold 0.1
    nan_px = rng.choice(np.setdiff1d(inside, low), size=2, replace=False)
    euler.reshape(-1, 3)[nan_px[0]] = np.nan  # NaN orientation
    ci.ravel()[nan_px[1]] = np.nan  # NaN confidence index
    indexed = ci >= 0.1
    indexed.ravel()[nan_px[0]] = False
    return {"truth": truth, "euler": euler, "ci": ci, "indexed": indexed}


# --------------------------------------------------------------------------- readers


def test_ang_round_trip_gives_the_grains(tmp_path: Path, ebsd_truth) -> None:
    path = write_ang(tmp_path / "map.ang", ebsd_truth["euler"], ebsd_truth["ci"])
    gm = read_section(path)
    assert gm.labels.shape == (40, 40) and gm.labels.dtype == np.int32
    assert gm.step_nm == 50.0 and gm.source_step_nm is None and gm.source == "map.ang"
    expected = _expected_grains(ebsd_truth["truth"], ebsd_truth["indexed"], 5)
    assert _same_partition(gm.labels, expected)
    assert gm.n_grains == expected.max() >= 10
    # the particle is the disc; its unindexed pixels are the low-CI / NaN ones inside (+ closing at the rim)
    disc = ebsd_truth["truth"] > 0
    assert abs(int(gm.mask.sum()) - int(disc.sum())) <= 0.02 * disc.sum()
    expected_frac = np.count_nonzero(disc & (expected == 0)) / disc.sum()
    assert gm.unindexed_fraction == pytest.approx(expected_frac, abs=0.01)
    assert 0.02 < gm.unindexed_fraction < 0.06


def test_ctf_round_trip_gives_the_grains(tmp_path: Path, ebsd_truth) -> None:
    ind = ebsd_truth["indexed"]
    euler = np.nan_to_num(ebsd_truth["euler"])
    path = write_ctf(tmp_path / "map.ctf", euler, ind)
    gm = read_section(path)
    assert gm.step_nm == 50.0
    assert _same_partition(gm.labels, _expected_grains(ebsd_truth["truth"], ind, 5))


def test_symmetry_is_used_and_the_threshold_splits(tmp_path: Path) -> None:
    from orix.quaternion import Rotation

    truth = np.ones((20, 21), dtype=np.int32)
    truth[:, 7:] = 2
    truth[:, 14:] = 3
    rng = np.random.default_rng(3)
    q = rng.normal(size=(2, 4))  # seeded (orix's Rotation.random is not): grain 3 stays unrelated
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    g, other = Rotation(q[:1]), Rotation(q[1:])
    for angle_deg, n_grains in [(3.0, 2), (8.0, 3)]:
        # grain 2 is grain 1 turned by angle_deg; grain 3 is unrelated; pixels are random symmetric variants
        turn = Rotation.from_axes_angles([0.3, -0.5, 0.8], np.deg2rad(angle_deg))
        rots = np.concatenate([g.data, g.data, (turn * g).data, other.data])
        euler = grain_orientations(truth, rng, noise_deg=0.2, grain_rotations=rots)
        gm = _read_pair(tmp_path / f"t{angle_deg}.ang", euler, truth)
        assert gm.n_grains == n_grains, angle_deg
    # without the header's symmetry (triclinic '1') the symmetric variants break the grains apart
    path = write_ang(tmp_path / "c1.ang", euler, np.full(truth.shape, 0.8), symmetry="1")
    assert read_section(path, min_grain_px=1).n_grains > 20


def _read_pair(path: Path, euler: np.ndarray, truth: np.ndarray) -> GrainMap:
    write_ang(path, euler, np.full(truth.shape, 0.8))
    return read_section(path, min_grain_px=1)


def test_other_step_sizes_are_resampled(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    truth = voronoi_labels((20, 20), 6, rng, disc=False)
    euler = grain_orientations(truth, rng)
    path = write_ang(tmp_path / "coarse.ang", euler, np.full(truth.shape, 0.8), step_um=0.1)
    gm = read_section(path)
    assert gm.labels.shape == (40, 40) and gm.step_nm == 50.0 and gm.source_step_nm == 100.0
    assert _same_partition(gm.labels, np.kron(truth, np.ones((2, 2), dtype=np.int32)))
    # an explicit step overrides the header: 25 nm pixels halve the map
    half = read_section(path, step_nm=25.0)
    assert half.labels.shape == (10, 10) and half.source_step_nm == 25.0
    # no resampling on request
    raw = read_section(path, target_step_nm=None)
    assert raw.labels.shape == (20, 20) and raw.step_nm == 100.0


def test_label_images_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    truth = voronoi_labels((30, 30), 8, rng).astype(np.uint16) * 37  # arbitrary label values
    tifffile.imwrite(tmp_path / "l.tif", truth)
    Image.fromarray(truth).save(tmp_path / "l.png")
    for name in ("l.tif", "l.png"):
        gm = read_section(tmp_path / name, step_nm=50)
        assert _same_partition(gm.labels, truth.astype(np.int64))
        assert gm.n_grains == np.unique(truth).size - 1
        assert gm.labels.max() == gm.n_grains  # relabelled 1..n
    assert read_section(tmp_path / "l.tif", step_nm=100).labels.shape == (60, 60)


# --------------------------------------------------------------------------- bad input


def test_truncated_ang_row(tmp_path: Path, ebsd_truth) -> None:
    path = write_ang(tmp_path / "cut.ang", ebsd_truth["euler"], ebsd_truth["ci"])
    lines = path.read_text().splitlines()
    k = next(i for i, line in enumerate(lines) if not line.startswith("#")) + 100
    lines[k] = " ".join(lines[k].split()[:6])  # a row cut after 6 of 10 columns
    path.write_text("\n".join(lines) + "\n")
    msg = _one_line_error(read_section, path)
    assert "cut.ang" in msg and "truncated" in msg


def test_ang_missing_rows(tmp_path: Path, ebsd_truth) -> None:
    path = write_ang(tmp_path / "short.ang", ebsd_truth["euler"], ebsd_truth["ci"])
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-25]) + "\n")  # the last 25 points are missing
    msg = _one_line_error(read_section, path)
    assert "1575 points" in msg and "40 rows x 40 columns" in msg


def test_header_without_step(tmp_path: Path, ebsd_truth) -> None:
    path = write_ang(tmp_path / "nostep.ang", ebsd_truth["euler"], ebsd_truth["ci"], header_step=False)
    msg = _one_line_error(read_section, path)
    assert "no step size" in msg and "step_nm=" in msg
    assert read_section(path, step_nm=50).n_grains >= 10  # given explicitly, it reads
    euler = np.nan_to_num(ebsd_truth["euler"])
    ctf = write_ctf(tmp_path / "nostep.ctf", euler, ebsd_truth["indexed"], header_step=False)
    assert "XStep" in _one_line_error(read_section, ctf)


def test_all_unindexed_map(tmp_path: Path, ebsd_truth) -> None:
    path = write_ang(tmp_path / "empty.ang", ebsd_truth["euler"], np.full((40, 40), -1.0))
    msg = _one_line_error(read_section, path)
    assert "no indexed pixels" in msg
    low = write_ang(tmp_path / "low.ang", ebsd_truth["euler"], np.full((40, 40), 0.02))
    assert "ci_threshold" in _one_line_error(read_section, low)


def test_label_image_with_one_grain(tmp_path: Path) -> None:
    mask = np.zeros((30, 30), np.uint8)
    mask[5:25, 5:25] = 255  # a binary particle mask, not grain labels
    tifffile.imwrite(tmp_path / "mask.tif", mask)
    msg = _one_line_error(read_section, tmp_path / "mask.tif", step_nm=50)
    assert "single grain" in msg and "binary" in msg


def test_other_bad_input(tmp_path: Path) -> None:
    assert "does not exist" in _one_line_error(read_section, tmp_path / "nope.ang")
    (tmp_path / "x.txt").write_text("1 2 3\n")
    assert "unknown suffix" in _one_line_error(read_section, tmp_path / "x.txt")
    lab = voronoi_labels((20, 20), 4, np.random.default_rng(0))
    tifffile.imwrite(tmp_path / "l.tif", lab)
    assert "step_nm" in _one_line_error(read_section, tmp_path / "l.tif")
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(tmp_path / "rgb.png")
    assert "RGB" in _one_line_error(read_section, tmp_path / "rgb.png", step_nm=50)
    (tmp_path / "bad.tif").write_bytes(b"II*\x00garbage")
    assert "cannot read label image" in _one_line_error(read_section, tmp_path / "bad.tif", step_nm=50)
    tifffile.imwrite(tmp_path / "zero.tif", np.zeros((10, 10), np.uint8))
    assert "no grains" in _one_line_error(read_section, tmp_path / "zero.tif", step_nm=50)
    assert "negative" in _one_line_error(GrainMap, np.array([[0, -1], [1, 2]]))
    assert "integers" in _one_line_error(GrainMap, np.zeros((3, 3)))
    assert "2D" in _one_line_error(GrainMap, np.zeros((3, 3, 3), int))


# --------------------------------------------------------------------------- geometry


def _ellipses(o: np.ndarray, a: float, b: float, n: int, radius: float, rng) -> tuple[np.ndarray, list]:
    H = W = int(2 * (radius + a) + 8)
    y, x = np.mgrid[0:H, 0:W]
    lab = np.zeros((H, W), np.int32)
    truth = []
    for k in range(n):
        phi = 2 * math.pi * k / n + 0.1
        c = o + radius * np.array([math.cos(phi), math.sin(phi)])
        th = rng.uniform(-math.pi / 2, math.pi / 2)
        u = (x - c[0]) * math.cos(th) + (y - c[1]) * math.sin(th)
        v = -(x - c[0]) * math.sin(th) + (y - c[1]) * math.cos(th)
        lab[(u / a) ** 2 + (v / b) ** 2 <= 1] = k + 1
        d = (th - phi) % math.pi
        truth.append((min(d, math.pi - d), th))
    return lab, truth


def test_alpha_and_eta_of_ellipses_match_closed_forms() -> None:
    rng = np.random.default_rng(5)
    a, b, radius = 20.0, 8.0, 70.0
    o = np.array([100.3, 99.6])
    lab, truth = _ellipses(o, a, b, 10, radius, rng)
    d = section_descriptors(lab, centre=o, particle_only=False)
    alpha_true = np.array([t[0] for t in truth])
    theta_true = np.array([t[1] for t in truth])
    np.testing.assert_allclose(d["alpha"], alpha_true, atol=0.01)  # rad, pixelation
    dth = np.mod(d["theta"] - theta_true + math.pi / 2, math.pi) - math.pi / 2
    np.testing.assert_allclose(dth, 0.0, atol=0.01)
    # Eq. 21: ratio of the covariance eigenvalues = (a / b)^2 for an ellipse
    np.testing.assert_allclose(d["eta"], (a / b) ** 2, rtol=0.05)  # digitising b = 8 px
    np.testing.assert_allclose(d["e1"], a * a / 4, rtol=0.02)
    np.testing.assert_allclose(d["area"], math.pi * a * b, rtol=0.02)
    np.testing.assert_allclose(d["distance"], radius, atol=0.1)
    # alpha at the ends of its range: an ellipse pointing at the centre and a tangential one
    lab2 = np.zeros((60, 120), np.int32)
    y, x = np.mgrid[0:60, 0:120]
    lab2[((x - 90) / 15.0) ** 2 + ((y - 30) / 5.0) ** 2 <= 1] = 1  # radial (along x, centre at x = 30)
    lab2[((x - 30) / 5.0) ** 2 + ((y - 30) / 15.0) ** 2 <= 1] = 2  # tangential... seen from (-30, 30)
    d2 = section_descriptors(lab2, centre=np.array([-30.0, 30.0]), particle_only=False)
    np.testing.assert_allclose(d2["alpha"], [0.0, math.pi / 2], atol=1e-9)


def test_degenerate_grains() -> None:
    lab = np.zeros((5, 9), np.int32)
    lab[1, 1] = 1  # one pixel: eta undefined
    lab[3, 2:7] = 2  # a one-pixel-wide line: e2 = 0
    d = section_descriptors(lab, centre=np.array([4.0, 2.0]), particle_only=False)
    assert np.isnan(d["eta"][0]) and np.isinf(d["eta"][1])
    assert np.isnan(d["alpha"][1]) or d["distance"][1] > 0


def test_particle_mask_and_centre() -> None:
    H = W = 60
    y, x = np.mgrid[0:H, 0:W]
    lab = ((x // 8) + 10 * (y // 8) + 1).astype(np.int32)
    disc = (x - 29.5) ** 2 + (y - 30.5) ** 2 <= 20**2
    lab[~disc] = 0
    lab[30, 28:31] = 0  # unindexed pixels inside (a hole)
    lab[20:23, 35] = 0
    lab[1:4, 1:4] = 99  # a stray grain outside: not part of the particle
    mask = particle_mask(lab)
    np.testing.assert_array_equal(mask, disc)
    np.testing.assert_allclose(particle_centre(mask), [29.5, 30.5], atol=1e-9)
    gm = GrainMap(lab)
    assert gm.unindexed_fraction == pytest.approx(6 / disc.sum())
    d = section_descriptors(gm)
    assert gm.labels[2, 2] not in d["label"]  # the stray grain is left out
    assert d["label"].size == np.unique(gm.labels[disc]).size - 1
    # a 2-px unindexed gap across the particle does not split it
    lab2 = lab.copy()
    lab2[:, 29:31] = 0
    assert particle_mask(lab2).sum() >= disc.sum() - 2 * 41 and particle_mask(lab2)[30, 20]


def test_chord_lengths() -> None:
    lab = np.array([[1, 1, 2, 0], [1, 3, 3, 3]])
    assert sorted(chord_lengths(lab, axis=1)) == [1, 1, 2, 3]
    assert sorted(chord_lengths(lab, axis=0)) == [1, 1, 1, 1, 1, 2]
    assert chord_lengths(lab).size == 10
    rng = np.random.default_rng(0)
    big = rng.integers(0, 4, size=(23, 31))
    big = np.where(rng.uniform(size=big.shape) < 0.7, np.repeat(big[:, :1], 31, axis=1), big)

    def runs(line):  # reference: a plain loop over one line
        out, k = [], 0
        while k < len(line):
            j = k
            while j < len(line) and line[j] == line[k]:
                j += 1
            if line[k] > 0:
                out.append(j - k)
            k = j
        return out

    for axis, lines in ((1, big), (0, big.T)):
        ref = sorted(r for line in lines for r in runs(list(line)))
        assert sorted(chord_lengths(big, axis=axis)) == ref
    lengths, prob = chord_length_distribution(big)
    assert prob.sum() == pytest.approx(1.0) and lengths[0] == 1
    assert np.sum(lengths * prob) == pytest.approx(chord_lengths(big).mean())


# --------------------------------------------------------------------------- synthetic sections


def test_pruned_plane_labelling_is_exact() -> None:
    g = radial_ball(40.0, rng=4)
    n = np.array([0.3, -0.5, 0.8])
    n /= np.linalg.norm(n)
    e_u = np.cross(n, [1.0, 0.0, 0.0])
    e_u /= np.linalg.norm(e_u)
    e_v = np.cross(n, e_u)
    h = 15.0
    pts = plane_points(h * n - 30 * e_u - 30 * e_v, e_u, e_v, (61, 61))
    pts = pts[np.einsum("ij,ij->i", pts, pts) <= 40.0**2]
    np.testing.assert_array_equal(_label_pruned(g, pts, n, h, margin=4.0), g.label_points_bruteforce(pts))


@pytest.fixture(scope="module")
def radial_sections() -> list[GrainMap]:
    return synthetic_sections((0.0, 0.25, 0.5, 0.75), radius_px=64, aspect=3.0, rng=11)


def test_radial_sections_look_like_the_paper(radial_sections) -> None:
    central, *_ = radial_sections
    assert central.n_grains > 150
    d = section_descriptors(central)
    big = d["area"] >= 10
    # Fig. 2: central sections prefer small alpha, i.e. grains pointing at the centre
    assert np.median(d["alpha"][big]) < 0.35
    assert np.median(d["eta"][big]) > 2.5


def test_central_test_accepts_central_sections(radial_sections) -> None:
    v = central_section_test(radial_sections[0])
    assert v.central and v.p_value < 1e-6, v.summary()
    assert 0.8 < v.statistic < 1.25
    assert "\n" not in v.summary() and v.summary().startswith("central")
    # a second particle, another random plane through its centre
    other = cut_section(radial_ball(64.0, aspect=3.0, rng=12), 64.0, 0.0, rng=3)
    assert central_section_test(other).central


def test_central_test_rejects_off_centre_sections(radial_sections) -> None:
    for gm in radial_sections[2:]:  # h = 0.5 R, 0.75 R
        v = central_section_test(gm)
        assert not v.central and v.p_value > 0.05, (gm.source, v.summary())
    # the rim of the 0.5 R section is still radially aligned: isotropy alone would accept it
    v = central_section_test(radial_sections[2])
    assert v.q_outer > 0.15 and v.p_outer < 1e-4
    assert v.statistic < 0.6


@pytest.mark.parametrize("aspect", [1.0, 3.0])
def test_central_test_rejects_isotropic_sections(aspect: float) -> None:
    gm = synthetic_sections((0.0,), radius_px=64, aspect=aspect, radial=False, rng=21)[0]
    v = central_section_test(gm)
    assert not v.central and v.p_value > 0.05, v.summary()


def test_central_test_too_few_grains() -> None:
    lab = voronoi_labels((30, 30), 6, np.random.default_rng(0))
    v = central_section_test(lab)
    assert not v.central and v.p_value == 1.0 and "too few grains" in v.reason


def test_alpha_kde_plot(tmp_path: Path, radial_sections) -> None:
    from stereograin.plots_sections import alpha_kde, plot_alpha_kde

    grid = np.linspace(0, math.pi / 2, 2001)
    uniform = np.random.default_rng(0).uniform(0, math.pi / 2, 500)
    peaked = np.abs(np.random.default_rng(1).normal(0, 0.2, 500))
    for data in (uniform, peaked):
        dens = alpha_kde(data, grid)
        assert np.trapezoid(dens, grid) == pytest.approx(1.0, abs=0.01)  # reflection keeps the mass inside
    descs = [section_descriptors(gm) for gm in radial_sections]
    verdicts = [central_section_test(gm) for gm in radial_sections]
    out = tmp_path / "kde.png"
    plot_alpha_kde(descs, verdicts, out, names=[gm.source for gm in radial_sections])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "PNG" in _one_line_error(plot_alpha_kde, descs, verdicts, tmp_path / "kde.pdf")


def test_nmc_like_sections_are_central_with_ebsd_like_gaps() -> None:
    maps = nmc_like_sections(2, rng=4, radius_px=(40.0, 45.0), pores=2)
    again = nmc_like_sections(2, rng=4, radius_px=(40.0, 45.0), pores=2)
    for g, h in zip(maps, again):
        np.testing.assert_array_equal(g.labels, h.labels)  # seeded
        assert g.step_nm == 50.0 and g.n_grains > 40
        assert 0.04 < g.unindexed_fraction < 0.3  # boundary pixels, speckles, pores
        counts = np.bincount(g.labels.ravel())[1:]
        assert counts.min() >= 5  # tiny grains were unindexed
        assert central_section_test(g).central
    with pytest.raises(StereograinError, match="positive integer"):
        nmc_like_sections(0)
    with pytest.raises(StereograinError, match="probabilities"):
        nmc_like_sections(1, boundary_unindexed=1.5)
