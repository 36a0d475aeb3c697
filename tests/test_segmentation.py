"""Tests for stereograin.segmentation on small synthetic CT volumes."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi

from conftest import ball_masks, synthetic_balls
from stereograin.errors import StereograinError
from stereograin.segmentation import (
    distance_transform,
    merge_small_components,
    segment,
    segment_with_stats,
    sphericity,
    surface_area,
)

SHAPE = (96, 96, 96)
# six balls inside the volume (0 and 1 overlap by 2 voxels: the watershed must split them)
# and one (index 6) cut by the y = 0 face
CENTRES = [(30, 30, 30), (30, 30, 50), (70, 25, 70), (70, 70, 25), (25, 72, 72), (68, 62, 62), (48, 4, 48)]
RADII = [12, 10, 9, 11, 8, 7, 8]


@pytest.fixture(scope="module")
def scene() -> tuple[np.ndarray, np.ndarray]:
    grey = synthetic_balls(SHAPE, CENTRES, RADII, blur=1.0, noise=0.05, rng=1)
    return grey, ball_masks(SHAPE, CENTRES, RADII)


def _match(labels: np.ndarray, truth: np.ndarray) -> dict[int, int]:
    """Label -> ball index (1-based) holding most of its voxels."""
    n, m = int(labels.max()), int(truth.max())
    code = labels.astype(np.int64) * (m + 1) + truth
    table = np.bincount(code.ravel(), minlength=(n + 1) * (m + 1)).reshape(n + 1, m + 1)
    return {k: int(table[k, 1:].argmax()) + 1 for k in range(1, n + 1)}


def _ball(r: float, pad: int = 3) -> np.ndarray:
    size = int(np.ceil(r)) + pad
    z, y, x = np.ogrid[-size : size + 1, -size : size + 1, -size : size + 1]
    return (z * z + y * y + x * x <= r * r).astype(np.int32)


# --------------------------------------------------------------------------- building blocks


def test_distance_transform_equals_scipy() -> None:
    rng = np.random.default_rng(0)
    for shape, p in [((20, 24, 28), 0.7), ((1, 9, 13), 0.5), ((31, 7, 5), 0.95)]:
        mask = rng.random(shape) < p
        np.testing.assert_allclose(distance_transform(mask), ndi.distance_transform_edt(mask), rtol=1e-6)


@pytest.mark.parametrize("r", [10, 15, 20])
def test_sphericity_of_voxel_ball_is_one(r: float) -> None:
    ball = _ball(r)
    assert sphericity(ball)[1] == pytest.approx(1.0, abs=0.05)
    assert surface_area(ball)[1] == pytest.approx(4 * np.pi * r * r, rel=0.03)


def test_sphericity_of_plates_and_rods_is_low() -> None:
    vol = np.zeros((40, 120, 40), np.int32)
    vol[5, 5:35, 5:35] = 1  # 1 x 30 x 30 plate
    vol[15:17, 5:35, 5:35] = 2  # 2 x 30 x 30 plate
    vol[25, 5:105, 20] = 3  # 1 x 1 x 100 rod
    vol[30:32, 5:105, 5:7] = 4  # 2 x 2 x 100 rod
    psi = sphericity(vol)
    assert np.isnan(psi[0])
    assert np.all(psi[1:] < 0.45), psi


def test_measures_are_vectorised_over_many_labels() -> None:
    # 1000 one-voxel labels: each has V = 1 and the Crofton area of a single voxel
    vol = np.zeros((20, 20, 20), np.int32)
    vol[::2, ::2, ::2] = np.arange(1, 1001).reshape(10, 10, 10)
    area = surface_area(vol)
    assert area.shape == (1001,)
    np.testing.assert_allclose(area[1:], area[1])


# --------------------------------------------------------------------------- the pipeline


def test_segment_finds_each_ball_with_its_volume(scene: tuple[np.ndarray, np.ndarray]) -> None:
    grey, truth = scene
    result = segment_with_stats(grey)
    labels = result.labels
    assert labels.dtype == np.uint32 and labels.shape == SHAPE
    assert result.n_particles == 6
    assert np.array_equal(np.unique(labels), np.arange(7))  # consecutive 1..n
    match = _match(labels, truth)
    assert sorted(match.values()) == [1, 2, 3, 4, 5, 6]  # touching balls 1 and 2 were split
    for k, ball in match.items():
        v = np.count_nonzero(labels == k)
        # Otsu sits below the midpoint here (background dominates), so particles are a little
        # larger than the true balls; smoothing (sigma 1.8) shrinks them again
        assert v == pytest.approx(np.count_nonzero(truth == ball), rel=0.12), (k, ball)
    assert result.n_dropped_border == 1


def test_segment_keeps_border_ball_when_asked(scene: tuple[np.ndarray, np.ndarray]) -> None:
    grey, truth = scene
    labels = segment(grey, drop_border=False)
    assert labels.max() == 7
    match = _match(labels, truth)
    assert sorted(match.values()) == [1, 2, 3, 4, 5, 6, 7]
    border_label = next(k for k, b in match.items() if b == 7)
    assert border_label in labels[:, 0, :]


def test_segment_splits_two_overlapping_balls() -> None:
    grey = synthetic_balls((48, 48, 64), [(24, 24, 20), (24, 24, 41)], [11, 11], rng=2)
    labels = segment(grey)
    assert labels.max() == 2
    # the cut lies between the centres, near the middle
    cut = labels[24, 24, 20:42]
    assert set(cut[:8]) == {cut[0]} and set(cut[-8:]) == {cut[-1]} and cut[0] != cut[-1]


def test_isolated_tiny_blob_is_dropped() -> None:
    grey = np.full((40, 40, 40), 20, np.uint8)
    grey[_ball_mask((40, 40, 40), (20, 20, 14), 8)] = 200
    grey[20, 20, 30:35] = 200  # 5 voxels, far from the ball
    result = segment_with_stats(grey, sigma=0)
    assert result.n_particles == 1 and result.n_dropped_small == 1
    assert result.labels[20, 20, 30:35].max() == 0
    kept = segment(grey, sigma=0, min_volume=0, min_sphericity=0)
    assert kept.max() == 2


def _ball_mask(shape: tuple[int, int, int], centre: tuple[float, float, float], r: float) -> np.ndarray:
    return ball_masks(shape, [centre], [r]) > 0


def test_merge_small_components() -> None:
    shape = (48, 48, 64)
    labels = np.zeros(shape, np.int32)
    labels[_ball_mask(shape, (24, 24, 14), 8)] = 1  # surface at x = 22
    labels[24, 24, 23:28] = 2  # 5-voxel stub on ball 1
    labels[40, 40, 58:63] = 3  # isolated 5-voxel blob
    labels[_ball_mask(shape, (24, 24, 44), 8)] = 4  # x from 36 to 52
    labels[14:34, 14:34, 53] = 5  # 1 x 20 x 20 plate on ball 4: V = 400 but Psi ~ 0.3
    labels[24, 24, 36] = 8  # the tip voxel of ball 4 relabelled: touches ball 4 only
    labels[5, 5:8, 30:32] = 6  # two 6-voxel pieces touching each other only:
    labels[5, 8:11, 30:32] = 7  # each is < 10 voxels, together 12 voxels
    out = merge_small_components(labels)
    assert out.dtype == labels.dtype
    assert np.all(out[24, 24, 23:28] == 1)
    assert np.all(out[40, 40, 58:63] == 0)
    assert np.all(out[14:34, 14:34, 53] == 4)
    assert out[24, 24, 36] == 4
    # 6 and 7 are each other's best neighbour: they form one group (named by the smaller
    # label), which is measured again as a whole (12 voxels, Psi ~ 0.7) and passes
    assert np.all(out[5, 5:11, 30:32] == 6)
    assert set(np.unique(out)) == {0, 1, 4, 6}
    # with a stricter volume the group fails again and, having no other neighbour, is dropped
    assert np.all(merge_small_components(labels, min_volume=20)[5, 5:11, 30:32] == 0)
    # nothing fails with both criteria off
    assert np.array_equal(merge_small_components(labels, min_volume=0, min_sphericity=0), labels)


def test_merge_into_neighbour_with_most_contact() -> None:
    labels = np.zeros((30, 30, 30), np.int32)
    labels[5:25, 5:25, 5:15] = 1
    labels[5:25, 5:25, 16:26] = 2  # a one-voxel gap at x = 15
    labels[10, 10:13, 14:16] = 3  # 6 voxels bridging the gap: 11 face pairs with 1, 3 with 2
    out = merge_small_components(labels)
    assert np.all(out[labels == 3] == 1)
    assert set(np.unique(out)) == {0, 1, 2}


def test_progress_bar_runs(scene: tuple[np.ndarray, np.ndarray], capsys: pytest.CaptureFixture[str]) -> None:
    grey, _ = scene
    labels = segment(grey[:48, :48, :48], progress=True)
    assert labels.dtype == np.uint32
    assert "segment" in capsys.readouterr().err


# --------------------------------------------------------------------------- bad input


def _grey() -> np.ndarray:
    return synthetic_balls((24, 24, 24), [(12, 12, 12)], [6])


@pytest.mark.parametrize(
    "volume, kwargs, word",
    [
        (np.zeros((10, 10)), {}, "2D image"),
        (np.zeros((2, 10, 10, 10)), {}, "4D"),
        (np.zeros((0, 10, 10)), {}, "empty"),
        (np.full((8, 8, 8), 7, np.uint8), {}, "volume is constant (all values = 7): nothing to segment"),
        (np.where(np.eye(8, dtype=bool)[None], np.nan, 1.0).repeat(8, 0), {}, "NaN"),
        (np.full((8, 8, 8), np.inf), {}, "NaN/inf"),
        (None, {"sigma": -1}, "sigma"),
        (None, {"sigma": 100}, "larger than the volume"),
        (None, {"sigma": float("nan")}, "sigma"),
        (None, {"min_volume": -1}, "min_volume"),
        (None, {"min_sphericity": 1.5}, "min_sphericity"),
        (None, {"min_distance": 0}, "min_distance"),
        (None, {"min_distance": 2.5}, "min_distance"),
        (None, {"threshold": 1e6}, "no particle phase"),
        (None, {"threshold": -1e6}, "whole volume"),
        (None, {"threshold": float("inf")}, "threshold must be a number (finite)"),
        (None, {"threshold": "auto"}, "None for Otsu"),
        (None, {"max_merge_passes": 0}, "max_merge_passes"),
    ],
)
def test_bad_input_one_line(volume: np.ndarray | None, kwargs: dict, word: str) -> None:
    with pytest.raises(StereograinError) as err:
        segment(_grey() if volume is None else volume, **kwargs)
    msg = str(err.value)
    assert "\n" not in msg
    assert word in msg


def test_bad_labels_for_measures() -> None:
    with pytest.raises(StereograinError, match="integers"):
        sphericity(np.zeros((4, 4, 4), float))
    with pytest.raises(StereograinError, match="negative"):
        surface_area(-np.ones((4, 4, 4), int))
    with pytest.raises(StereograinError, match="3D"):
        merge_small_components(np.zeros((4, 4), int))
