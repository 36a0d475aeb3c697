"""Particle libraries: layout, one stream per particle, workers and dask, resume, formats, bad input."""

from __future__ import annotations

import dataclasses
import errno
import json

import numpy as np
import pytest

from stereograin.errors import StereograinError
from stereograin.grains.model import GrainModel
from stereograin.io import read_table
from stereograin.library import (
    PARTICLE_COLUMNS,
    LibraryConfig,
    generate_library,
    make_library_particle,
    parse_formats,
    particle_folder,
)
from stereograin.shell import paper_model


@pytest.fixture(scope="module")
def models():
    """The paper's shell laws with small particles (about 1.5 um across) and the default grains."""
    sm = paper_model()
    sm = dataclasses.replace(sm, a00=dataclasses.replace(sm.a00, family="lognorm", params={"s": 0.05, "loc": 0.0, "scale": 40.0}))
    return sm, GrainModel.load("default")


def _json(lib, i):
    return (particle_folder(lib, i) / "particle.json").read_bytes()


def _make(out, n, models, **kw):
    cfg = LibraryConfig(kw.pop("seed", 3), kw.pop("formats", "analytic"), kw.pop("voxel_size_um", 0.1))
    return generate_library(out, n, cfg, *models, progress=False, **kw)


def test_layout_manifest_and_tables(tmp_path, models):
    info = _make(tmp_path / "lib", 3, models, workers=1)
    lib = tmp_path / "lib"
    assert info["made"] == 3 and info["finished"] == 3
    man = json.loads((lib / "manifest.json").read_text())
    assert man["format"] == "stereograin.library" and man["config"]["seed"] == 3 and man["config"]["formats"] == ["analytic"]
    assert (lib / "models" / "shell_model.json").is_file() and (lib / "models" / "grain_model" / "grain_model.json").is_file()
    cols, data = read_table(lib / "particles.csv")
    assert tuple(cols) == PARTICLE_COLUMNS and data.shape == (3, len(PARTICLE_COLUMNS))
    d = dict(zip(cols, data.T))
    np.testing.assert_array_equal(d["particle"], [0, 1, 2])
    assert np.all(d["grain_count"] > 5)
    # the grains' union fills about the shell: kept grains poke out as much as dropped ones leave gaps
    np.testing.assert_allclose(d["volume_um3"], d["shell_volume_um3"], rtol=0.25)
    assert np.all(np.isnan(d["surface_area_um2"]))  # analytic: no voxels, no surfaces
    gcols, grains = read_table(particle_folder(lib, 1) / "grains.csv")
    assert grains.shape[0] == d["grain_count"][1]
    assert grains[:, 1].sum() == pytest.approx(d["volume_um3"][1])
    assert not list(lib.glob(".*"))  # no temporary folder left


def test_particle_k_is_the_same_alone_serial_parallel_and_on_dask(tmp_path, models):
    _make(tmp_path / "serial", 3, models, workers=1)
    _make(tmp_path / "two", 3, models, workers=2)  # two spawned processes, one thread each
    for i in range(3):
        assert _json(tmp_path / "serial", i) == _json(tmp_path / "two", i)
    # particle 2 made alone, in a library of its own
    alone = tmp_path / "alone"
    _make(alone, 1, models, workers=1)  # installs the models and manifest
    make_library_particle(alone, 2, LibraryConfig(3, "analytic", 0.1))
    assert _json(alone, 2) == _json(tmp_path / "serial", 2)
    # and on a dask.distributed cluster started here
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster:
        _make(tmp_path / "dask", 3, models, scheduler=cluster.scheduler_address)
    for i in range(3):
        assert _json(tmp_path / "dask", i) == _json(tmp_path / "serial", i)


def test_resume_keeps_finished_particles_and_makes_the_rest(tmp_path, models, monkeypatch):
    import stereograin.particle as particle

    lib = tmp_path / "lib"
    real = particle.make_particle

    def dies_on_2(*args, **kw):
        if kw.get("provenance", {}).get("index") == 2:
            raise KeyboardInterrupt  # the run is killed while particle 2 is being made
        return real(*args, **kw)

    monkeypatch.setattr(particle, "make_particle", dies_on_2)
    with pytest.raises(KeyboardInterrupt):
        _make(lib, 4, models, workers=1)
    monkeypatch.setattr(particle, "make_particle", real)
    assert sorted(p.name for p in lib.glob("particle_*")) == ["particle_000000", "particle_000001"]
    assert not list(lib.glob(".particle_*"))
    before = {i: particle_folder(lib, i).stat().st_mtime_ns for i in (0, 1)}
    info = _make(lib, 4, models, workers=1)
    assert info["made"] == 2 and info["finished"] == 4
    assert {i: particle_folder(lib, i).stat().st_mtime_ns for i in (0, 1)} == before  # never rewritten
    _make(tmp_path / "whole", 4, models, workers=1)
    for i in range(4):
        assert _json(lib, i) == _json(tmp_path / "whole", i)
    assert read_table(lib / "particles.csv")[1].shape[0] == 4
    # other settings on the same folder are refused; more particles are fine
    with pytest.raises(StereograinError, match="other settings"):
        _make(lib, 4, models, seed=4, workers=1)
    assert _make(lib, 5, models, workers=1)["made"] == 1


