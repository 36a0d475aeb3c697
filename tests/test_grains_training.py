"""Training loop, checkpoints / resume, GrainModel files and sampling (stereograin.grains)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from stereograin.errors import StereograinError
from stereograin.grains.cutouts import cutout_grid, label_cutouts, onehot_cutouts, rotated_cutout_points
from stereograin.grains.model import GrainArchitecture, GrainModel
from stereograin.grains.training import TrainConfig, _random_rotations, _SectionTable, train, usable_sections
from stereograin.tessellation import GBPD, restricted_metrics
from toy_sections import toy_section

# a tiny schedule: 2 epochs x 2 steps, 4 + 4 cutouts, a window of 48 px (p_max 8 px)
TINY = TrainConfig(
    epochs=2, steps=2, batch_g=4, batch_d=4, cutouts_per_realisation=2, window=48.0, p_max=8.0,
    hidden=(16, 16), d_widths=(4, 8, 8), candidates=8, seed=5,
)


@pytest.fixture(scope="module")
def sections():
    return [toy_section(k) for k in range(2)]


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    ck = sorted((folder / "checkpoints").glob("epoch_*"))[-1]
    return load_file(str(ck / "state.safetensors"))


class _Stop(Exception):
    pass


def test_train_writes_everything_and_resume_is_identical(tmp_path: Path, sections) -> None:
    a = tmp_path / "a"
    model = train(sections, a, TINY, progress=False)
    for name in ("grain_model.json", "grain_model.safetensors", "log.csv", "training.png"):
        assert (a / name).is_file() and (a / name).stat().st_size > 0, name
    assert sorted(p.name for p in (a / "checkpoints").iterdir()) == ["epoch_0001", "epoch_0002"]
    log = np.loadtxt(a / "log.csv", delimiter=",", skiprows=1)
    assert log.shape == (2, 8) and np.all(np.isfinite(log))
    # Eq. 13: mu_2 = mu_1 (0.5 + 0.5 NG_gt / NG_gen)
    assert log[1, 4] == pytest.approx(log[0, 4] * (0.5 + 0.5 * log[0, 5] / log[0, 6]), rel=1e-12)
    assert model.mu == pytest.approx(log[1, 4] * (0.5 + 0.5 * log[1, 5] / log[1, 6]), rel=1e-12)
    assert np.all((log[:, 3] >= 0) & (log[:, 3] <= 1))

    # killed during epoch 2, then rerun: resumes after epoch 1 and ends identical
    b = tmp_path / "b"

    def stop(epoch: int, step: int) -> None:
        if epoch == 1 and step == 0:
            raise _Stop

    with pytest.raises(_Stop):
        train(sections, b, TINY, progress=False, on_step=stop)
    assert sorted(p.name for p in (b / "checkpoints").iterdir()) == ["epoch_0001"]
    resumed = train(sections, b, TINY, progress=False)
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    assert resumed.mu == model.mu
    assert (a / "log.csv").read_text().splitlines()[1:] != []
    la = np.loadtxt(a / "log.csv", delimiter=",", skiprows=1)[:, :7]
    lb = np.loadtxt(b / "log.csv", delimiter=",", skiprows=1)[:, :7]
    np.testing.assert_array_equal(la, lb)  # all but the timing column

    # a finished run does nothing more; more epochs extend it
    again = train(sections, a, TINY, progress=False)
    assert again.mu == model.mu
    longer = train(sections, a, TrainConfig(**{**TINY.to_dict(), "epochs": 3}), progress=False)
    assert longer.provenance["epochs"] == 3


def test_resume_refuses_other_settings_and_corrupt_checkpoint(tmp_path: Path, sections) -> None:
    out = tmp_path / "m"
    cfg = TrainConfig(**{**TINY.to_dict(), "epochs": 1, "steps": 1})
    train(sections, out, cfg, progress=False)
    with pytest.raises(StereograinError, match="other settings"):
        train(sections, out, TrainConfig(**{**cfg.to_dict(), "lr": 2e-4}), progress=False)
    with pytest.raises(StereograinError, match="other sections"):
        train(sections[:1], out, cfg, progress=False)
    state = out / "checkpoints" / "epoch_0001" / "state.safetensors"
    state.write_bytes(state.read_bytes()[:-7] + b"garbage")
    with pytest.raises(StereograinError, match="corrupt"):
        train(sections, out, TrainConfig(**{**cfg.to_dict(), "epochs": 2}), progress=False)


def test_sections_without_central_and_absurd_settings(sections) -> None:
    off = [toy_section(0, central=False)]
    with pytest.raises(StereograinError, match="no central section"):
        usable_sections(off)
    with pytest.raises(StereograinError, match="no fitted section"):
        usable_sections([])
    assert len(usable_sections(sections + off)) == len(sections)
    with pytest.raises(StereograinError, match="window"):
        TrainConfig(window=50.0)  # cutouts reach 113 px
    with pytest.raises(StereograinError, match="absurd"):
        TrainConfig(window=1e5)
    with pytest.raises(StereograinError, match="objective"):
        TrainConfig(objective="wasserstein")
    with pytest.raises(StereograinError, match="positive integer"):
        TrainConfig(epochs=0)


def test_literal_objective_runs(tmp_path: Path, sections) -> None:
    cfg = TrainConfig(**{**TINY.to_dict(), "epochs": 1, "steps": 1, "objective": "literal"})
    m = train(sections, tmp_path / "lit", cfg, progress=False)
    assert m.provenance["config"]["objective"] == "literal"


# ----------------------------------------------------------------------------- cutouts


def test_onehot_cutouts_order_and_visible() -> None:
    lab = np.zeros((2, 1024), np.int64)
    lab[0, :600] = 7
    lab[0, 600:1000] = 3
    lab[0, 1000:] = 9
    lab[1] = np.arange(1024) % 20  # 20 cells: 4 of 52 px and 16 of 51 px
    batch = onehot_cutouts(lab, keep=12)
    img = batch.images.numpy().reshape(2, 1024, 12)
    assert img[0, :, 0].sum() == 600 and img[0, :, 1].sum() == 400 and img[0, :, 2].sum() == 24
    assert img[0, :, 3:].sum() == 0
    np.testing.assert_array_equal(img[0].sum(axis=1), 1)
    assert img[1].sum() == 4 * 52 + 8 * 51  # 12 largest kept, ties to lower ids
    assert img[1, :, 0].sum() == 52 and img[1, 0, 0] == 1  # cell 0 (52 px) first
    np.testing.assert_allclose(batch.visible.numpy(), [3 / 1024, 20 / 1024])


@pytest.mark.parametrize("d", [2, 3])
def test_label_cutouts_equals_brute_force(d: int) -> None:
    rng = np.random.default_rng(d)
    B, P = 6, 1024
    sizes = rng.integers(20, 200, B)
    end = np.cumsum(sizes)
    start = end - sizes
    seeds = rng.uniform(-60, 60, (end[-1], d))
    D = np.exp(rng.uniform(np.log(0.01), np.log(50.0), (end[-1], d)))  # anisotropy up to 5000
    M = restricted_metrics(seeds, D)
    r = rng.uniform(1, 10, end[-1])
    pts = rng.uniform(-40, 40, (B, P, d))
    pts[0, :10] = seeds[start[0] : start[0] + 10]  # points on seeds
    twin = start[1] + 5  # a cell twice (same seed and markers): exact ties, which go to the lower index
    seeds[twin + 1], M[twin + 1], r[twin + 1] = seeds[twin], M[twin], r[twin]
    pts[1, :10] = seeds[twin] + rng.uniform(-0.5, 0.5, (10, d))
    got = label_cutouts(pts, seeds, M, r, start, end)
    assert not np.any(got[1] == twin + 1)
    for b in range(B):
        sl = slice(start[b], end[b])
        ref = GBPD(seeds[sl], M[sl], r[sl]).label_points_bruteforce(pts[b]) - 1 + start[b]
        np.testing.assert_array_equal(got[b], ref)
    # the restricted metrics' smallest eigenvalue is the smallest D: the same labels
    np.testing.assert_array_equal(label_cutouts(pts, seeds, M, r, start, end, lam=D.min(axis=1)), got)
    if d == 2:  # real cutout grids: their 8 x 8 blocks are compact, the pruning per block bites
        grid = cutout_grid(rng.uniform(0, 40, B), rng.uniform(0, 2 * np.pi, B))
        got = label_cutouts(grid, seeds, M, r, start, end)
        for b in range(B):
            sl = slice(start[b], end[b])
            ref = GBPD(seeds[sl], M[sl], r[sl]).label_points_bruteforce(grid[b]) - 1 + start[b]
            np.testing.assert_array_equal(got[b], ref)
    with pytest.raises(StereograinError):
        label_cutouts(pts, seeds, M, r, start, start)


def test_segment_ids_number_each_cutouts_cells_in_increasing_id() -> None:
    from stereograin.grains.cutouts import _segment_ids

    rng = np.random.default_rng(3)
    for n_cells in (40, 3000, 10**9):  # dense ranges and a sparse one (the sorting branch)
        cells = rng.integers(0, n_cells, (5, 64, 4)) + np.arange(5)[:, None, None] * n_cells
        local, counts = _segment_ids(cells)
        for b in range(5):
            uniq, inv = np.unique(cells[b], return_inverse=True)
            np.testing.assert_array_equal(local[b].ravel(), inv.ravel())
            assert counts[b] == len(uniq)


def test_cutout_grids_of_many_offsets_equal_one_at_a_time() -> None:
    rng = np.random.default_rng(1)
    p, beta = 80 * rng.random(7), rng.uniform(0, 2 * np.pi, 7)
    many = cutout_grid(p, beta)
    assert many.shape == (7, 1024, 2)
    for j in range(7):
        np.testing.assert_array_equal(many[j], cutout_grid(float(p[j]), float(beta[j])))
    one = cutout_grid(2.0)
    assert one.shape == (1024, 2) and one[0].tolist() == [3.0, -15.5] and one[1].tolist() == [3.0, -14.5]


def test_section_table_metrics_are_the_restricted_ones(sections) -> None:
    t = _SectionTable.of(sections)
    v = np.stack([-t.u[:, 1], t.u[:, 0]], axis=1)
    M = t.D[:, 0, None, None] * t.u[:, :, None] * t.u[:, None, :] + t.D[:, 1, None, None] * v[:, :, None] * v[:, None, :]
    np.testing.assert_allclose(M, restricted_metrics(t.seeds, t.D), atol=1e-12)
    assert t.end[-1] == sum(s.n for s in sections) and t.start[0] == 0


def test_rotated_cutouts_lie_in_planes_through_centre() -> None:
    rng = np.random.default_rng(0)
    R = _random_rotations(5, rng)
    np.testing.assert_allclose(np.einsum("mij,mkj->mik", R, R), np.broadcast_to(np.eye(3), (5, 3, 3)), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(R), 1.0)
    p = np.array([1.0, 10.0, 40.0, 80.0, 5.5])
    pts = rotated_cutout_points(p, R)
    normal = R[:, :, 2]
    np.testing.assert_allclose(np.einsum("mpi,mi->mp", pts, normal), 0.0, atol=1e-9)
    # distances to the centre match the unrotated cutout
    x = np.arange(1, 33) + p[:, None]
    y = np.arange(1, 33) - 16.5
    d = np.sqrt(x[:, :, None] ** 2 + y[None, None, :] ** 2).reshape(5, -1)
    np.testing.assert_allclose(np.linalg.norm(pts, axis=2), d)
    # uniform: the mean of the rotated e1 is near 0
    big = _random_rotations(4000, rng)
    assert np.abs(big[:, :, 0].mean(axis=0)).max() < 0.05


# ----------------------------------------------------------------------------- model files and sampling


def test_model_save_load_round_trip_and_sampling(tmp_path: Path) -> None:
    from stereograin.grains.generator import MarkerNet

    net = MarkerNet(hidden=(16, 16), seed=3)
    model = GrainModel(net, 0.002, 50.0, {"note": "test"})
    model.save(tmp_path / "gm")
    back = GrainModel.load(tmp_path / "gm")
    assert back.mu == 0.002 and back.provenance == {"note": "test"} and back.net_config() == model.net_config()
    a = model.sample(30.0, 7)
    b = back.sample(30.0, 7)
    np.testing.assert_array_equal(a.positions, b.positions)
    np.testing.assert_allclose(a.D, b.D, rtol=1e-6)
    # the ball of 30 + 16 px at mu 0.002 holds about 815 seeds
    lam = 0.002 * 4 / 3 * math.pi * 46.0**3
    assert abs(a.n - lam) < 5 * math.sqrt(lam)
    assert np.all(np.linalg.norm(a.positions, axis=1) <= 46.0)
    assert np.all((a.D > net.eps) & (a.D <= 50.0)) and np.all((a.r >= 1) & (a.r <= 10))
    # the architecture file round-trips and labels exactly
    a.save(tmp_path / "g.json")
    c = GrainArchitecture.load(tmp_path / "g.json")
    np.testing.assert_array_equal(c.D, a.D)
    g = c.gbpd()
    pts = np.random.default_rng(1).uniform(-20, 20, (200, 3))
    np.testing.assert_array_equal(g.label_points(pts), GBPD(a.positions, a.metrics(), a.r).label_points_bruteforce(pts))
    # different seeds differ
    assert model.sample(30.0, 8).n != a.n or not np.array_equal(model.sample(30.0, 8).positions, a.positions)
    # a selection keeps the same draws, returns only the selected seeds, with their markers
    inner = model.sample(30.0, 7, select=lambda x: x[:, 0] > 5.0)
    sel = a.positions[:, 0] > 5.0
    np.testing.assert_array_equal(inner.positions, a.positions[sel])
    np.testing.assert_allclose(inner.D, a.D[sel], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(inner.r, a.r[sel], rtol=1e-6, atol=1e-6)
    with pytest.raises(StereograinError, match="select must return a boolean array"):
        model.sample(30.0, 7, select=lambda x: x[:, 0])


def test_model_load_errors(tmp_path: Path) -> None:
    from stereograin.grains.generator import MarkerNet

    with pytest.raises(StereograinError, match="does not exist"):
        GrainModel.load(tmp_path / "nothing")
    folder = tmp_path / "gm"
    GrainModel(MarkerNet(hidden=(8,), seed=0), 0.0018).save(folder)
    w = folder / "grain_model.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    with pytest.raises(StereograinError, match="SHA-256"):
        GrainModel.load(folder)
    (folder / "grain_model.json").write_text(json.dumps({"format": "stereograin.shell-model"}))
    with pytest.raises(StereograinError, match="not a stereograin grain model"):
        GrainModel.load(folder)
    m = GrainModel(MarkerNet(hidden=(8,), seed=0), 0.0018)
    for bad in (-5.0, float("nan"), 1e9, [[0, 1], [0, 1]]):
        with pytest.raises(StereograinError):
            m.sample(bad, 0)
    with pytest.raises(StereograinError, match="only"):
        m.sample(3.0, 0, margin=0.0)
