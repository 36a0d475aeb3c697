import json

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from stereograin.cli import app
from stereograin.descriptors import SHELL_DESCRIPTORS
from stereograin.io import read_table, read_volume
from stereograin.synthetic import synthetic_ct

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(result, fragment):
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr  # one line, after any progress lines
    assert fragment in errors[0], errors[0]
    assert "Traceback" not in result.output


@pytest.mark.parametrize("cmd", [["shell", "segment"], ["shell", "fit"], ["shell", "sample"], ["generate"]])
def test_help_mentions_units(cmd):
    r = run(*cmd, "--help")
    assert r.exit_code == 0
    assert any(u in r.output for u in ("voxel", "nm", "micrometre")), r.output


def test_version():
    r = run("--version")
    assert r.exit_code == 0 and r.output.startswith("stereograin ")


def test_sample_paper_model_writes_descriptors_then_coefficients(tmp_path):
    out = tmp_path / "shells.csv"
    r = run("shell", "sample", "paper", "-n", 300, "--seed", 7, "-o", out)
    assert r.exit_code == 0, r.output
    cols, data = read_table(out)
    assert cols[:7] == list(SHELL_DESCRIPTORS)
    assert cols[7] == "a_0_0" and cols[-1] == "a_9_9" and len(cols) == 107
    assert data.shape == (300, 107)
    d = dict(zip(cols, data.T))
    assert (d["aspect_ratio"] >= 1).all() and (d["sphericity"] <= 1).all() and (d["compactness"] <= 1 + 1e-9).all()
    assert (d["volume"] >= 10).all()
    # median mean radius of the paper model: 39 voxels, so d_max ~ 80 voxels
    assert 60 < np.median(d["d_max"]) < 110
    r2 = run("shell", "sample", "paper", "-n", 300, "--seed", 7, "-o", tmp_path / "again.csv")
    assert r2.exit_code == 0
    np.testing.assert_array_equal(read_table(tmp_path / "again.csv")[1], data)


def test_segment_fit_sample_end_to_end(tmp_path):
    ct = synthetic_ct(shape=(80, 80, 80), n_particles=12, radius_range=(5, 7), rng=2, gap=2)
    tifffile.imwrite(tmp_path / "ct.tif", ct.volume)
    r = run("shell", "segment", tmp_path / "ct.tif", "-o", tmp_path / "labels.tif")
    assert r.exit_code == 0, r.output
    labels = read_volume(tmp_path / "labels.tif")
    assert labels.dtype == np.uint32 and labels.max() == 12
    r = run("shell", "fit", tmp_path / "labels.tif", "-o", tmp_path / "shell.json",
            "--report", tmp_path / "report", "--n-model", 300, "--seed", 1)
    assert r.exit_code == 0, r.output
    assert "12 particles" in r.output and "star shape captures" in r.output
    model = json.loads((tmp_path / "shell.json").read_text())
    assert model["format"] == "stereograin.shell-model" and model["provenance"]["input"] == "label volume"
    # a00 = 2 sqrt(pi) * mean radius: radii 5..7 voxels give a00 of about 18..25
    rep = json.loads((tmp_path / "report" / "report.json").read_text())
    for name in ("coefficients.csv", "coefficient_laws.png", "distance_correlation.png", "descriptors.png"):
        assert (tmp_path / "report" / name).stat().st_size > 1000, name
    assert rep["n_particles"] == 12
    assert 0.9 < rep["star_shape_captured_fraction"]["mean"] <= 1.0
    assert set(rep["descriptor_distances"]) >= {"d_max", "compactness", "aspect_ratio", "sphericity"}
    cols, coefs = read_table(tmp_path / "report" / "coefficients.csv")
    a00 = coefs[:, cols.index("a_0_0")]
    assert (a00 > 15).all() and (a00 < 30).all()
    # the coefficient table is a valid input too
    r = run("shell", "fit", tmp_path / "report" / "coefficients.csv", "-o", tmp_path / "again.json")
    assert r.exit_code == 0, r.output
    r = run("shell", "sample", tmp_path / "shell.json", "-n", 50, "--seed", 3, "-o", tmp_path / "s.csv")
    assert r.exit_code == 0, r.output
    cols, data = read_table(tmp_path / "s.csv")
    d = dict(zip(cols, data.T))
    assert 8 < np.median(d["d_max"]) < 20