def test_a_killed_process_resumes(tmp_path, models):
    """SIGKILL a real `stereograin generate` after its first particle; the rerun completes it."""
    import os
    import signal
    import subprocess
    import sys
    import time

    models[0].save(tmp_path / "small.json")
    lib = tmp_path / "lib"
    cmd = [sys.executable, "-m", "stereograin.cli", "generate", "-n", "6", "--seed", "3", "-o", str(lib),
           "--shell-model", str(tmp_path / "small.json"), "--format", "analytic", "--workers", "1",
           "--preview", "0", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (lib / "particle_000001").exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finished = sorted(p.name for p in lib.glob("particle_*"))
    assert 2 <= len(finished) < 6, finished
    assert all((lib / f / "particle.csv").is_file() for f in finished)  # no half-written particle
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert len(list(lib.glob("particle_*"))) == 6 and not list(lib.glob(".particle_*"))
    _make(tmp_path / "whole", 6, models, workers=1)
    for i in range(6):
        assert _json(lib, i) == _json(tmp_path / "whole", i)


def test_voxel_formats_are_written_and_read_back(tmp_path, models):
    import meshio
    import pyvista
    import tifffile
    import zarr

    lib = tmp_path / "lib"
    _make(lib, 1, models, workers=1, formats="zarr,vtk,msh,vtp,tet-vtu", voxel_size_um=0.2, preview=1)
    p = particle_folder(lib, 0)
    labels = tifffile.imread(p / "labels.tif")
    assert labels.dtype == np.uint32 and labels.max() > 5
    np.testing.assert_array_equal(zarr.open_group(str(p / "labels.zarr"), mode="r")["labels"][:], labels)
    img = pyvista.read(p / "labels.vti")
    assert img.spacing == pytest.approx((0.2, 0.2, 0.2))
    mesh = meshio.read(p / "mesh.msh")
    assert sum(len(c.data) for c in mesh.cells) == np.count_nonzero(labels)
    assert pyvista.read(p / "grains.vtp").n_cells > 0
    tets = meshio.read(p / "tets.vtu")
    assert tets.cells[0].type == "tetra" and len(tets.cells[0].data) == 6 * np.count_nonzero(labels)
    np.testing.assert_array_equal(np.unique(tets.cell_data["grain"][0]), np.unique(labels[labels > 0]))
    cols, data = read_table(p / "particle.csv")
    d = dict(zip(cols, data[0]))
    assert d["grain_count"] == len(np.unique(labels)) - 1
    assert d["volume_um3"] == pytest.approx(np.count_nonzero(labels) * 0.008)
    assert 0 < d["sphericity"] < 1.1
    assert (lib / "preview.png").stat().st_size > 1000


def test_bad_input_gives_one_line_errors_and_leaves_nothing_half_written(tmp_path, models, monkeypatch):
    with pytest.raises(StereograinError, match="unknown format 'obj'"):
        parse_formats("tif,obj")
    with pytest.raises(StereograinError, match="parameters only"):
        parse_formats("analytic,zarr")
    assert parse_formats("zarr,vtk,msh") == ("tif", "zarr", "vti", "msh")
    with pytest.raises(StereograinError, match="voxel size must be positive"):
        LibraryConfig(0, "tif", -0.05)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(StereograinError, match="is a file"):
        _make(tmp_path / "afile", 2, models)
    with pytest.raises(StereograinError, match="number of particles"):
        _make(tmp_path / "lib0", 0, models)

    import stereograin.library as library

    def disk_full(*args, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(library, "write_table", disk_full)
    with pytest.raises(StereograinError, match="No space left on device.*disk full"):
        _make(tmp_path / "full", 1, models, workers=1)
    assert not list((tmp_path / "full").glob("particle_*")) and not list((tmp_path / "full").glob(".particle*"))


# ----------------------------------------------------------------------------- the Zarr layout


def _make_zarr(out, n, models, **kw):
    cfg = LibraryConfig(kw.pop("seed", 3), kw.pop("formats", "analytic"), kw.pop("voxel_size_um", 0.1), layout="zarr")
    return generate_library(out, n, cfg, *models, progress=False, **kw)


def test_zarr_layout_holds_the_same_particles_in_few_files(tmp_path, models, monkeypatch):
    import stereograin.library_store as store
    from stereograin.library import finished_particles, read_library_particle
    from stereograin.particle import Particle

    monkeypatch.setattr(store, "BLOCK", 2)  # 3 particles: blocks of 2 and 1
    info = _make_zarr(tmp_path / "z", 3, models, workers=1)
    _make(tmp_path / "f", 3, models, workers=1)
    assert info["made"] == 3 and info["config"]["layout"] == "zarr"
    assert sorted(p.name for p in (tmp_path / "z" / "library.zarr" / "blocks").iterdir() if p.is_dir()) == ["000000", "000001"]
    assert not list((tmp_path / "z").glob("particle_*"))
    assert finished_particles(tmp_path / "z") == finished_particles(tmp_path / "f") == [0, 1, 2]
    for i in range(3):
        a = read_library_particle(tmp_path / "z", i)
        b = Particle.load(particle_folder(tmp_path / "f", i))
        for name in ("positions", "noise", "gamma", "D", "r"):
            np.testing.assert_array_equal(getattr(a.grains, name), getattr(b.grains, name))
        for name in ("coefficients", "centres_px", "volumes_px3", "box_px"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
        assert a.n_grains == b.n_grains and a.provenance["index"] == i and a.grains.radius_px == b.grains.radius_px
    np.testing.assert_array_equal(read_table(tmp_path / "z" / "particles.csv")[1], read_table(tmp_path / "f" / "particles.csv")[1])
    with pytest.raises(StereograinError, match="no particle 7"):
        read_library_particle(tmp_path / "f", 7)


def test_zarr_layout_label_volumes_resume_and_dask(tmp_path, models, monkeypatch):
    import stereograin.library_store as store
    import stereograin.particle as particle

    monkeypatch.setattr(store, "BLOCK", 2)
    lib = tmp_path / "z"
    real = particle.make_particle

    def dies_on_3(*args, **kw):
        if kw.get("provenance", {}).get("index") == 3:
            raise KeyboardInterrupt  # killed while making the second block
        return real(*args, **kw)

    monkeypatch.setattr(particle, "make_particle", dies_on_3)
    with pytest.raises(KeyboardInterrupt):
        _make_zarr(lib, 5, models, formats="zarr", voxel_size_um=0.2, workers=1)
    monkeypatch.setattr(particle, "make_particle", real)
    blocks = lib / "library.zarr" / "blocks"
    assert sorted(p.name for p in blocks.iterdir() if p.is_dir()) == ["000000"]  # the half-made block left nothing
    before = (blocks / "000000" / "zarr.json").stat().st_mtime_ns
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster:
        info = _make_zarr(lib, 5, models, formats="zarr", voxel_size_um=0.2, scheduler=cluster.scheduler_address)
    assert info["made"] == 3 and info["finished"] == 5
    assert (blocks / "000000" / "zarr.json").stat().st_mtime_ns == before
    for i in (0, 3, 4):
        labels, origin, v = store.read_labels(lib, i)
        ref, ref_origin = store.read_particle(lib, i).label_volume(0.2)
        assert v == 0.2 and labels.dtype == np.uint32
        np.testing.assert_array_equal(labels, ref)
        np.testing.assert_array_equal(origin, ref_origin)
    # the same particles as a serial run in folders
    _make(tmp_path / "f", 5, models, formats="tif", voxel_size_um=0.2, workers=1)
    np.testing.assert_array_equal(read_table(lib / "particles.csv")[1], read_table(tmp_path / "f" / "particles.csv")[1])


def test_zarr_layout_bad_input():
    with pytest.raises(StereograinError, match="analytic particles and label volumes only, not vtp"):
        LibraryConfig(1, "vtp", layout="zarr")
    with pytest.raises(StereograinError, match="unknown layout"):
        LibraryConfig(1, "tif", layout="hdf5")
    assert LibraryConfig(1, "tif,zarr", layout="zarr").formats == ("zarr",)
    assert LibraryConfig(1, "analytic", layout="zarr").formats == ("analytic",)
