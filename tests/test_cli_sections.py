import json

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from ebsd_synth import grain_orientations, write_ang
from stereograin.cli import app
from stereograin.fit2d import read_sections
from stereograin.sections_synth import synthetic_sections

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def maps(tmp_path_factory):
    """A central and an off-centre (0.5 R) section of one radial particle, as label TIFFs."""
    folder = tmp_path_factory.mktemp("maps")
    central, off = synthetic_sections(heights=(0.0, 0.5), radius_px=48, rng=3)
    tifffile.imwrite(folder / "a_central.tif", central.labels.astype(np.uint16))
    tifffile.imwrite(folder / "b_offcentre.tif", off.labels.astype(np.uint16))
    return folder, central


def test_inspect_verdicts_json_and_plots(maps, tmp_path):
    folder, central = maps
    r = run("sections", "inspect", folder, "--step", "50nm", "--json", tmp_path / "v.json", "--plot", tmp_path / "plots")
    assert r.exit_code == 0, r.output
    assert "1 of 2 sections pass" in r.output
    rows = json.loads((tmp_path / "v.json").read_text())["maps"]
    assert [row["file"].split("/")[-1] for row in rows] == ["a_central.tif", "b_offcentre.tif"]
    for row in rows:
        assert set(row) >= {"file", "grains", "unindexed_fraction", "central", "p_value"}
    assert rows[0]["central"] is True and rows[0]["p_value"] < 0.01
    assert rows[1]["central"] is False and rows[1]["p_value"] > 0.01
    assert rows[0]["grains"] == (np.bincount(central.labels.ravel())[1:] >= 5).sum()  # --min-grain-px 5
    for name in ("alpha_kde.png", "a_central.png", "b_offcentre.png"):
        assert (tmp_path / "plots" / name).stat().st_size > 1000


def test_inspect_reads_ang_files(tmp_path):
    labels = synthetic_sections(heights=(0.0,), radius_px=40, rng=5)[0].labels
    euler = grain_orientations(labels, np.random.default_rng(1))
    ci = np.where(labels > 0, 0.8, -1.0)
    write_ang(tmp_path / "m.ang", euler, ci)
    r = run("sections", "inspect", tmp_path / "m.ang", "--json", tmp_path / "v.json")
    assert r.exit_code == 0, r.output
    row = json.loads((tmp_path / "v.json").read_text())["maps"][0]
    # grains under 5 px become unindexed; two random neighbours closer than 5 degrees would merge (rare)
    assert abs(row["grains"] - (np.bincount(labels.ravel())[1:] >= 5).sum()) <= 1
    assert row["central"] is True


def test_fit_writes_sections_of_central_maps_only(maps, tmp_path):
    folder, _ = maps
    out = tmp_path / "sections.json"
    r = run("sections", "fit", folder, "--step", "50nm", "-o", out, "--plot", tmp_path / "fit")
    assert r.exit_code == 0, r.output
    assert "b_offcentre.tif: skipped" in r.output
    fitted = read_sections(out)
    assert len(fitted) == 1 and fitted[0].file.endswith("a_central.tif")
    assert fitted[0].pixel_agreement >= 0.95
    assert fitted[0].step_nm == 50.0
    d = json.loads(out.read_text())
    assert set(d["sections"][0]) >= {"file", "step_nm", "pixel_agreement", "seeds", "D", "r", "origin"}
    assert (tmp_path / "fit" / "a_central.png").stat().st_size > 1000
    r = run("sections", "fit", folder, "--step", "50nm", "-o", tmp_path / "all.json", "--all", "--iterations", 50)
    assert r.exit_code == 0, r.output
    assert len(read_sections(tmp_path / "all.json")) == 2


def test_sections_bad_input(maps, tmp_path):
    folder, _ = maps

    def one_line_error(result, fragment):
        assert result.exit_code == 2, result.output
        errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and fragment in errors[0], result.stderr

    one_line_error(run("sections", "inspect", folder), "step")
    one_line_error(run("sections", "inspect", tmp_path / "nothing.ang"), "does not exist")
    (tmp_path / "empty").mkdir()
    one_line_error(run("sections", "inspect", tmp_path / "empty"), "holds no")
    one_line_error(run("sections", "inspect", folder, "--step", "fifty"), "length")
    tifffile.imwrite(tmp_path / "one.tif", np.ones((30, 30), np.uint16))
    one_line_error(run("sections", "fit", tmp_path / "one.tif", "--step", "50nm", "-o", tmp_path / "s.json", "--all"), "grain")