def _small_shell_model(path):
    """The paper's shell laws with particles about 1.5 um across (fast to fill with grains)."""
    import dataclasses

    from stereograin.shell import paper_model

    sm = paper_model()
    dataclasses.replace(sm, a00=dataclasses.replace(sm.a00, family="lognorm", params={"s": 0.05, "loc": 0.0, "scale": 40.0})).save(path)
    return path


def test_generate_writes_a_reproducible_particle_library(tmp_path):
    model = _small_shell_model(tmp_path / "small.json")
    r = run("generate", "-n", 3, "--seed", 1, "-o", tmp_path / "lib", "--shell-model", model, "--voxel-size", "100nm",
            "--workers", 1, "--preview", 2, "--no-progress")
    assert r.exit_code == 0, r.output
    assert "3 particles made" in r.output
    cols, data = read_table(tmp_path / "lib" / "particles.csv")
    assert cols[:3] == ["particle", "grain_count", "volume_um3"] and data.shape[0] == 3
    man = json.loads((tmp_path / "lib" / "manifest.json").read_text())
    assert man["config"]["seed"] == 1 and man["n_particles"] == 3 and man["models"]["grain_model"] == "default"
    assert man["config"]["voxel_size_um"] == pytest.approx(0.1)
    labels = tifffile.imread(tmp_path / "lib" / "particle_000002" / "labels.tif")
    assert labels.max() == data[2, 1]
    assert (tmp_path / "lib" / "preview.png").stat().st_size > 1000
    # one stream per particle: the first 2 of a 2-particle library equal those of the 3-particle one
    r = run("generate", "-n", 2, "--seed", 1, "-o", tmp_path / "lib2", "--shell-model", model, "--voxel-size", "0.1um",
            "--workers", 1, "--preview", 0)
    assert r.exit_code == 0
    np.testing.assert_array_equal(read_table(tmp_path / "lib2" / "particles.csv")[1], data[:2])
    # rerun: nothing to make
    r = run("generate", "-n", 3, "--seed", 1, "-o", tmp_path / "lib", "--shell-model", model, "--voxel-size", "100nm",
            "--workers", 1, "--preview", 0, "--no-progress")
    assert r.exit_code == 0 and "0 particles made" in r.output and "3 already there" in r.output


def test_view_renders_a_library_particle(tmp_path):
    import matplotlib.image

    model = _small_shell_model(tmp_path / "small.json")
    lib = tmp_path / "lib"
    assert run("generate", "-n", 1, "-o", lib, "--shell-model", model, "--voxel-size", "100nm", "--workers", 1,
               "--preview", 0, "--no-progress").exit_code == 0
    r = run("view", lib / "particle_000000", "-o", tmp_path / "p.png", "--size", 200)
    assert r.exit_code == 0, r.output
    assert "voxels of 100 nm" in r.output  # the folder's labels.tif and its voxel size
    img = matplotlib.image.imread(tmp_path / "p.png")
    assert img.shape[:2] == (200, 200) and img[..., :3].std() > 0.05
    r = run("view", lib / "particle_000000" / "particle.json", "-o", tmp_path / "q.png", "--size", 200,
            "--voxel-size", "50nm", "--no-cut")
    assert r.exit_code == 0 and "voxels of 50 nm" in r.output
    assert_one_line_error(run("view", tmp_path / "nothing", "-o", tmp_path / "x.png"), "does not exist")
    assert_one_line_error(run("view", lib / "particle_000000", "-o", tmp_path / "x.jpg"), "PNG")


def test_generate_zarr_layout_and_view_by_index(tmp_path):
    model = _small_shell_model(tmp_path / "small.json")
    lib = tmp_path / "lib"
    r = run("generate", "-n", 2, "--seed", 1, "-o", lib, "--shell-model", model, "--voxel-size", "100nm",
            "--layout", "zarr", "--workers", 1, "--preview", 1, "--no-progress")
    assert r.exit_code == 0, r.output
    assert "2 particles made" in r.output and "library.zarr" in r.output
    assert (lib / "library.zarr" / "blocks" / "000000").is_dir() and (lib / "preview.png").is_file()
    r = run("view", lib, "--index", 1, "-o", tmp_path / "p.png", "--size", 120)
    assert r.exit_code == 0 and "voxels of 100 nm" in r.output, r.output  # the stored label volume
    # the same particle as in the folder layout
    assert run("generate", "-n", 2, "--seed", 1, "-o", tmp_path / "f", "--shell-model", model, "--voxel-size", "100nm",
               "--workers", 1, "--preview", 0, "--no-progress").exit_code == 0
    np.testing.assert_array_equal(read_table(lib / "particles.csv")[1], read_table(tmp_path / "f" / "particles.csv")[1])
    assert run("view", tmp_path / "f", "--index", 1, "-o", tmp_path / "q.png", "--size", 120).exit_code == 0
    assert_one_line_error(run("view", lib, "-o", tmp_path / "x.png"), "--index")
    assert_one_line_error(run("view", lib, "--index", 9, "-o", tmp_path / "x.png"), "no particle 9")
    assert_one_line_error(run("generate", "-n", 1, "-o", tmp_path / "l", "--layout", "zarr", "--format", "msh"), "layout folders")


def test_generate_bad_input(tmp_path):
    model = _small_shell_model(tmp_path / "small.json")
    assert_one_line_error(run("generate", "-n", 1, "-o", tmp_path / "l", "--voxel-size", "-50nm"), "length")
    assert_one_line_error(run("generate", "-n", 1, "-o", tmp_path / "l", "--format", "obj"), "unknown format")
    assert_one_line_error(run("generate", "-n", 1, "-o", tmp_path / "l", "--grain-model", model), "grain model")
    assert_one_line_error(run("generate", "-n", 1, "-o", tmp_path / "l", "--shell-model", model, "--workers", 0), "workers")
    assert_one_line_error(run("generate", "-n", 1, "-o", tmp_path / "l", "--shell-model", model, "--scheduler", "tcp://127.0.0.1:1"), "dask scheduler")


def test_bad_input_gives_one_line_errors(tmp_path):
    assert_one_line_error(run("shell", "segment", tmp_path / "missing.tif", "-o", tmp_path / "l.tif"), "does not exist")
    tifffile.imwrite(tmp_path / "flat.tif", np.zeros((20, 20), np.uint8))
    assert_one_line_error(run("shell", "segment", tmp_path / "flat.tif", "-o", tmp_path / "l.tif"), "3D")
    (tmp_path / "corrupt.tif").write_bytes(b"II*\x00garbage" * 10)
    assert_one_line_error(run("shell", "segment", tmp_path / "corrupt.tif", "-o", tmp_path / "l.tif"), "corrupt.tif")
    tifffile.imwrite(tmp_path / "const.tif", np.full((20, 20, 20), 7, np.uint8))
    assert_one_line_error(run("shell", "segment", tmp_path / "const.tif", "-o", tmp_path / "l.tif"), "constant")
    np.save(tmp_path / "nan.npy", np.full((20, 20, 20), np.nan, np.float32))
    assert_one_line_error(run("shell", "segment", tmp_path / "nan.npy", "-o", tmp_path / "l.tif"), "NaN")
    tifffile.imwrite(tmp_path / "ct.tif", np.zeros((20, 20, 20), np.uint8))
    assert_one_line_error(run("shell", "segment", tmp_path / "ct.tif", "-o", tmp_path / "l.tif", "--sigma", -1), "sigma")
    assert_one_line_error(run("shell", "sample", "papr", "-o", tmp_path / "s.csv"), "does not exist")
    assert_one_line_error(run("shell", "sample", "paper", "-n", -3, "-o", tmp_path / "s.csv"), "non-negative")
    assert_one_line_error(run("shell", "sample", "paper", "--level", 12, "-o", tmp_path / "s.csv"), "level")
    (tmp_path / "foreign.json").write_text('{"hello": 1}')
    assert_one_line_error(run("shell", "sample", tmp_path / "foreign.json", "-o", tmp_path / "s.csv"), "not a stereograin shell model")
    assert_one_line_error(run("shell", "fit", tmp_path / "ct.tif", "-o", tmp_path / "m.json", "--voxel-size", "-5nm"), "length")
    assert_one_line_error(run("shell", "fit", tmp_path / "ct.tif", "-o", tmp_path / "m.json"), "no particle")
    (tmp_path / "afile").write_text("x")
    assert_one_line_error(run("generate", "-n", 2, "-o", tmp_path / "afile"), "is a file")
    assert not list(tmp_path.glob(".*.tmp")), "a failed command left a temporary file"
